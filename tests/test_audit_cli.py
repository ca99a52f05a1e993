"""The audit log's command line: ``predict --audit`` and ``audit migrate|prune|export``, on every sink."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from chargecast.audit.cli import COLUMNS
from chargecast.audit.runlog import RunLog
from chargecast.audit.store import Forecast, Store, open_store
from chargecast.batch import score_file
from chargecast.model.artifact import METADATA_FILE, Artifact, sha256_file
from chargecast.schema import FEATURES, ValidationError

KEY = "a-test-key-not-a-secret"
PATIENTS = (
    "patient_ref,age,sex,bmi,children,smoker,region\n"
    "P-1,39,female,30.4,1,no,southeast\n"
    ",70,MALE ,22.5,0,yes,northwest\n"  # a blank reference is no patient; 70 is outside the training ages
    "P-3,18,female,53.9,5,no,southwest\n"
)


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHARGECAST_AUDIT")}
    return subprocess.run(
        [sys.executable, "-m", "chargecast.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        env=base | (env or {}),
        cwd=cwd,
        timeout=120,
    )


def refused(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2, no traceback, and the last line of stderr says what is wrong."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, proc.stderr


def logged(url: str) -> list[Forecast]:
    store = open_store(url)
    try:
        return list(store.forecasts())
    finally:
        store.close()


# -- the sinks: SQLite, PostgreSQL 15, JSON Lines ----------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated audit log on each sink."""
    if request.param == "sqlite":
        given = f"sqlite:///{tmp_path}/audit.sqlite3"
    elif request.param == "file":
        given = f"file://{tmp_path}/audit"
    else:
        given = request.getfixturevalue("postgres_url")
    store = open_store(given)
    store.migrate()
    store.close()
    return given


def forecast(request_id: str, row: int, time: datetime, **changes: object) -> Forecast:
    values: dict[str, object] = {
        "request_id": request_id,
        "row": row,
        "time": time,
        "model_version": "20260101-abcdef01",
        "model_digest": "0" * 64,
        "route": "/api/v1/predict",
        "caller": "team-a",
        "patient": None,
        "inputs": {"age": 39.0, "sex": "female", "bmi": 30.4, "children": 1.0, "smoker": "no", "region": "southeast"},
        "charges": 5000.25,
        "low": 1200.5,
        "high": 12000.125,
        "level": 0.9,
        "quantiles": None,
        "extrapolated": (),
        "client_request_id": None,
    }
    return Forecast(**(values | changes))  # type: ignore[arg-type]


def put(url: str, records: list[Forecast]) -> None:
    store: Store = open_store(url)
    try:
        store.write(records)
    finally:
        store.close()


# -- predict --audit ----------------------------------------------------------------------------


def test_predict_logs_exactly_what_the_output_holds(url: str, model_dir: Path, model: Artifact, tmp_path: Path) -> None:
    src, out = tmp_path / "patients.csv", tmp_path / "scored.parquet"
    src.write_text(PATIENTS)
    proc = run(
        "predict",
        str(src),
        "-o",
        str(out),
        "--model",
        str(model_dir),
        "--audit",
        url,
        env={"CHARGECAST_AUDIT_PATIENT_KEY": KEY},
    )
    assert proc.returncode == 0, proc.stderr
    records = sorted(logged(url), key=lambda f: f.row)
    scored = pq.read_table(out).to_pandas()
    assert [f.row for f in records] == [0, 1, 2]
    assert [f.charges for f in records] == scored["charges"].tolist()
    assert [f.low for f in records] == scored["charges_low"].tolist()
    assert [f.high for f in records] == scored["charges_high"].tolist()
    (run_id,) = {f.request_id for f in records}
    assert run_id.startswith("cli-")
    assert len(run_id) == 20
    assert run_id in proc.stdout
    digest = sha256_file(model_dir / METADATA_FILE)
    for f in records:
        assert (f.route, f.model_version, f.model_digest, f.level) == ("cli", model.version, digest, model.level)
        assert f.client_request_id is None
        assert f.quantiles is None
        assert f.time.tzinfo is not None
    assert records[0].patient == hmac.new(KEY.encode(), b"P-1", hashlib.sha256).hexdigest()
    assert records[1].patient is None
    assert records[1].inputs == {
        "age": 70.0,
        "sex": "male",
        "bmi": 22.5,
        "children": 0.0,
        "smoker": "yes",
        "region": "northwest",
    }
    assert records[1].extrapolated == tuple(model.extrapolated([70, 1, 22.5, 0, 1, 1]))
    assert "age" in records[1].extrapolated
    assert records[2].extrapolated == tuple(model.extrapolated([18, 0, 53.9, 5, 0, 3]))


def test_predict_without_a_patient_column_needs_no_key(model_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    assert run("audit", "migrate", "--audit", url).returncode == 0
    src = tmp_path / "p.csv"
    src.write_text(PATIENTS.replace("patient_ref,", "").replace("P-1,", "").replace("\n,", "\n").replace("P-3,", ""))
    proc = run("predict", str(src), "--model", str(model_dir), env={"CHARGECAST_AUDIT_URL": url})
    assert proc.returncode == 0, proc.stderr
    records = logged(url)
    assert len(records) == 3
    assert {f.patient for f in records} == {None}
    assert {f.caller for f in records} <= {os_user(), None}


def os_user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def test_a_patient_column_without_a_key_is_refused_and_writes_nothing(model_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    assert run("audit", "migrate", "--audit", url).returncode == 0
    src, out = tmp_path / "p.csv", tmp_path / "out.csv"
    src.write_text(PATIENTS)
    proc = run("predict", str(src), "-o", str(out), "--model", str(model_dir), "--audit", url)
    refused(proc, "patient_ref", "CHARGECAST_AUDIT_PATIENT_KEY")
    assert not out.exists()
    assert logged(url) == []


def test_a_bad_line_logs_nothing_even_after_chunks_were_scored(url: str, model: Artifact, tmp_path: Path) -> None:
    lines = ["age,sex,bmi,children,smoker,region"] + ["30,female,22,0,no,southeast"] * 9 + ["30,female,22,0,maybe,x"]
    src = tmp_path / "bad.csv"
    src.write_text("\n".join(lines) + "\n")
    store = open_store(url)
    log = RunLog(store, model, "0" * 64)
    try:
        with pytest.raises(ValidationError, match="line 11, smoker"):
            score_file(src, tmp_path / "out.csv", model, chunk_rows=2, audit=log)
    finally:
        log.close()
        store.close()
    assert logged(url) == []
    assert not (tmp_path / "out.csv").exists()


def test_a_bad_file_through_the_cli_logs_nothing(url: str, model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("age,sex,bmi,children,smoker,region\n30,female,22,0,no,southeast\n30,female,22,0,maybe,x\n")
    proc = run("predict", str(src), "--model", str(model_dir), "--audit", url)
    assert proc.returncode == 2
    assert "line 3, smoker" in proc.stderr
    assert logged(url) == []
    outputs = [p.name for p in tmp_path.iterdir() if p.name.endswith((".csv", ".partial"))]
    assert outputs == ["bad.csv"]  # no output, no temporary file (the log's own files aside)


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("mysql://u@h/db", "--audit"),
        ("sqlite://relative-without-third-slash", "--audit"),
        ("postgresql://nobody@127.0.0.1:1/none", "--audit"),  # nothing listens on port 1
    ],
)
def test_a_bad_or_unreachable_log_is_one_line_and_nothing_is_written(
    given: str, fragment: str, model_dir: Path, tmp_path: Path
) -> None:
    src, out = tmp_path / "p.csv", tmp_path / "out.csv"
    src.write_text(PATIENTS)
    proc = run(
        "predict",
        str(src),
        "-o",
        str(out),
        "--model",
        str(model_dir),
        "--audit",
        given,
        env={"CHARGECAST_AUDIT_PATIENT_KEY": KEY},
    )
    refused(proc, fragment)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "pw" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_off_disables_the_log_from_the_environment(model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "p.csv"
    src.write_text(PATIENTS)
    proc = run(
        "predict",
        str(src),
        "--model",
        str(model_dir),
        "--audit",
        "off",
        env={"CHARGECAST_AUDIT_URL": f"sqlite:///{tmp_path}/never.sqlite3"},
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "never.sqlite3").exists()
    assert "audit" not in proc.stdout


# -- migrate ------------------------------------------------------------------------------------


def test_migrate_creates_the_tables_and_says_the_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    first, again = run("audit", "migrate", "--audit", url), run("audit", "migrate", env={"CHARGECAST_AUDIT_URL": url})
    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert "schema version" in first.stdout
    assert first.stdout == again.stdout
    put(url, [forecast("r", 0, datetime.now(UTC))])
    assert len(logged(url)) == 1


def test_migrate_on_every_sink(url: str) -> None:
    proc = run("audit", "migrate", "--audit", url)
    assert proc.returncode == 0, proc.stderr
    assert "schema version" in proc.stdout


def test_no_log_named_is_a_clear_error(tmp_path: Path) -> None:
    for args in (
        ["migrate"],
        ["prune", "--older-than", "1d"],
        ["export", "--since", "2026-01-01", "--until", "2026-02-01", "-o", "x.csv"],
    ):
        refused(run("audit", *args, cwd=tmp_path), "--audit", "CHARGECAST_AUDIT_URL")


# -- prune --------------------------------------------------------------------------------------


def test_prune_deletes_exactly_what_is_older(url: str) -> None:
    now = datetime.now(UTC)
    ages = {
        "old": timedelta(days=100),
        "edge-old": timedelta(days=30, minutes=5),
        "young": timedelta(days=29),
        "new": timedelta(0),
    }
    put(url, [forecast(name, 0, now - age) for name, age in ages.items()])
    proc = run("audit", "prune", "--older-than", "30d", "--audit", url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("2 forecasts")
    assert sorted(f.request_id for f in logged(url)) == ["new", "young"]
    again = run("audit", "prune", "--older-than", "30d", "--audit", url)
    assert again.stdout.startswith("0 forecasts")


@pytest.mark.parametrize("period", ["0d", "90", "1w", "-1d", "1.5d", "d", "36501d", "99999999999d"])
def test_prune_refuses_a_bad_period(period: str, tmp_path: Path) -> None:
    proc = run("audit", "prune", f"--older-than={period}", "--audit", f"sqlite:///{tmp_path}/a.sqlite3")
    refused(proc, "argument --older-than", repr(period))
    assert list(tmp_path.iterdir()) == []


# -- export -------------------------------------------------------------------------------------

START = datetime(2026, 1, 1, tzinfo=UTC)


def window_records() -> list[Forecast]:
    """Forecasts just before, at, inside, at the end of and after January 2026."""
    return [
        forecast("before", 0, START - timedelta(microseconds=1)),
        forecast(
            "first",
            0,
            START,
            patient="ab" * 32,
            caller=None,
            client_request_id="client-7",
            quantiles={"0.05": 900.5, "0.5": 4000.0, "0.95": 13000.75},
            extrapolated=("age", "bmi"),
        ),
        forecast(
            "first",
            1,
            START,
            route="cli",
            inputs={"age": 70.0, "sex": "male", "bmi": 22.25, "children": 0.0, "smoker": "yes", "region": "northwest"},
        ),
        forecast("mid", 0, START + timedelta(days=15, hours=3, microseconds=7), charges=1 / 3),
        forecast("end", 0, START + timedelta(days=31)),
    ]


def expected_rows(records: list[Forecast]) -> list[dict[str, object]]:
    from chargecast.audit.cli import cells

    return [dict(zip(COLUMNS, cells(f), strict=True)) for f in records]


def test_export_csv_round_trips_the_window(url: str, tmp_path: Path) -> None:
    put(url, window_records())
    out = tmp_path / "jan.csv"
    proc = run("audit", "export", "--since", "2026-01-01", "--until", "2026-02-01", "-o", str(out), "--audit", url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("3 forecasts")
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["request_id"], r["row"]) for r in rows] == [("first", "0"), ("first", "1"), ("mid", "0"), ("end", "0")][
        :3
    ]
    want = expected_rows(window_records()[1:4])
    for got, row in zip(rows, want, strict=True):
        assert datetime.fromisoformat(got["time"]) == row["time"]
        assert float(got["charges"]) == row["charges"]
        assert got["quantiles"] == ("" if row["quantiles"] is None else row["quantiles"])
        assert got["patient"] == (row["patient"] or "")
    first = rows[0]
    assert json.loads(first["quantiles"]) == {"0.05": 900.5, "0.5": 4000.0, "0.95": 13000.75}
    assert first["extrapolated"] == "age;bmi"
    assert first["client_request_id"] == "client-7"
    assert first["caller"] == ""
    assert (rows[1]["age"], rows[1]["sex"], rows[1]["bmi"]) == ("70", "male", "22.25")


def test_export_parquet_round_trips_the_window(url: str, tmp_path: Path) -> None:
    put(url, window_records())
    out = tmp_path / "jan.parquet"
    proc = run(
        "audit",
        "export",
        "--since",
        "2026-01-01T00:00:00Z",
        "--until",
        "2026-01-31T23:59:59+00:00",
        "-o",
        str(out),
        "--audit",
        url,
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert table.column_names == list(COLUMNS)
    got = table.to_pylist()
    want = expected_rows(window_records()[1:4])
    assert got == want
    assert table.schema.field("time").type.tz == "UTC"
    assert pd.api.types.is_integer_dtype(table.to_pandas()["age"])


def test_an_empty_window_is_an_empty_file_with_the_columns(url: str, tmp_path: Path) -> None:
    for name in ("none.csv", "none.parquet"):
        out = tmp_path / name
        proc = run("audit", "export", "--since", "2030-01-01", "--until", "2030-02-01", "-o", str(out), "--audit", url)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("0 forecasts")
    assert (tmp_path / "none.csv").read_text() == ",".join(COLUMNS) + "\n"
    assert pq.read_table(tmp_path / "none.parquet").column_names == list(COLUMNS)


def test_the_file_sink_exports_a_record_held_twice_once(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/audit"
    store = open_store(url)
    store.migrate()
    record = forecast("twice", 0, START)
    store.write([record])
    store.close()
    for path in (tmp_path / "audit").rglob("*"):  # a crash after a write, before it was acknowledged
        if path.is_file() and path.stat().st_size:
            path.write_bytes(path.read_bytes() * 2)
    out = tmp_path / "x.csv"
    proc = run("audit", "export", "--since", "2026-01-01", "--until", "2026-01-02", "-o", str(out), "--audit", url)
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--since", "2026-13-01", "--until", "2026-02-01"], "argument --since"),
        (["--since", "2026-01-01", "--until", "tomorrow"], "argument --until"),
        (["--since", "2026-02-01", "--until", "2026-01-01"], "--until"),
        (["--since", "2026-01-01", "--until", "2026-01-01"], "must be after --since"),
        (["--since", "2026-01-01", "--until", "2026-02-01", "--format", "xlsx"], "argument --format"),
    ],
)
def test_export_refuses_bad_options(args: list[str], fragment: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    out = tmp_path / "x.csv"
    refused(run("audit", "export", *args, "-o", str(out), "--audit", url), fragment)
    assert not out.exists()


def test_a_failed_export_leaves_an_earlier_file_untouched(tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    out.write_text("an earlier export\n")
    proc = run(
        "audit",
        "export",
        "--since",
        "2026-01-01",
        "--until",
        "2026-02-01",
        "-o",
        str(out),
        "--audit",
        "postgresql://nobody@127.0.0.1:1/none",
    )
    refused(proc, "--audit")
    assert out.read_text() == "an earlier export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]
    missing = run(
        "audit",
        "export",
        "--since",
        "2026-01-01",
        "--until",
        "2026-02-01",
        "-o",
        str(tmp_path / "nope" / "x.csv"),
        "--audit",
        f"sqlite:///{tmp_path}/a.sqlite3",
    )
    refused(missing, "does not exist")


def test_exported_inputs_match_the_schema_columns() -> None:
    assert COLUMNS[8 : 8 + len(FEATURES)] == FEATURES
    assert np.unique(COLUMNS).size == len(COLUMNS)
