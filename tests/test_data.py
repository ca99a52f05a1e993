"""Loading, validating and downloading the training table.

Downloads are tested against a local HTTP server on 127.0.0.1: the tests never touch
the network.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chargecast.schema import FEATURES, Issue, ValidationError, decode
from chargecast.settings import Settings
from chargecast.training.data import DataError, Dataset, fetch_canonical, load_csv, load_dataset

# Documented facts about the canonical file.
CANONICAL_ROWS = 1338
CANONICAL_SHA256 = "6e3894cf7d9210613f62c866684055decea694345cd4f244ecd7167041578c68"

HEADER = "age,sex,bmi,children,smoker,region,charges"
GOOD = ["19,female,27.9,0,yes,southwest,16884.924", "18,male,33.77,1,no,southeast,1725.5523"]


@pytest.fixture(autouse=True)
def _no_chargecast_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's CHARGECAST_* variables from leaking into Settings()."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("CHARGECAST_"):
            monkeypatch.delenv(name)


def write_csv(tmp_path: Path, lines: list[str], name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_settings(cache_dir: Path, url: str, **overrides: Any) -> Settings:
    # Built from a dict: mypy (without the pydantic plugin) wrongly thinks every field
    # declared as Field(<default>, ...) is a required argument.
    values: dict[str, Any] = {
        "data_url": url,
        "data_sha256": CANONICAL_SHA256,
        "cache_dir": cache_dir,
        "download_timeout": 5.0,
    }
    return Settings(**(values | overrides))


def validation_error(path: Path) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        load_csv(path)
    return info.value


# --- the canonical file ---------------------------------------------------------------


def test_loads_the_shared_file(insurance_csv: Path) -> None:
    ds = load_csv(insurance_csv)

    assert ds.rows == CANONICAL_ROWS
    assert ds.X.shape == (CANONICAL_ROWS, len(FEATURES))
    assert ds.y.shape == (CANONICAL_ROWS,)
    assert ds.X.dtype == np.float64
    assert ds.y.dtype == np.float64
    assert ds.sha256 == CANONICAL_SHA256
    assert ds.source == str(insurance_csv)

    with insurance_csv.open(newline="") as f:
        records = list(csv.DictReader(f))
    assert ds.y.sum() == pytest.approx(math.fsum(float(r["charges"]) for r in records), rel=1e-12)
    np.testing.assert_array_equal(ds.X[:, FEATURES.index("age")], [float(r["age"]) for r in records])
    np.testing.assert_array_equal(ds.X[:, FEATURES.index("bmi")], [float(r["bmi"]) for r in records])
    assert ds.X[:, FEATURES.index("smoker")].sum() == sum(r["smoker"] == "yes" for r in records)
    last = {k: v for k, v in records[-1].items() if k != "charges"}
    assert {k: str(v) for k, v in decode(ds.X[-1]).items()} == last


def test_dataset_is_immutable(insurance_csv: Path) -> None:
    ds = load_csv(insurance_csv)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.sha256 = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        ds.X[0, 0] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        ds.y[0] = 0.0


def test_extra_and_reordered_columns_and_loose_header(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        [
            "id, Charges ,region,smoker,children,bmi,sex,AGE,note",
            "1,16884.924,southwest,yes,0,27.9,female,19,x",
            "2,1725.5523,southeast,no,1,33.77,male,18,",
        ],
    )
    ds = load_csv(path)
    np.testing.assert_array_equal(ds.X, [[19, 0, 27.9, 0, 1, 3], [18, 1, 33.77, 1, 0, 2]])
    np.testing.assert_array_equal(ds.y, [16884.924, 1725.5523])


def test_blank_lines_are_skipped_and_rows_keep_their_line_numbers(tmp_path: Path) -> None:
    path = write_csv(tmp_path, [HEADER, GOOD[0], "", "17,male,30,0,no,northeast,100", ""])
    assert validation_error(path).issues == [Issue("age", "must be a whole number from 18 to 100", "17", 4)]
    assert load_csv(write_csv(tmp_path, [HEADER, "", *GOOD, ""], "ok.csv")).rows == 2


# --- invalid files ---------------------------------------------------------------------

BAD_ROWS = {
    "bad category": (
        "30,female,25.0,0,maybe,northeast,1000",
        Issue("smoker", "must be one of no, yes", "maybe"),
    ),
    "age out of range": (
        "17,female,25.0,0,no,northeast,1000",
        Issue("age", "must be a whole number from 18 to 100", "17"),
    ),
    "fractional age": (
        "30.5,female,25.0,0,no,northeast,1000",
        Issue("age", "must be a whole number from 18 to 100", "30.5"),
    ),
    "non-numeric bmi": (
        "30,female,heavy,0,no,northeast,1000",
        Issue("bmi", "must be a number from 10 to 80", "heavy"),
    ),
    "empty cell": ("30,,25.0,0,no,northeast,1000", Issue("sex", "is required")),
    "negative charge": (
        "30,female,25.0,0,no,northeast,-5",
        Issue("charges", "must be a positive number", "-5"),
    ),
    "zero charge": ("30,female,25.0,0,no,northeast,0", Issue("charges", "must be a positive number", "0")),
    "NaN charge": ("30,female,25.0,0,no,northeast,nan", Issue("charges", "must be a positive number", "nan")),
    "text charge": (
        "30,female,25.0,0,no,northeast,lots",
        Issue("charges", "must be a positive number", "lots"),
    ),
    "empty charge": ("30,female,25.0,0,no,northeast,", Issue("charges", "is required")),
    "ragged row": ("30,female,25.0", Issue("record", "has 3 cells, the header has 7")),
    "long row": ("30,female,25.0,0,no,northeast,1000,1", Issue("record", "has 8 cells, the header has 7")),
}


@pytest.mark.parametrize(("line", "expected"), BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_row_is_reported_with_its_line(tmp_path: Path, line: str, expected: Issue) -> None:
    # Header is line 1, the good rows lines 2-3, so the bad row is line 4.
    err = validation_error(write_csv(tmp_path, [HEADER, *GOOD, line]))
    assert err.issues == [dataclasses.replace(expected, line=4)]
    assert not err.truncated
    assert "line 4" in str(err)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("age,sex,children,smoker,region,charges", [Issue("bmi", "column is required", None, 1)]),
        ("age,sex,bmi,children,smoker,region", [Issue("charges", "column is required", None, 1)]),
        (
            "age,sex,bmi,children,smoker,region,charges,age",
            [Issue("age", "column appears 2 times", None, 1)],
        ),
    ],
)
def test_header_problems(tmp_path: Path, header: str, expected: list[Issue]) -> None:
    err = validation_error(write_csv(tmp_path, [header, "1,2,3,4,5,6,7,8"]))
    assert err.issues == expected


@pytest.mark.parametrize("content", [b"", b"\n\n", (HEADER + "\n").encode(), (HEADER + "\r\n\r\n").encode()])
def test_file_without_data_rows(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    assert validation_error(path).issues == [Issue("file", "has no data rows")]


def test_binary_garbage_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    err = validation_error(path)
    assert err.issues == [Issue("file", "must be UTF-8 encoded CSV text", None, 1)]


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\n{GOOD[0]}\n30,female,25.0,0,no,nördeast,1000\n".encode("latin-1"))
    assert validation_error(path).issues == [Issue("file", "must be UTF-8 encoded CSV text", None, 3)]


def test_nul_bytes_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nul.csv"
    path.write_bytes(f"{HEADER}\n{GOOD[0]}\n".encode() + b"\x00\x00\x01\x02")
    assert validation_error(path).issues == [Issue("file", "must be CSV text, not a binary file", None, 3)]


def test_csv_syntax_error_is_a_validation_error(tmp_path: Path) -> None:
    # An unbalanced quote swallows the rest of the file into one oversized field.
    path = write_csv(tmp_path, [HEADER, GOOD[0], '30,"female' + "x" * 200_000])
    err = validation_error(path)
    assert [(i.field, i.line) for i in err.issues] == [("file", 3)]
    assert err.issues[0].rule.startswith("is not valid CSV: field larger than field limit")


def test_text_that_is_not_csv_fails_on_the_header(tmp_path: Path) -> None:
    # The header is checked first: its problems say more than "no data rows" would.
    path = write_csv(tmp_path, ["<html><body>Not found</body></html>"])
    assert {i.field for i in validation_error(path).issues} == {*FEATURES, "charges"}
    path = write_csv(tmp_path, ["<html>", "<body>Not found</body>", "</html>"])
    err = validation_error(path)
    assert {i.field for i in err.issues} == {*FEATURES, "charges"}
    assert {i.rule for i in err.issues} == {"column is required"}


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeff" + "\n".join([HEADER, *GOOD]) + "\n").encode())
    assert load_csv(path).rows == 2


def test_issues_from_features_charges_and_shape_are_merged_by_line(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        [
            HEADER,
            "17,female,25.0,0,no,northeast,1000",  # line 2: age
            "30,female,25.0,0,no,northeast,-1",  # line 3: charges
            "30,female",  # line 4: ragged
            GOOD[0],  # line 5: fine
            "30,female,25.0,0,no,mars,0",  # line 6: region and charges
        ],
    )
    err = validation_error(path)
    assert [(i.line, i.field) for i in err.issues] == [
        (2, "age"),
        (3, "charges"),
        (4, "record"),
        (6, "region"),
        (6, "charges"),
    ]
    assert err.total == 5
    assert not err.truncated


def test_many_bad_rows_give_a_truncated_error_with_the_total(tmp_path: Path) -> None:
    bad = [f"{10 + k % 5},female,25.0,0,no,northeast,1000" for k in range(12)]
    bad += ["30,female,25.0,0,no,northeast,-1"] * 13
    path = write_csv(tmp_path, [HEADER, GOOD[0], *bad])
    err = validation_error(path)
    assert err.truncated
    assert err.total == 25
    assert len(err.issues) == 20
    # The first 20 bad lines, in order: 12 ages (lines 3-14), then charges from line 15.
    assert [i.line for i in err.issues] == list(range(3, 23))
    assert [i.field for i in err.issues] == ["age"] * 12 + ["charges"] * 8
    assert str(err).endswith("... and 5 more")


def test_missing_or_unreadable_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data file not found: .*nope\.csv"):
        load_csv(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="cannot read data file"):
        load_csv(tmp_path)


# --- downloading -----------------------------------------------------------------------


@dataclasses.dataclass
class Route:
    body: bytes
    content_length: int | None = None  # a header that lies about the body length
    stall: bool = False  # send the headers, then wait until the test is over


@dataclasses.dataclass
class FakeServer:
    base: str = ""
    routes: dict[str, Route] = dataclasses.field(default_factory=dict)
    requests: list[str] = dataclasses.field(default_factory=list)
    release: threading.Event = dataclasses.field(default_factory=threading.Event)

    def serve(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.base + path


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """An HTTP server on 127.0.0.1 serving ``routes`` (404 otherwise), always shut down."""
    state = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            self.send_response(200)
            length = len(route.body) if route.content_length is None else route.content_length
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if route.stall:
                self.wfile.flush()
                state.release.wait(10)
                return
            self.wfile.write(route.body)
            self.close_connection = True  # a short body is followed by a dropped connection

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def canonical_bytes(insurance_csv: Path) -> bytes:
    return insurance_csv.read_bytes()


def cache_name(sha256: str = CANONICAL_SHA256) -> str:
    return f"insurance-{sha256[:12]}.csv"


def test_download_is_verified_then_served_from_cache(
    tmp_path: Path, server: FakeServer, canonical_bytes: bytes
) -> None:
    url = server.serve("/insurance.csv", Route(canonical_bytes))
    cache = tmp_path / "cache" / "nested"  # created on demand
    settings = make_settings(cache, url)

    path = fetch_canonical(settings)
    assert path == cache / cache_name()
    assert path.read_bytes() == canonical_bytes
    assert list(cache.iterdir()) == [path]
    assert server.requests == ["/insurance.csv"]

    assert fetch_canonical(settings) == path
    assert server.requests == ["/insurance.csv"]  # no second request


def test_wrong_checksum_leaves_nothing_in_the_cache(tmp_path: Path, server: FakeServer, canonical_bytes: bytes) -> None:
    body = canonical_bytes.replace(b"16884.924", b"99999.999")
    url = server.serve("/insurance.csv", Route(body))
    with pytest.raises(DataError) as info:
        fetch_canonical(make_settings(tmp_path, url))
    message = str(info.value)
    assert url in message
    assert f"expected sha256 {CANONICAL_SHA256}" in message
    assert f"got {hashlib.sha256(body).hexdigest()}" in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_a_data_error(tmp_path: Path, server: FakeServer) -> None:
    url = server.base + "/missing.csv"
    with pytest.raises(DataError, match="HTTP 404") as info:
        fetch_canonical(make_settings(tmp_path, url))
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_no_file(tmp_path: Path, server: FakeServer, canonical_bytes: bytes) -> None:
    half = canonical_bytes[: len(canonical_bytes) // 2]
    url = server.serve("/insurance.csv", Route(half, content_length=len(canonical_bytes)))
    with pytest.raises(DataError, match=f"interrupted: received {len(half)} of {len(canonical_bytes)} bytes"):
        fetch_canonical(make_settings(tmp_path, url))
    assert list(tmp_path.iterdir()) == []  # neither the final file nor a temporary one


def test_stalled_download_times_out(tmp_path: Path, server: FakeServer, canonical_bytes: bytes) -> None:
    url = server.serve("/insurance.csv", Route(canonical_bytes, stall=True))
    with pytest.raises(DataError, match="timed out") as info:
        fetch_canonical(make_settings(tmp_path, url, download_timeout=0.2))
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_is_a_data_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago, with nobody listening now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/insurance.csv"
    with pytest.raises(DataError, match="cannot connect") as info:
        fetch_canonical(make_settings(tmp_path, url))
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_tampered_cache_is_replaced(tmp_path: Path, server: FakeServer, canonical_bytes: bytes) -> None:
    url = server.serve("/insurance.csv", Route(canonical_bytes))
    settings = make_settings(tmp_path, url)
    path = fetch_canonical(settings)
    path.write_bytes(canonical_bytes[:-10])

    assert fetch_canonical(settings) == path
    assert path.read_bytes() == canonical_bytes
    assert server.requests == ["/insurance.csv"] * 2
    assert list(tmp_path.iterdir()) == [path]


def test_tampered_cache_is_removed_even_if_the_download_fails(tmp_path: Path, server: FakeServer) -> None:
    (tmp_path / cache_name()).write_bytes(b"not the data")
    with pytest.raises(DataError, match="HTTP 404"):
        fetch_canonical(make_settings(tmp_path, server.base + "/gone.csv"))
    assert list(tmp_path.iterdir()) == []


# --- choosing the source ---------------------------------------------------------------


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path, [HEADER, *GOOD], "small.csv")


def test_explicit_path_wins(tmp_path: Path, server: FakeServer, insurance_csv: Path, small_csv: Path) -> None:
    settings = make_settings(tmp_path / "cache", server.base + "/insurance.csv", data=small_csv)
    ds = load_dataset(insurance_csv, settings)
    assert (ds.rows, ds.source) == (CANONICAL_ROWS, str(insurance_csv))
    assert server.requests == []


def test_settings_data_beats_download(
    tmp_path: Path, server: FakeServer, small_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARGECAST_DATA", str(small_csv))
    settings = make_settings(tmp_path / "cache", server.base + "/insurance.csv")
    assert settings.data == small_csv  # read from the environment
    ds = load_dataset(None, settings)
    assert (ds.rows, ds.source) == (2, str(small_csv))
    assert server.requests == []


def test_download_when_nothing_is_configured(tmp_path: Path, server: FakeServer, canonical_bytes: bytes) -> None:
    url = server.serve("/insurance.csv", Route(canonical_bytes))
    ds = load_dataset(None, make_settings(tmp_path / "cache", url))
    assert isinstance(ds, Dataset)
    assert (ds.rows, ds.sha256, ds.source) == (CANONICAL_ROWS, CANONICAL_SHA256, url)
    assert server.requests == ["/insurance.csv"]


@pytest.mark.parametrize("where", ["argument", "settings"])
def test_missing_file_is_an_error_not_a_fallback(tmp_path: Path, server: FakeServer, where: str) -> None:
    missing = tmp_path / "nope.csv"
    settings = make_settings(
        tmp_path / "cache", server.base + "/insurance.csv", data=missing if where == "settings" else None
    )
    with pytest.raises(DataError, match=re.escape(f"data file not found: {missing}")):
        load_dataset(missing if where == "argument" else None, settings)
    assert server.requests == []
