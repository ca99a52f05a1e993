"""Every route of the ASGI app and every error it promises, in process (Starlette TestClient).

Bad input must never give a 5xx, and every error must have the one JSON shape (HTML for
the form) naming the field and the rule. Servers with real workers are in test_server.py.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from chargecast.batch import score_file
from chargecast.model.artifact import Artifact
from chargecast.schema import FEATURES, MAX_REPORTED_ISSUES, encode_records
from chargecast.serving import csvroute, errors, formdata, openapi, predict, request, routes
from chargecast.serving import service as service_module
from chargecast.serving.app import create_app
from chargecast.serving.metrics import LATENCY_BUCKETS, MULTIPROC_ENV, Metrics
from chargecast.serving.supervisor import render_metrics
from chargecast.settings import Settings

RECORD: dict[str, Any] = {"age": 39, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "southeast"}
SMOKER = {"age": 52, "sex": "male", "bmi": 34.1, "children": 3, "smoker": "yes", "region": "northwest"}
JSON_HEADERS = {"Content-Type": "application/json"}
KEY, OTHER_KEY = "k3y-one-0123456789", "k3y-two-9876543210"


@contextmanager
def ready_client(settings: Settings) -> Iterator[TestClient]:
    """A client whose app has loaded its model (it loads in the background after start-up)."""
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "model did not load"
            time.sleep(0.01)
        yield client


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with ready_client(Settings(model_dir=model_dir, log_level="warning")) as c:
        yield c


def error_of(response: Any, status: int, field: str | None = None, rule: str | None = None) -> dict[str, Any]:
    """Assert the one error shape; optionally that an issue names ``field`` with ``rule`` in its text."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"status", "message", "issues"}
    assert error["status"] == status
    assert isinstance(error["message"], str)
    assert error["message"]
    for issue in error["issues"]:
        assert {"field", "rule"} <= set(issue) <= {"field", "rule", "value", "line"}
        assert isinstance(issue["field"], str)
        assert isinstance(issue["rule"], str)
    if field is not None:
        named = [i for i in error["issues"] if i["field"] == field]
        assert named, f"no issue names {field!r}: {error['issues']}"
        if rule is not None:
            assert any(rule in i["rule"] for i in named), named
    return error  # type: ignore[no-any-return]


def post_json(client: TestClient, body: Any, path: str = "/api/v1/predict", **kwargs: Any) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # json: big ints too
    return client.post(path, content=content, headers=kwargs.pop("headers", JSON_HEADERS), **kwargs)


# -- health and readiness ---------------------------------------------------------------
def test_healthz_is_cheap_and_always_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_names_the_model(client: TestClient, model: Artifact) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "model_version": model.version}


@pytest.fixture
def held_load(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Model loading blocks until the returned event is set."""
    release = threading.Event()
    real_load = Artifact.load

    def slow_load(path: Path | str, sha256: str | None = None) -> Artifact:
        assert release.wait(10)
        return real_load(path, sha256)

    monkeypatch.setattr(Artifact, "load", staticmethod(slow_load))
    return release


def test_readiness_is_503_until_the_model_is_loaded_and_warm(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, held_load: threading.Event
) -> None:
    release = held_load
    monkeypatch.setattr(service_module, "MODEL_WAIT_SECONDS", 0.05)
    with TestClient(create_app(Settings(model_dir=model_dir, log_level="warning"))) as client:
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        error_of(not_ready, 503, "model", "is not loaded")
        assert not_ready.headers["retry-after"] == "1"
        error_of(post_json(client, RECORD), 503)
        error_of(post_json(client, RECORD, "/predict_api"), 503)
        error_of(client.get("/api/v1/model"), 503)
        assert client.get("/").status_code == 503
        release.set()
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert post_json(client, RECORD).status_code == 200


def test_a_request_that_races_the_load_waits_for_it(model_dir: Path, held_load: threading.Event) -> None:
    release = held_load
    with TestClient(create_app(Settings(model_dir=model_dir, log_level="warning"))) as client:
        assert client.get("/readyz").status_code == 503
        threading.Timer(0.2, release.set).start()
        response = post_json(client, RECORD)  # sent while loading: answered once the model is in
        assert response.status_code == 200
        assert client.get("/readyz").status_code == 200


def test_a_model_that_fails_to_load_keeps_the_service_unready(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(model_dir=tmp_path / "missing", log_level="error"))) as client:
        deadline = time.monotonic() + 10
        while "failed to load" not in (response := client.get("/readyz")).text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        error = error_of(response, 503)
        assert error["message"] == "not ready: the model failed to load or verify"
        assert str(tmp_path) not in response.text  # internal paths stay in the server log
        assert client.get("/healthz").status_code == 200
        assert "failed to load" in error_of(post_json(client, RECORD), 503)["message"]


# -- POST /api/v1/predict ---------------------------------------------------------------
def test_one_record(client: TestClient, model: Artifact) -> None:
    response = post_json(client, RECORD)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    expected = model.predict_record(RECORD)
    assert body == {
        "charges": pytest.approx(expected.charges),
        "interval": {"low": pytest.approx(expected.low), "high": pytest.approx(expected.high), "level": 0.9},
        "model_version": model.version,
    }
    assert body["interval"]["low"] <= body["charges"] <= body["interval"]["high"]


def test_one_record_explained(client: TestClient, model: Artifact) -> None:
    body = post_json(client, RECORD, params={"explain": "true"}).json()
    assert set(body["contributions"]) == set(FEATURES)
    assert body["baseline"] == pytest.approx(model.baseline)
    assert sum(body["contributions"].values()) + body["baseline"] == pytest.approx(body["charges"], rel=1e-9)
    assert "contributions" not in post_json(client, RECORD, params={"explain": "false"}).json()


def test_a_list_of_records_keeps_their_order(client: TestClient, model: Artifact) -> None:
    records = [RECORD, SMOKER, {**RECORD, "age": 64}]
    body = post_json(client, records).json()
    assert set(body) == {"predictions", "total", "model_version"}
    assert body["model_version"] == model.version
    charges, low, high = model.predict(encode_records(records))
    assert [p["charges"] for p in body["predictions"]] == pytest.approx(charges.tolist())
    assert [p["interval"]["low"] for p in body["predictions"]] == pytest.approx(low.tolist())
    assert [p["interval"]["high"] for p in body["predictions"]] == pytest.approx(high.tolist())
    for p in body["predictions"]:
        assert set(p) == {"charges", "interval"}
        assert p["interval"]["level"] == 0.9
    single = post_json(client, SMOKER).json()
    assert body["predictions"][1]["charges"] == pytest.approx(single["charges"])


def test_a_list_explained(client: TestClient) -> None:
    body = post_json(client, [RECORD, SMOKER], params={"explain": "TRUE"}).json()
    for p in body["predictions"]:
        assert sum(p["contributions"].values()) + p["baseline"] == pytest.approx(p["charges"], rel=1e-9)


def test_the_largest_batch_is_accepted(client: TestClient) -> None:
    body = post_json(client, [RECORD] * predict.MAX_RECORDS).json()
    assert len(body["predictions"]) == predict.MAX_RECORDS


@pytest.mark.parametrize(
    "change",
    [
        {"sex": " Female "},
        {"smoker": "NO", "region": "SouthEast"},
        {"age": 39.0, "children": 1.0},
        {"age": 18, "bmi": 10, "children": 0},
        {"age": 100, "bmi": 80.0, "children": 10},
    ],
    ids=["spaces-and-case", "upper-case", "whole-floats", "lowest", "highest"],
)
def test_accepted_variants(client: TestClient, change: dict[str, Any]) -> None:
    assert post_json(client, {**RECORD, **change}).status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({**RECORD, "age": "39"}, "age", "must be a JSON number, not a string"),
        ({**RECORD, "bmi": "abc"}, "bmi", "must be a JSON number, not a string"),
        ({**RECORD, "age": True}, "age", "whole number"),
        ({**RECORD, "sex": 1}, "sex", "must be one of female, male"),
        ({**RECORD, "bmi": [30]}, "bmi", "number from 10 to 80"),
        ({**RECORD, "region": {"name": "south"}}, "region", "must be one of"),
        ({**RECORD, "region": None}, "region", "is required"),
        ({k: v for k, v in RECORD.items() if k != "smoker"}, "smoker", "is required"),
        ({**RECORD, "smoking": "no"}, "smoking", "is not a known field"),
        ({**RECORD, "age": 17}, "age", "from 18 to 100"),
        ({**RECORD, "age": 101}, "age", "from 18 to 100"),
        ({**RECORD, "age": 39.5}, "age", "whole number"),
        ({**RECORD, "bmi": 9.99}, "bmi", "from 10 to 80"),
        ({**RECORD, "children": 11}, "children", "from 0 to 10"),
        ({**RECORD, "children": -1}, "children", "from 0 to 10"),
        ({**RECORD, "sex": "x"}, "sex", "must be one of female, male"),
        ({**RECORD, "region": "south"}, "region", "northeast, northwest, southeast, southwest"),
        ({**RECORD, "sex": ""}, "sex", "is required"),
        ({**RECORD, "age": 10**30}, "age", "from 18 to 100"),
        ({**RECORD, "age": -(2**63)}, "age", "from 18 to 100"),
        ({**RECORD, "bmi": 1e308}, "bmi", "from 10 to 80"),
        ({}, "age", "is required"),
        ("a string", "body", "must be a JSON object"),
        (42, "body", "must be a JSON object"),
        (None, "body", "must be a JSON object"),
        (True, "body", "must be a JSON object"),
        ([], "body", "must hold 1 to 10000 records"),
        ([RECORD] * (predict.MAX_RECORDS + 1), "body", "at most 10000 records"),
        ([RECORD, "x"], "[1]", "must be an object"),
        ([RECORD, {**RECORD, "age": 17}], "[1].age", "from 18 to 100"),
        ([RECORD, [RECORD]], "[1]", "must be an object"),
        ([[[[[[RECORD]]]]]], "[0]", "must be an object"),
        ({**RECORD, "age": [[[[[[[[1]]]]]]]]}, "age", "whole number"),
    ],
    ids=lambda v: str(v)[:40] if not isinstance(v, dict | list) else None,
)
def test_bad_records_are_422_naming_field_and_rule(client: TestClient, body: Any, field: str, rule: str) -> None:
    error_of(post_json(client, body), 422, field, rule)


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (b"", "is required"),
        (b"hello", "must be valid JSON"),
        (b'{"age": 39', "must be valid JSON"),
        (b'{"age": NaN}', "NaN and Infinity are not JSON numbers"),
        (b'{"age": 39, "bmi": Infinity}', "NaN and Infinity"),
        (b'[{"bmi": -Infinity}]', "NaN and Infinity"),
        (b'{"bmi": 1e400}', "must be valid JSON"),
        (b'{"age": "\xff"}', "must be valid JSON"),
        (b"\xef\xbb\xbf{}", "must be valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "must be valid JSON"),
        (b"{'age': 39}", "must be valid JSON"),
    ],
    ids=["empty", "text", "cut", "nan", "infinity", "minus-inf", "overflow", "bad-utf8", "bom", "deep", "python"],
)
def test_unreadable_bodies_are_400(client: TestClient, body: bytes, rule: str) -> None:
    error = error_of(post_json(client, body), 400, "body", rule)
    if b"NaN" in body or b"Infinity" in body:
        assert error["message"].startswith("body is not valid JSON (NaN and Infinity are not allowed): ")


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"],
)
def test_wrong_content_type_is_415(client: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/api/v1/predict", "/predict_api"):
        response = client.post(path, content=orjson.dumps(RECORD), headers=headers)
        error_of(response, 415, "Content-Type", "application/json")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON", "application/x+json"])
def test_json_content_type_variants(client: TestClient, content_type: str) -> None:
    assert post_json(client, RECORD, headers={"Content-Type": content_type}).status_code == 200


def test_bodies_over_the_limit_are_413(client: TestClient) -> None:
    big = b"[" + b",".join([orjson.dumps(RECORD)] * 15_000) + b"]"  # ~1.4 MB
    assert len(big) > Settings().max_body_bytes
    response = post_json(client, big)
    error_of(response, 413, "body", "at most 1048576 bytes")
    assert "/api/v1/predict/csv" in response.json()["error"]["message"]
    assert response.headers["connection"] == "close"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = client.post("/api/v1/predict", content=chunks(), headers=JSON_HEADERS)
    error_of(streamed, 413)


def test_small_limit_is_configurable(model_dir: Path) -> None:
    with ready_client(Settings(model_dir=model_dir, max_body_bytes=1024, log_level="warning")) as small:
        assert post_json(small, RECORD).status_code == 200
        error_of(post_json(small, [RECORD] * 30), 413)


def test_issues_are_capped_and_counted(client: TestClient) -> None:
    bad = [{**RECORD, "age": 17, "bmi": 5}] * 60
    error = error_of(post_json(client, bad), 422, "[0].age")
    assert len(error["issues"]) == MAX_REPORTED_ISSUES
    assert "the first 20 of 120 problems are listed" in error["message"]


def test_long_values_are_cut_in_errors(client: TestClient) -> None:
    error = error_of(post_json(client, {**RECORD, "sex": "x" * 10_000}), 422, "sex")
    assert len(error["issues"][0]["value"]) == errors.MAX_SHOWN_VALUE


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("explain=yes", "explain"),
        ("explain=", "explain"),
        ("explain=1", "explain"),
        ("explian=true", "explian"),
        ("&".join(["explain=true"] * 40), "query"),
    ],
)
def test_bad_query_parameters_are_422(client: TestClient, query: str, field: str) -> None:
    error_of(client.post(f"/api/v1/predict?{query}", content=orjson.dumps(RECORD), headers=JSON_HEADERS), 422, field)


# -- the tutorial's JSON route ----------------------------------------------------------
def test_predict_api_answers_a_bare_number(client: TestClient, model: Artifact) -> None:
    response = post_json(client, RECORD, "/predict_api")
    assert response.status_code == 200
    assert response.json() == pytest.approx(model.predict_record(RECORD).charges)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [([RECORD], 422, "body"), ({**RECORD, "age": 17}, 422, "age"), (b"{", 400, "body"), (b"NaN", 400, "body")],
)
def test_predict_api_errors(client: TestClient, body: Any, status: int, field: str) -> None:
    error_of(post_json(client, body, "/predict_api"), status, field)


# -- POST /api/v1/predict/csv -----------------------------------------------------------
def _csv(rows: list[dict[str, Any]], header: list[str] | None = None, eol: str = "\n") -> str:
    header = header or list(FEATURES)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=eol)
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(h, "") for h in header])
    return out.getvalue()


def _read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_in_the_same_csv_out(client: TestClient, insurance_csv: Path, model: Artifact) -> None:
    text = insurance_csv.read_text().replace("charges", "actual")  # the data set, with its target renamed
    response = client.post("/api/v1/predict/csv", content=text, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    sent, got = text.splitlines(), response.text.splitlines()
    assert got[0] == sent[0] + ",charges,charges_low,charges_high"
    assert len(got) == len(sent)
    assert all(g.startswith(s + ",") for s, g in zip(sent[1:], got[1:], strict=True))
    rows = _read_csv(response.text)
    X = encode_records([{k: r[k] for k in FEATURES} for r in rows])
    charges, low, high = model.predict(X)
    assert [float(r["charges"]) for r in rows] == pytest.approx(np.round(charges, 2).tolist(), abs=0.006)
    assert [float(r["charges_low"]) for r in rows] == pytest.approx(np.round(low, 2).tolist(), abs=0.006)
    assert [float(r["charges_high"]) for r in rows] == pytest.approx(np.round(high, 2).tolist(), abs=0.006)


def test_csv_as_a_multipart_upload(client: TestClient) -> None:
    text = _csv([RECORD, SMOKER])
    response = client.post("/api/v1/predict/csv", files={"file": ("patients.csv", text.encode(), "text/csv")})
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="patients.scored.csv"'
    assert [r["age"] for r in _read_csv(response.text)] == ["39", "52"]


def test_csv_columns_in_any_order_with_extras_quoted_crlf_bom_and_blank_lines(client: TestClient) -> None:
    header = ["id", "Region", "SMOKER", "children", "bmi", "sex", "age", "note"]
    rows = [
        {**RECORD, "Region": "southeast", "SMOKER": "no", "id": 1, "note": 'says "hi", twice'},
        {**SMOKER, "Region": "northwest", "SMOKER": "yes", "id": 2, "note": "line\nbreak"},
    ]
    text = "\ufeff" + _csv(rows, header, eol="\r\n") + "\r\n"
    single = post_json(client, SMOKER).json()
    response = client.post("/api/v1/predict/csv", content=text.encode(), headers={"Content-Type": "text/csv"})
    assert response.status_code == 200
    assert "\r\n" in response.text
    out = _read_csv(response.text)
    assert [r["id"] for r in out] == ["1", "2"]
    assert out[0]["note"] == 'says "hi", twice'
    assert out[1]["note"] == "line\nbreak"
    assert float(out[1]["charges"]) == pytest.approx(single["charges"], abs=0.006)
    blank = "age,sex,bmi,children,smoker,region\n\n39,female,30.4,1,no,southeast\n\n52,male,34.1,3,yes,northwest"
    response = client.post("/api/v1/predict/csv", content=blank, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200
    assert len(response.text.strip().splitlines()) == 3


def test_bad_csv_rows_get_one_422_with_row_column_and_rule(client: TestClient) -> None:
    rows = [RECORD, {**RECORD, "age": 17}, {**RECORD, "sex": "x", "bmi": ""}, RECORD, {**RECORD, "children": "two"}]
    response = client.post("/api/v1/predict/csv", content=_csv(rows), headers={"Content-Type": "text/csv"})
    error = error_of(response, 422)
    found = {(i["line"], i["field"], i["rule"]) for i in error["issues"]}
    assert found == {
        (3, "age", "must be a whole number from 18 to 100"),  # physical lines: the header is line 1
        (4, "sex", "must be one of female, male"),
        (4, "bmi", "is required"),
        (6, "children", "must be a whole number from 0 to 10"),
    }
    assert {i["value"] for i in error["issues"] if "value" in i} == {"17", "x", "two"}  # as sent: CSV is text


@pytest.mark.parametrize(
    ("text", "status", "field", "rule"),
    [
        ("", 422, "file", "has no data rows"),
        ("age,sex,bmi,children,smoker,region\n", 422, "file", "has no data rows"),
        ("age,sex,bmi,children,region\n39,female,30.4,1,southeast\n", 422, "smoker", "column is required"),
        ("age,sex,bmi,children,smoker,region,charges\n39,female,30.4,1,no,southeast,1\n", 422, "charges", "adds"),
        ("age,age,sex,bmi,children,smoker,region\n", 422, "age", "appears 2 times"),
        ("age,sex,bmi,children,smoker,region\n39,female,30.4\n", 422, "record", "has 3 cells, the header has 6"),
        ("age,sex,bmi,children,smoker,region\n39,female,30.4,1,no,south\x00east\n", 400, "file", "not a binary file"),
        ("age;sex;bmi;children;smoker;region\n39;female;30.4;1;no;southeast\n", 422, "age", "separated by semicolons"),
        ("age\tsex\tbmi\tchildren\tsmoker\tregion\n39\tfemale\t30.4\t1\tno\tsoutheast\n", 422, "age", "by tabs"),
        ("a" * 200_000, 400, "file", "valid CSV"),
    ],
    ids=[
        "empty",
        "header-only",
        "missing-column",
        "output-column",
        "duplicate",
        "ragged",
        "nul",
        "semicolons",
        "tabs",
        "huge",
    ],
)
def test_bad_csv_files(client: TestClient, text: str, status: int, field: str, rule: str) -> None:
    response = client.post("/api/v1/predict/csv", content=text.encode(), headers={"Content-Type": "text/csv"})
    error_of(response, status, field, rule)


def test_csv_that_is_not_utf8_is_400(client: TestClient) -> None:
    body = "age,sex,bmi,children,smoker,region\n39,fémale,30.4,1,no,southeast\n".encode("latin-1")
    response = client.post("/api/v1/predict/csv", content=body, headers={"Content-Type": "text/csv"})
    assert error_of(response, 400, "file", "UTF-8")["issues"][0]["line"] == 2


@pytest.mark.parametrize("content_type", [None, "application/json", "image/png"])
def test_csv_wrong_content_type_is_415(client: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/v1/predict/csv", content=_csv([RECORD]).encode(), headers=headers)
    error_of(response, 415, "Content-Type")


MULTIPART = {"Content-Type": "multipart/form-data; boundary=b"}


def _multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body with boundary ``b``: a part per (field name, filename or None, content)."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + b"--b--\r\n"


def test_csv_multipart_without_a_file_part_is_422(client: TestClient) -> None:
    # What a form with no file sends: fields only, none with a filename.
    no_file = _multipart(("age", None, b"39"), ("note", None, b"hi"))
    error_of(client.post("/api/v1/predict/csv", content=no_file, headers=MULTIPART), 422, "file", "is required")
    error_of(client.post("/api/v1/predict/csv", content=b"garbage", headers=MULTIPART), 400, "body", "multipart")
    response = client.post("/api/v1/predict/csv", content=b"x", headers={"Content-Type": "multipart/form-data"})
    error_of(response, 400, "Content-Type", "boundary")


def test_csv_multipart_takes_the_file_field_else_the_first_part_with_a_filename(client: TestClient) -> None:
    good, bad = _csv([RECORD, SMOKER]).encode(), _csv([{**RECORD, "age": 17}]).encode()
    elsewhere = _multipart(("note", None, b"hi"), ("upload", "book.csv", good), ("later", "bad.csv", bad))
    response = client.post("/api/v1/predict/csv", content=elsewhere, headers=MULTIPART)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="book.scored.csv"'
    assert [r["age"] for r in _read_csv(response.text)] == ["39", "52"]
    named = _multipart(("upload", "bad.csv", bad), ("file", "patients.csv", good))  # 'file' wins wherever it is
    response = client.post("/api/v1/predict/csv", content=named, headers=MULTIPART)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="patients.scored.csv"'


def test_csv_multipart_with_an_empty_file_is_422(client: TestClient) -> None:
    empty = _multipart(("file", "", b""))  # a browser's file input left empty
    error_of(client.post("/api/v1/predict/csv", content=empty, headers=MULTIPART), 422, "file", "has no data rows")


def test_csv_limits_are_configurable(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, csv_max_rows=10, csv_max_bytes=4096, log_level="warning")
    with ready_client(settings) as limited:
        ok = limited.post("/api/v1/predict/csv", content=_csv([RECORD] * 10), headers={"Content-Type": "text/csv"})
        assert ok.status_code == 200
        rows = limited.post("/api/v1/predict/csv", content=_csv([RECORD] * 11), headers={"Content-Type": "text/csv"})
        error_of(rows, 413, "body", "at most 10 rows")
        big = _csv([RECORD] * 10) + "x" * 5000
        error_of(limited.post("/api/v1/predict/csv", content=big, headers={"Content-Type": "text/csv"}), 413)


def test_csv_takes_100k_rows(client: TestClient) -> None:
    line = "39,female,30.4,1,no,southeast\n52,male,34.1,3,yes,northwest\n"
    text = "age,sex,bmi,children,smoker,region\n" + line * 50_000
    response = client.post("/api/v1/predict/csv", content=text, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert len(lines) == 100_001
    assert lines[1].split(",")[:6] == ["39", "female", "30.4", "1", "no", "southeast"]
    assert lines[-1].startswith("52,male,34.1,3,yes,northwest,")


# -- GET /api/v1/model ------------------------------------------------------------------
def test_model_metadata(client: TestClient, model: Artifact) -> None:
    response = client.get("/api/v1/model")
    assert response.status_code == 200
    info = response.json()
    assert info["version"] == model.version
    assert info["interval_level"] == 0.9
    assert [f["name"] for f in info["schema"]] == list(FEATURES)
    assert "holdout" in info["metrics"]
    assert "files" not in info
    error_of(client.get("/api/v1/model?x=1"), 422, "x")


# -- the form ---------------------------------------------------------------------------
def test_form_page(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    for name in FEATURES:
        assert f'name="{name}"' in response.text


@pytest.mark.parametrize("path", ["/", "/predict"])
def test_form_prediction(client: TestClient, model: Artifact, path: str) -> None:
    form = {k: str(v) for k, v in RECORD.items()} | {"submit": "Forecast"}
    response = client.post(path, data=form)
    assert response.status_code == 200
    expected = model.predict_record(RECORD)
    assert f"${expected.charges:,.0f}" in response.text
    assert f"${expected.low:,.0f}" in response.text
    assert f"${expected.high:,.0f}" in response.text
    assert "90%" in response.text


def test_form_as_multipart(client: TestClient) -> None:
    form = {k: (None, str(v)) for k, v in RECORD.items()}
    assert client.post("/predict", files=form).status_code == 200


def test_form_errors_are_inline_and_escaped(client: TestClient) -> None:
    form = {**{k: str(v) for k, v in RECORD.items()}, "age": "17", "sex": "<script>alert(1)</script>", "bmi": ""}
    response = client.post("/predict", data=form)
    assert response.status_code == 422
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "must be a whole number from 18 to 100" in response.text
    assert "must be one of female, male" in response.text
    assert "is required" in response.text
    assert "<script>" not in response.text
    assert 'value="17"' in response.text  # what the person typed stays in the field


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"age=39", {"Content-Type": "application/json"}, 415),
        (b"x" * (2 << 20), {"Content-Type": "application/x-www-form-urlencoded"}, 413),
        (b"--b\r\nbroken", {"Content-Type": "multipart/form-data; boundary=b"}, 400),
    ],
    ids=["json", "too-big", "bad-multipart"],
)
def test_form_transport_errors_are_pages(
    client: TestClient, content: bytes, headers: dict[str, str], status: int
) -> None:
    response = client.post("/predict", content=content, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<form" in response.text


# -- metrics ----------------------------------------------------------------------------
def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_count_requests_predictions_and_inputs(model_dir: Path, model: Artifact) -> None:
    with ready_client(Settings(model_dir=model_dir, log_level="warning")) as fresh:
        for _ in range(3):
            assert post_json(fresh, RECORD).status_code == 200
        assert post_json(fresh, [RECORD, SMOKER]).status_code == 200
        assert post_json(fresh, {**RECORD, "age": 1}).status_code == 422
        csv_text = _csv([RECORD, SMOKER, SMOKER])
        assert fresh.post("/api/v1/predict/csv", content=csv_text, headers={"Content-Type": "text/csv"}).is_success
        assert fresh.get("/metrics").status_code == 404  # only on the supervisor's own port (test_server)
        metrics = fresh.app.state.service.metrics  # type: ignore[attr-defined]
        metrics.flush()
        s = _samples(metrics.render().decode())
    route = 'method="POST",route="/api/v1/predict"'
    assert s[f'chargecast_http_requests_total{{{route},status="200"}}'] == 4
    assert s[f'chargecast_http_requests_total{{{route},status="422"}}'] == 1
    assert s[f'chargecast_http_request_duration_seconds_count{{{route},status="200"}}'] == 4
    assert s[f'chargecast_http_request_duration_seconds_bucket{{le="+Inf",{route},status="200"}}'] == 4
    assert s['chargecast_predictions_total{endpoint="api"}'] == 5
    assert s['chargecast_predictions_total{endpoint="csv"}'] == 3
    assert s["chargecast_predicted_charges_count"] == 8
    assert s["chargecast_input_age_count"] == 8
    assert "chargecast_input_age_sum" not in s  # bucket counts only: a sum's diff is one patient's age
    assert s['chargecast_input_age_bucket{le="40.0"}'] == 5
    assert s['chargecast_input_category_total{feature="smoker",value="yes"}'] == 3
    assert s['chargecast_input_category_total{feature="region",value="southeast"}'] == 5
    labels = f'interval_level="{model.level:g}",predictor="{model.predictor.kind}",version="{model.version}"'
    assert s[f"chargecast_model_info{{{labels}}}"] == 1


# The bulk writes reach into prometheus_client (histogram children's bucket values, the
# multiprocess files, mark_process_dead). These two tests fail loudly if any of that moves.
def test_bulk_histogram_writes_count_what_prometheus_client_observe_would() -> None:
    metrics, registry = Metrics(), CollectorRegistry()
    reference = Histogram("reference_seconds", "observed one by one", buckets=LATENCY_BUCKETS, registry=registry)
    seconds = [0.0001, 0.00025, 0.0003, 0.001, 0.004, 0.2, 3.0, 11.0, 0.00025, 10.0]  # bounds included
    for value in seconds:
        metrics.started("/x")
        metrics.finished("/x", "GET", 200, value)
        reference.observe(value)
    metrics.flush()

    def samples(registry: CollectorRegistry, name: str) -> dict[str, float]:
        (family,) = (f for f in registry.collect() if f.name == name)
        return {s.name.rsplit("_", 1)[1] + s.labels.get("le", ""): s.value for s in family.samples}

    got = samples(metrics.registry, "chargecast_http_request_duration_seconds")
    want = samples(registry, "reference_seconds")
    assert got.keys() == want.keys()
    assert got.pop("sum") == pytest.approx(want.pop("sum"))
    assert got == want


_WORKER = """
import sys
from chargecast.schema import encode_records
from chargecast.serving.metrics import Metrics
import numpy as np

metrics = Metrics()
assert metrics.multiprocess
RECORD = {"age": 39, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "southeast"}
X = np.array(encode_records([RECORD] * 3))
metrics.started("/api/v1/predict")
metrics.finished("/api/v1/predict", "POST", 200, 0.003)
metrics.observe_one("api", X[0].tolist(), 6000.0)
metrics.observe_many("csv", X, np.array([2500.0, 6000.0, 60000.0]))
metrics.set_model("v1", "gbm", 0.9)
metrics.flush()
print(sorted(p.name for p in __import__("pathlib").Path(sys.argv[1]).iterdir()))
metrics.process_exit()
"""


@pytest.mark.slow
def test_metrics_add_up_across_worker_processes(tmp_path: Path) -> None:
    """Two workers in prometheus_client's multiprocess mode, as `chargecast serve` runs them."""
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    for _ in range(2):
        worker = [sys.executable, "-c", _WORKER, str(tmp_path)]
        done = subprocess.run(worker, env=env, capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "gauge_livesum" in done.stdout  # the in-progress gauge was live while the worker ran
    assert not list(tmp_path.glob("gauge_livesum_*.db"))  # mark_process_dead dropped each worker's live gauge
    s = _samples(render_metrics(str(tmp_path)).decode())
    route = 'method="POST",route="/api/v1/predict",status="200"'
    assert s[f"chargecast_http_requests_total{{{route}}}"] == 2
    assert s[f'chargecast_http_request_duration_seconds_bucket{{le="0.0025",{route}}}'] == 0
    assert s[f'chargecast_http_request_duration_seconds_bucket{{le="0.005",{route}}}'] == 2
    assert s[f"chargecast_http_request_duration_seconds_sum{{{route}}}"] == pytest.approx(0.006)
    assert s['chargecast_predictions_total{endpoint="api"}'] == 2
    assert s['chargecast_predictions_total{endpoint="csv"}'] == 6
    assert s['chargecast_predicted_charges_bucket{le="3000.0"}'] == 2
    assert s['chargecast_predicted_charges_bucket{le="+Inf"}'] == 8
    assert "chargecast_predicted_charges_sum" not in s
    assert s['chargecast_input_age_bucket{le="40.0"}'] == 8
    assert s['chargecast_input_category_total{feature="smoker",value="no"}'] == 8
    assert s['chargecast_model_info{interval_level="0.9",predictor="gbm",version="v1"}'] == 1
    assert not any(name.startswith("chargecast_http_requests_in_progress") for name in s)


# -- routing, ids, logs -----------------------------------------------------------------
def test_unknown_path_and_wrong_method_are_json_errors(client: TestClient) -> None:
    error_of(client.get("/nope"), 404, "path")
    response = client.get("/api/v1/predict")
    error_of(response, 405, "method")
    assert response.headers["allow"] == "POST"
    assert set(client.delete("/").headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}


def test_request_ids(client: TestClient) -> None:
    generated = client.get("/healthz").headers["x-request-id"]
    assert generated
    assert generated != client.get("/healthz").headers["x-request-id"]
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert replaced != "bad id\twith spaces"


def test_one_json_access_line_per_request_without_patient_data(
    model_dir: Path, model: Artifact, capfd: pytest.CaptureFixture[str]
) -> None:
    with ready_client(Settings(model_dir=model_dir, log_level="info")) as logged:
        logged.app.state.service.access.flush()  # type: ignore[attr-defined]  # the readiness polls
        capfd.readouterr()
        post_json(logged, RECORD, headers={**JSON_HEADERS, "X-Request-ID": "trace-me"})
        post_json(logged, {**RECORD, "region": "atlantis"})
        logged.app.state.service.access.flush()  # type: ignore[attr-defined]
        out = capfd.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if '"event":"request"' in line]
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == "trace-me"
    assert first["route"] == "/api/v1/predict"
    assert first["method"] == "POST"
    assert first["status"] == 200
    assert first["model_version"] == model.version
    assert first["level"] == "info"
    assert first["ts"].endswith("Z")
    assert 0 < first["duration_ms"] < 10_000
    assert second["status"] == 422
    assert "southeast" not in out
    assert "atlantis" not in out
    assert "30.4" not in out


# -- API keys ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(model_dir: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=model_dir, api_keys=f"{KEY}, {OTHER_KEY}", log_level="warning")  # type: ignore[arg-type]
    with ready_client(settings) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/predict", RECORD),
        ("POST", "/predict_api", RECORD),
        ("POST", "/api/v1/predict/csv", None),
        ("POST", "/api/v1/predict/csv/summary", None),
        ("GET", "/api/v1/model", None),
    ],
)
def test_api_routes_need_a_key(keyed: TestClient, method: str, path: str, body: Any) -> None:
    content = orjson.dumps(body) if body else _csv([RECORD]).encode()
    content_type = "application/json" if body else "text/csv"

    def call(auth: str | None) -> Any:
        headers = {"Content-Type": content_type} | ({"Authorization": auth} if auth else {})
        return keyed.request(method, path, content=content if method == "POST" else None, headers=headers)

    missing = call(None)
    error_of(missing, 401, "Authorization", "is required")
    assert missing.headers["www-authenticate"] == 'Bearer realm="chargecast"'
    assert "Authorization: Bearer <key>" in missing.json()["error"]["message"]
    error_of(call("Bearer nope"), 401, "Authorization", "valid API key")
    error_of(call(f"Basic {KEY}"), 401, "Authorization", "Bearer <key>")
    error_of(call("Bearer"), 401, "Authorization")
    error_of(call(f"Bearer {KEY}x"), 401)
    assert call(f"Bearer {KEY}").status_code == 200
    assert call(f"bearer  {OTHER_KEY} ").status_code == 200


def test_health_and_docs_stay_open(keyed: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path


def test_without_keys_nothing_asks_for_one(client: TestClient) -> None:
    assert post_json(client, RECORD, headers={**JSON_HEADERS, "Authorization": "Bearer whatever"}).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json()["components"]


# -- OpenAPI and docs -------------------------------------------------------------------
def test_openapi_document_covers_every_route(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    routes = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    app: Starlette = client.app  # type: ignore[assignment]
    app_routes = {(m, r.path) for r in app.routes if isinstance(r, Route) for m in (r.methods or set()) - {"HEAD"}}
    assert routes == app_routes
    schemas = document["components"]["schemas"]
    record = schemas["PatientRecord"]
    assert record["required"] == list(FEATURES)
    assert record["additionalProperties"] is False
    age = record["properties"]["age"]
    assert (age["type"], age["minimum"], age["maximum"]) == ("integer", 18, 100)
    assert record["properties"]["region"]["enum"] == ["northeast", "northwest", "southeast", "southwest"]
    assert schemas["PatientBatch"]["maxItems"] == 10_000
    assert set(schemas["Error"]["properties"]["error"]["required"]) == {"status", "message", "issues"}
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, ops in document["paths"].items():
        for op in ops.values():
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and "application/json" in response["content"]:
                    assert response["content"]["application/json"]["schema"] == error_ref, path


def test_keyed_document_declares_bearer_auth_on_forecasting_routes_only(keyed: TestClient) -> None:
    document = keyed.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    secured = {p for p, ops in document["paths"].items() for op in ops.values() if op.get("security")}
    assert secured == {
        "/api/v1/predict",
        "/api/v1/predict/csv",
        "/api/v1/predict/csv/summary",
        "/api/v1/model",
        "/api/v1/actuals",
        "/predict_api",
        "/",
        "/predict",
    }
    assert document == openapi.build(keyed.app.state.service.settings)  # type: ignore[attr-defined]


def test_docs_page_is_self_contained(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    page = response.text
    for path in ("/api/v1/predict", "/api/v1/predict/csv", "/api/v1/predict/csv/summary", "/predict_api", "/healthz"):
        assert f"<code>{path}</code>" in page
    assert "<code>quantiles</code>" in page
    assert "<code>/metrics</code>" not in page  # served on the operators' port, not here
    assert "PatientRecord" in page
    assert "southeast" in page
    assert "<script" not in page
    assert "http://" not in page
    assert "https://" not in page


def test_no_5xx_for_random_garbage(client: TestClient) -> None:
    rng = np.random.default_rng(3)
    paths = ["/api/v1/predict", "/predict_api", "/api/v1/predict/csv", "/api/v1/predict/csv/summary", "/predict", "/"]
    kinds = ["application/json", "text/csv", "application/x-www-form-urlencoded", "multipart/form-data; boundary=z"]
    for _ in range(200):
        body = rng.bytes(int(rng.integers(0, 300)))
        path = paths[int(rng.integers(len(paths)))]
        kind = kinds[int(rng.integers(len(kinds)))]
        response = client.post(path, content=body, headers={"Content-Type": kind})
        assert response.status_code < 500, (path, kind, body, response.text)
    assert not math.isnan(post_json(client, RECORD).json()["charges"])


# -- protocol details (no transport) ----------------------------------------------------
def _source(text: str) -> csvroute.CsvSource:
    return csvroute.csv_source(bytearray(text.encode()), "text/csv")


def test_csv_chunks_number_rows_across_chunk_boundaries(model: Artifact) -> None:
    lines = ["39,female,30.4,1,no,southeast"] * 25
    lines[6] = "17,female,30.4,1,no,southeast"  # line 8 (the header is line 1), in the second chunk of 5
    lines[22] = "39,female,30.4,1,maybe,southeast"  # line 24, in the fifth
    text = "age,sex,bmi,children,smoker,region\n" + "\n".join(lines) + "\n"
    seen: list[int] = []
    with pytest.raises(errors.ApiError) as caught:
        csvroute.score_csv(model, _source(text), 100, on_chunk=lambda X, c: seen.append(len(c)), chunk_rows=5)
    assert caught.value.status == 422
    assert [(i.line, i.field) for i in caught.value.issues] == [(8, "age"), (24, "smoker")]
    assert seen == [5]  # prediction stops at the first bad chunk; validation goes on
    lines[6], lines[22] = lines[0], lines[0]
    fixed = "age,sex,bmi,children,smoker,region\n" + "\n".join(lines)
    whole = csvroute.score_csv(model, _source(fixed), 100, chunk_rows=5)
    one = csvroute.score_csv(model, _source(fixed), 100)
    assert whole.rows == 25
    assert whole.charges.tolist() == one.charges.tolist()


def test_csv_ragged_records_are_reported_in_line_order_among_the_bad_values(model: Artifact) -> None:
    text = "age,sex,bmi,children,smoker,region\n17,female,30.4,1,no,southeast\n39,female\n101,male,30,1,no,x\n"
    with pytest.raises(errors.ApiError) as caught:
        csvroute.score_csv(model, _source(text), 100, chunk_rows=5)
    found = [(i.line, i.field) for i in caught.value.issues]
    assert found == [(2, "age"), (3, "record"), (4, "age"), (4, "region")]


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_csv_line_endings_number_lines_alike_and_come_back_as_sent(client: TestClient, eol: str) -> None:
    lines = ["age,sex,bmi,children,smoker,region", "39,female,30.4,1,no,southeast", '52,male,34.1,3,"yes",northwest']
    good = eol.join(lines) + eol
    response = client.post("/api/v1/predict/csv", content=good, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.text.count(eol) == 3
    assert eol == "\r\n" or "\r\n" not in response.text
    bad = eol.join([*lines, "17,female,30.4,1,no,southeast"]) + eol
    response = client.post("/api/v1/predict/csv", content=bad, headers={"Content-Type": "text/csv"})
    assert error_of(response, 422, "age")["issues"][0]["line"] == 4
    assert csvroute.csv_source(bytearray(good.encode()), "text/csv").rows_bound() >= 3


def test_multipart_parts_are_offsets_into_the_body() -> None:
    body = (
        b'preamble\r\n--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\none\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="p \\"q\\".csv"\r\n'
        b"Content-Type: text/csv\r\n\r\nage\r\n39\r\n--xyz--\r\n"
    )
    parts = formdata.parse_multipart(body, 'multipart/form-data; boundary="xyz"')
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("a", None, "text/plain"),
        ("file", 'p "q".csv', "text/csv"),
    ]
    assert body[parts[1].start : parts[1].end] == b"age\r\n39"


def test_bearer_check_compares_every_key() -> None:
    keys = (b"alpha", b"beta")
    request.check_bearer("Bearer beta", keys)
    for header in (None, "Bearer", "Token beta", "Bearer gamma", "Bearer alph"):
        with pytest.raises(errors.ApiError) as caught:
            request.check_bearer(header, keys)
        assert caught.value.status == 401
        assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_unexpected_error_is_a_json_500_and_logged(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    settings = Settings(model_dir=model_dir, log_level="warning")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        monkeypatch.setattr(routes, "predict_one", broken)
        error = error_of(post_json(c, RECORD), 500)
        assert "request id" in error["message"]
        assert "boom" not in error["message"]  # internals stay in the log
        svc = c.app.state.service  # type: ignore[attr-defined]
        svc.metrics.flush()
        metrics = svc.metrics.render().decode()
    assert 'chargecast_http_requests_total{method="POST",route="/api/v1/predict",status="500"} 1.0' in metrics


def test_inputs_beyond_the_training_data_are_flagged(client: TestClient, model: Artifact) -> None:
    ranges = model.metadata["training_ranges"]
    old = RECORD | {"age": int(ranges["age"]["max"]) + 6, "children": int(ranges["children"]["max"]) + 1}
    one = client.post("/api/v1/predict", json=old).json()
    assert one["extrapolated"] == ["age", "children"]
    assert "extrapolated" not in client.post("/api/v1/predict", json=RECORD).json()
    many = client.post("/api/v1/predict", json=[RECORD, old]).json()["predictions"]
    assert "extrapolated" not in many[0]
    assert many[1]["extrapolated"] == ["age", "children"]


# -- quantiles and totals ---------------------------------------------------------------
def quantiles_of(client: TestClient, body: Any, levels: str, **params: str) -> Any:
    response = post_json(client, body, params={"quantiles": levels, **params})
    assert response.status_code == 200, response.text
    return response.json()


def level_name(level: float) -> str:
    return f"{level:.12g}"


def test_one_records_quantiles_are_the_models_and_leave_the_mean_alone(client: TestClient, model: Artifact) -> None:
    for record in (RECORD, SMOKER):
        plain = post_json(client, record).json()
        body = quantiles_of(client, record, "0.05,0.25,0.50,0.75,0.95")
        assert list(body["quantiles"]) == ["0.05", "0.25", "0.5", "0.75", "0.95"]
        assert body["charges"] == plain["charges"]  # still the mean, not the median
        assert body["interval"] == plain["interval"]
        row = encode_records([record])[0].tolist()
        want = model.quantiles_row(plain["charges"], row, [0.05, 0.25, 0.5, 0.75, 0.95])
        assert list(body["quantiles"].values()) == pytest.approx(want, rel=1e-12)
        assert body["quantiles"]["0.5"] != pytest.approx(body["charges"], rel=1e-3)  # skewed: median is not mean


def test_the_interval_is_the_quantiles_at_its_tails(client: TestClient, model: Artifact) -> None:
    lo, hi = level_name((1 - model.level) / 2), level_name((1 + model.level) / 2)
    for record in (RECORD, SMOKER, {**RECORD, "age": 60}, {**SMOKER, "bmi": 24.0}):
        body = quantiles_of(client, record, f"{lo},{hi}")
        assert (body["quantiles"][lo], body["quantiles"][hi]) == pytest.approx(
            (body["interval"]["low"], body["interval"]["high"]), rel=1e-9
        )
    many = quantiles_of(client, [RECORD, SMOKER], f"{hi},{lo}")["predictions"]
    for p in many:
        assert (p["quantiles"][lo], p["quantiles"][hi]) == pytest.approx(
            (p["interval"]["low"], p["interval"]["high"]), rel=1e-9
        )


def test_ninety_nine_levels_never_decrease_and_never_go_below_zero(client: TestClient) -> None:
    levels = [round(0.01 * i, 2) for i in range(1, 100)]
    text = ",".join(str(q) for q in reversed(levels))  # any order in, ascending out
    for record in (RECORD, SMOKER, {**RECORD, "age": 18, "bmi": 18.0, "children": 0}):
        body = quantiles_of(client, record, text)
        assert list(body["quantiles"]) == [level_name(q) for q in levels]
        values = list(body["quantiles"].values())
        assert all(v >= 0 for v in values)
        assert all(b >= a for a, b in itertools.pairwise(values))
        assert values[-1] > values[0]


def test_a_lists_quantiles_match_its_records_and_combine_with_explain(client: TestClient, model: Artifact) -> None:
    records = [RECORD, SMOKER, {**RECORD, "age": 64}]
    body = quantiles_of(client, records, "0.1,0.9", explain="true")
    charges = np.array([p["charges"] for p in body["predictions"]])
    want = model.quantiles(charges, encode_records(records), [0.1, 0.9]).tolist()
    for p, (q10, q90) in zip(body["predictions"], want, strict=True):
        assert set(p) == {"charges", "interval", "quantiles", "contributions", "baseline"}
        assert p["quantiles"] == {"0.1": pytest.approx(q10, rel=1e-12), "0.9": pytest.approx(q90, rel=1e-12)}
        assert sum(p["contributions"].values()) + p["baseline"] == pytest.approx(p["charges"], rel=1e-9)
    single = quantiles_of(client, SMOKER, "0.1,0.9")["quantiles"]
    assert body["predictions"][1]["quantiles"] == pytest.approx(single, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("0.50", ["0.5"]),
        (".5", ["0.5"]),
        ("5e-1", ["0.5"]),
        ("+0.5", ["0.5"]),
        ("1E-3", ["0.001"]),
        ("1e-05", ["0.00001"]),
        (" 0.25 , 0.1000 ", ["0.1", "0.25"]),
        ("0.975,0.025", ["0.025", "0.975"]),
        ("0.3333333333333333333333", ["0.3333333333333333"]),
    ],
)
def test_level_names_are_canonical_short_decimals(client: TestClient, text: str, keys: list[str]) -> None:
    assert list(quantiles_of(client, RECORD, text)["quantiles"]) == keys
    assert list(quantiles_of(client, [RECORD], text)["predictions"][0]["quantiles"]) == keys


@pytest.mark.parametrize(
    ("query", "rule"),
    [
        ("quantiles=", "must not have empty items"),
        ("quantiles=0.1,,0.5", "must not have empty items"),
        ("quantiles=0.1,", "must not have empty items"),
        ("quantiles=abc", "must be a decimal number"),
        ("quantiles=0.1;0.2", "must be a decimal number"),
        ("quantiles=0x1p-1", "must be a decimal number"),
        ("quantiles=0.0_5", "must be a decimal number"),
        ("quantiles=nan", "must be a finite number"),
        ("quantiles=-inf", "must be a finite number"),
        ("quantiles=Infinity", "must be a finite number"),
        ("quantiles=0", "strictly between 0 and 1"),
        ("quantiles=1", "strictly between 0 and 1"),
        ("quantiles=1.0", "strictly between 0 and 1"),
        ("quantiles=-0.5", "strictly between 0 and 1"),
        ("quantiles=1.5", "strictly between 0 and 1"),
        ("quantiles=1e-400", "strictly between 0 and 1"),
        ("quantiles=0.99999999999999999999", "strictly between 0 and 1"),
        ("quantiles=1e999", "strictly between 0 and 1"),
        ("quantiles=0.5,0.5", "must not repeat a level"),
        ("quantiles=0.5,0.50", "must not repeat a level"),
        ("quantiles=" + ",".join(str(0.0001 * i) for i in range(1, 101)), "at most 99 levels"),
    ],
)
def test_bad_quantiles_are_422_naming_the_parameter_and_rule(client: TestClient, query: str, rule: str) -> None:
    for body in (RECORD, [RECORD]):
        response = client.post(f"/api/v1/predict?{query}", content=orjson.dumps(body), headers=JSON_HEADERS)
        error = error_of(response, 422, "quantiles", rule)
        assert request.LEVELS_RULE in error["issues"][0]["rule"]  # the whole rule, whatever broke it


def test_quantiles_may_be_given_once(client: TestClient) -> None:
    query = "quantiles=0.1&quantiles=0.2"
    response = client.post(f"/api/v1/predict?{query}", content=orjson.dumps(RECORD), headers=JSON_HEADERS)
    error_of(response, 422, "quantiles", "must appear at most once")


def test_every_bad_level_is_listed(client: TestClient) -> None:
    response = post_json(client, RECORD, params={"quantiles": "0.1,x,2,0.1"})
    error = error_of(response, 422, "quantiles")
    assert [i["value"] for i in error["issues"]] == ["x", "2", "0.1"]


def test_a_list_answers_its_total(client: TestClient, model: Artifact) -> None:
    records = [{**RECORD, "age": 18 + i % 47, "children": i % 4} for i in range(150)] + [SMOKER] * 20
    body = post_json(client, records).json()
    X = encode_records(records)
    charges = model.predict(X)[0]
    total = model.total(charges, X)
    assert body["total"] == {
        "charges": total.charges,
        "interval": {"low": total.low, "high": total.high, "level": model.level},
    }
    assert total.charges == pytest.approx(sum(p["charges"] for p in body["predictions"]), rel=1e-12)
    assert total.low < total.charges < total.high
    # Deviations partly cancel: the book's interval is far narrower than its patients' added up.
    summed = sum(p["interval"]["high"] - p["interval"]["low"] for p in body["predictions"])
    assert total.high - total.low < 0.5 * summed
    small = post_json(client, [RECORD, SMOKER]).json()["total"]  # a small book is simulated
    two = model.total(model.predict(encode_records([RECORD, SMOKER]))[0], encode_records([RECORD, SMOKER]))
    assert (small["charges"], small["interval"]["low"], small["interval"]["high"]) == (two.charges, two.low, two.high)
    assert "total" not in post_json(client, RECORD).json()


# -- POST /api/v1/predict/csv/summary ---------------------------------------------------
def test_csv_summary_is_byte_for_byte_the_clis(client: TestClient, model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    n = 40_000  # more rows than one chunk of the route (32,768) and one block of the sum (16,384)
    rows = [
        {
            "age": int(rng.integers(18, 80)),
            "sex": ["female", "male"][i % 2],
            "bmi": round(float(rng.uniform(16, 50)), 2),
            "children": int(rng.integers(0, 5)),
            "smoker": "yes" if rng.random() < 0.2 else "no",
            "region": ["northeast", "northwest", "southeast", "southwest"][i % 4],
        }
        for i in range(n)
    ]
    for name, text in {"big.csv": _csv(rows), "small.csv": _csv(rows[:30]), "mid.csv": _csv(rows[:500])}.items():
        src = tmp_path / name
        src.write_text(text, encoding="utf-8")
        summary = tmp_path / f"{name}.json"
        score_file(src, tmp_path / f"{name}.scored.parquet", Artifact.load(model_dir), summary=summary)
        response = client.post("/api/v1/predict/csv/summary", content=text, headers={"Content-Type": "text/csv"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.content == summary.read_bytes(), name
        body = response.json()
        assert body["rows"] == text.count("\n") - 1
        assert body["total"]["interval"]["low"] < body["total"]["charges"] < body["total"]["interval"]["high"]


def test_csv_summary_takes_an_upload_and_refuses_what_the_csv_route_refuses(
    client: TestClient, model: Artifact
) -> None:
    text = _csv([RECORD, SMOKER])
    route = "/api/v1/predict/csv/summary"
    upload = client.post(route, files={"file": ("patients.csv", text.encode(), "text/csv")})
    X = encode_records([RECORD, SMOKER])
    total = model.total(model.predict(X)[0], X)
    assert upload.json() == {
        "rows": 2,
        "total": {"charges": total.charges, "interval": {"low": total.low, "high": total.high, "level": model.level}},
    }
    bad = _csv([RECORD, {**RECORD, "age": 17}])
    error = error_of(client.post(route, content=bad, headers={"Content-Type": "text/csv"}), 422, "age")
    assert error["issues"][0]["line"] == 3  # the header is line 1
    error_of(client.post(route, content=text, headers={"Content-Type": "application/json"}), 415, "Content-Type")
    error_of(
        client.post(f"{route}?quantiles=0.5", content=text, headers={"Content-Type": "text/csv"}), 422, "quantiles"
    )
    error_of(client.post(route, content="", headers={"Content-Type": "text/csv"}), 422, "file", "has no data rows")
    error_of(client.post(route, content="age\n", headers={"Content-Type": "text/csv"}), 422, "sex", "required")
