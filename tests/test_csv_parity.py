"""One CSV format: the same file through ``chargecast predict`` and the CSV route gives the
same bytes, and the same bad file the same errors, line for line.

The CLI runs in process through :func:`chargecast.cli.main` (the entry point the console
script calls); the API through Starlette's TestClient against the real app.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from chargecast.cli import main
from chargecast.serving.app import create_app
from chargecast.settings import Settings

HEADER = "age,sex,bmi,children,smoker,region"
GOOD = "39,female,30.4,1,no,southeast"

CASES = {
    "plain": f"{HEADER}\n{GOOD}\n52,male,34.1,3,yes,northwest\n",
    "no-final-newline": f"{HEADER}\n{GOOD}",
    "crlf": f"{HEADER},note\r\n{GOOD},a\r\n52,male,34.1,3,yes,northwest,b\r\n",
    "lone-cr": f"{HEADER}\r{GOOD}\r",
    "bom-and-case": f"\ufeff Age ,SEX,Bmi,children,Smoker,REGION\n{GOOD}\n",
    "quoted-cells": (
        f'id,{HEADER},note\n1,{GOOD},"says ""hi"", twice"\n'
        f'"2",40,male,22.5,0,no,northeast,"line\nbreak"\n3,"41","female","27.0",2,no,northwest,\n'
    ),
    "unicode": f'{HEADER},name\n{GOOD},Zoë 🧾 \u00a0 中文\n{GOOD},"emoji, with comma 🏥"\n',
    "blank-lines": f"\n{HEADER}\n\n{GOOD}\n\n\n{GOOD}\n\n",
    "messy-values": f"{HEADER}\n 39 ,Female, 30.40 ,1.0,NO,SouthEast\n",
}

BAD = {
    "out-of-range": (f"{HEADER}\n{GOOD}\n17,female,30.4,1,no,southeast\n", {(3, "age")}),
    "after-quoted-newline": (
        f'{HEADER},note\n{GOOD},"two\nlines"\n{GOOD},x\n39,female,30.4,1,maybe,southeast,y\n',
        {(5, "smoker")},
    ),
    "ragged": (f"{HEADER}\n{GOOD}\n39,female\n", {(3, "record")}),
    "blank-then-bad": (f"{HEADER}\n\n\n39,female,30.4,11,no,southeast\n", {(4, "children")}),
    "output-column": (f"{HEADER},charges\n{GOOD},1200\n", {(1, "charges")}),
    "semicolons": ("age;sex;bmi;children;smoker;region\n39;female;30.4;1;no;southeast\n", None),
}


@pytest.fixture(scope="module")
def api(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=model_dir, log_level="warning"))) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "model did not load"
            time.sleep(0.01)
        yield client


def through_cli(model_dir: Path, data: bytes, tmp_path: Path) -> bytes:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_bytes(data)
    out.unlink(missing_ok=True)
    assert main(["predict", str(src), "-o", str(out), "--model", str(model_dir)]) == 0
    return out.read_bytes()


def through_api(api: TestClient, data: bytes) -> bytes:
    response = api.post("/api/v1/predict/csv", content=data, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    content: bytes = response.content
    return content


@pytest.mark.parametrize("name", CASES)
def test_cli_and_api_write_byte_identical_csv(api: TestClient, model_dir: Path, tmp_path: Path, name: str) -> None:
    data = CASES[name].encode("utf-8")
    cli = through_cli(model_dir, data, tmp_path)
    assert cli == through_api(api, data)
    first = cli.split(b"\n", 1)[0] if b"\n" in cli else cli.split(b"\r", 1)[0]
    assert first.rstrip(b"\r").endswith(b",charges,charges_low,charges_high")
    assert not cli.startswith(b"\xef\xbb\xbf")


@pytest.mark.parametrize("name", BAD)
def test_cli_and_api_refuse_the_same_file_with_the_same_lines(
    api: TestClient, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    text, expected = BAD[name]
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(text, encoding="utf-8", newline="")
    assert main(["predict", str(src), "-o", str(out), "--model", str(model_dir)]) == 2
    assert not out.exists()  # nothing half-written
    message = capsys.readouterr().err
    response = api.post("/api/v1/predict/csv", content=text.encode(), headers={"Content-Type": "text/csv"})
    assert response.status_code == 422, response.text
    issues = response.json()["error"]["issues"]
    found = {(i.get("line"), i["field"]) for i in issues}
    if expected is None:  # a separator hint: the same words in both
        assert all("separated by semicolons" in i["rule"] for i in issues)
        assert "separated by semicolons" in message
        return
    assert found == expected
    for line, field in expected:
        assert re.search(rf"line {line}\b.*{re.escape(field)}", message), message


CELL = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    notes=st.lists(CELL, min_size=1, max_size=6),
    eol=st.sampled_from(["\n", "\r\n"]),
    where=st.integers(0, 6),
)
def test_any_extra_cell_comes_back_identically_from_both(
    api: TestClient, model_dir: Path, tmp_path: Path, notes: list[str], eol: str, where: int
) -> None:
    """Whatever an extra column holds (quotes, separators, newlines, any script), both paths agree."""
    header = HEADER.split(",")
    header.insert(where, "note")
    lines = [",".join(header)]
    for note in notes:
        cells = GOOD.split(",")
        cells.insert(where, _quoted(note))
        lines.append(",".join(cells))
    data = (eol.join(lines) + eol).encode("utf-8")
    assert through_cli(model_dir, data, tmp_path) == through_api(api, data)


def _quoted(cell: str) -> str:
    """Quote as CSV needs (the csv module would leave a lone CR bare under LF endings)."""
    return '"' + cell.replace('"', '""') + '"' if any(c in cell for c in ',"\r\n') else cell
