"""Actuals (API and file), realised performance, the monitor commands and the gauges, on the real
stores: SQLite, PostgreSQL (the session's real server, tests/postgres.py) and the JSON Lines files."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from chargecast.audit.patient import patient_hash
from chargecast.audit.store import Actual, Forecast, Store, open_store
from chargecast.cli import main
from chargecast.model.artifact import Artifact
from chargecast.monitor import actuals, performance
from chargecast.monitor.window import recent
from chargecast.schema import ValidationError, decode
from chargecast.settings import Settings
from chargecast.training.train import TrainResult
from test_app import KEY, error_of, post_json, ready_client

PATIENT_KEY = "patient-key-0123456789abcdef"
START = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


def forecasts(
    X: np.ndarray, model: Artifact, n: int, *, start: datetime = START, step: timedelta = timedelta(hours=6)
) -> list[Forecast]:
    """``n`` logged forecasts of rows of X, one every ``step``, patient refs p0, p1, ..."""
    charges, low, high = model.predict(X[:n])
    key = PATIENT_KEY.encode()
    return [
        Forecast(
            f"req-{i}", 0, start + i * step, model.version, "0" * 64, "/api/v1/predict", None,
            hmac.new(key, f"p{i}".encode(), hashlib.sha256).hexdigest(), decode(X[i].tolist()),
            float(charges[i]), float(low[i]), float(high[i]), model.level, None, (),
        )
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql", "file"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    if request.param == "file":
        return f"file:///{tmp_path / 'audit'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """For the tests of figures and commands, where the store does not matter."""
    return f"sqlite:///{tmp_path / 'audit.sqlite3'}"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    s.migrate()
    yield s
    s.close()


# -- actuals ---------------------------------------------------------------------------
def test_the_patient_hash_is_an_hmac_of_the_reference() -> None:
    expected = hmac.new(b"k" * 16, "MRN-00042-é".encode(), hashlib.sha256).hexdigest()
    assert patient_hash(b"k" * 16, "MRN-00042-é") == expected


@pytest.mark.parametrize(
    ("payload", "field", "rule"),
    [
        ({"request_id": "a", "row": 0, "charges": -1}, "charges", "finite number >= 0"),
        ({"request_id": "a", "row": 0, "charges": "12"}, "charges", "finite number >= 0"),
        ({"request_id": "a", "row": 0, "charges": True}, "charges", "finite number >= 0"),
        ({"request_id": "a", "row": -1, "charges": 1}, "row", "whole number from 0"),
        ({"request_id": "a", "row": 1.5, "charges": 1}, "row", "whole number from 0"),
        ({"request_id": "a", "row": actuals.MAX_ROW + 1, "charges": 1}, "row", "whole number from 0 to 10,000,000"),
        ({"request_id": "a", "row": 0, "charges": float("inf")}, "charges", "finite number >= 0"),
        ({"request_id": "a", "row": 0}, "charges", "finite number >= 0"),
        ({"patient_ref": "", "charges": 1}, "patient_ref", "non-empty string"),
        ({"patient_ref": 42, "charges": 1}, "patient_ref", "non-empty string"),
        ("text", "body", "must be an object"),
        ({"request_id": "a" * 129, "row": 0, "charges": 1}, "request_id", "1 to 128"),
        ({"request_id": "a b", "row": 0, "charges": 1}, "request_id", "1 to 128"),
        ({"row": 0, "charges": 1}, "request_id", "is required"),
        ({"request_id": "a", "charges": 1}, "row", "is required"),
        ({"request_id": "a", "row": 0, "charges": 1, "cost": 2}, "cost", "is not a known field"),
        ({"patient_ref": "x" * 129, "charges": 1}, "patient_ref", "at most 128"),
        ({"patient_ref": "x", "request_id": "a", "charges": 1}, "patient_ref", "must not come with"),
        ([{"request_id": "a", "row": 0, "charges": 1}, 7], "[1]", "must be an object"),
        ([], "body", "at least one"),
        ([{"request_id": "a", "row": 0, "charges": 1}] * (actuals.MAX_ACTUALS + 1), "body", "at most 10,000"),
    ],
)
def test_bad_actuals_are_refused_naming_field_and_rule(payload: Any, field: str, rule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        actuals.check_payload(payload)
    assert any(i.field == field and rule in i.rule for i in caught.value.issues), caught.value.issues


@pytest.fixture
def served(model_dir: Path, store_url: str) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=model_dir, log_level="warning", audit_url=store_url,
        audit_patient_key=PATIENT_KEY, api_keys=KEY, monitor_seconds=0.05,  # type: ignore[arg-type]
    )  # fmt: skip
    with ready_client(settings) as client:
        yield client


AUTH = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}


def test_actuals_api_is_idempotent_and_resolves_patients(
    served: TestClient, store: Store, model: Artifact, trained: TrainResult
) -> None:
    store.write(forecasts(trained.X_test, model, 3))
    one = {"request_id": "req-0", "row": 0, "charges": 1234.5}
    assert post_json(served, one, "/api/v1/actuals").status_code == 401  # the same gate as forecasts
    answer = post_json(served, [one, {"patient_ref": "p1", "charges": 99.0}], "/api/v1/actuals", headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"added": 2, "known": 0}
    again = post_json(served, [one, {"patient_ref": "p1", "charges": 5.0}], "/api/v1/actuals", headers=AUTH)
    assert again.json() == {"added": 0, "known": 2}  # a repeat changes nothing, the first value wins
    paid = {f.request_id: a for f, a in store.realised()}
    assert paid == {"req-0": 1234.5, "req-1": 99.0}
    unknown = post_json(served, [one, {"patient_ref": "nobody", "charges": 1}], "/api/v1/actuals", headers=AUTH)
    error_of(unknown, 422, "[1].patient_ref", "matches no logged forecast")
    assert "nobody" not in unknown.text  # a patient reference is never echoed
    error_of(
        post_json(served, {"request_id": "r", "row": 0, "charges": -3}, "/api/v1/actuals", headers=AUTH), 422, "charges"
    )
    later = post_json(
        served, {"request_id": "not-yet-logged", "row": 4, "charges": 10}, "/api/v1/actuals", headers=AUTH
    )
    assert later.json() == {"added": 1, "known": 0}  # its forecast may still be in a worker's queue


def test_actuals_with_the_audit_log_off_are_a_503(model_dir: Path) -> None:
    with ready_client(Settings(model_dir=model_dir, log_level="warning")) as client:
        error = error_of(
            post_json(client, {"request_id": "a", "row": 0, "charges": 1}, "/api/v1/actuals"), 503, "audit"
        )
        assert "audit log is off" in error["message"]


def test_the_gauges_watch_the_recent_window(
    served: TestClient, store: Store, model: Artifact, trained: TrainResult
) -> None:
    now = datetime.now(UTC)
    logged = forecasts(trained.X_test, model, 40, start=now - timedelta(hours=1), step=timedelta(seconds=1))
    store.write(logged)
    store.add_actuals([Actual(f.request_id, 0, f.charges, now) for f in logged[:10]])  # all inside
    store.add_actuals([Actual(logged[10].request_id, 0, logged[10].high + 1, now)])  # one above
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    text = ""
    while datetime.now(UTC) < deadline:
        text = served.app.state.service.metrics.render().decode()  # type: ignore[attr-defined]
        if "chargecast_drift_window_records 40.0" in text and "chargecast_actuals_window_records 11.0" in text:
            break
        time.sleep(0.02)
    assert "chargecast_drift_window_records 40.0" in text, text
    assert f"chargecast_actuals_coverage {10 / 11!r}" in text
    assert 'chargecast_drift_threshold{feature="age",statistic="wasserstein"} 0.1' in text
    assert 'chargecast_drift_score{feature="region",statistic="jensen_shannon"}' in text


# -- realised performance --------------------------------------------------------------
def test_a_stream_with_known_bias_and_coverage_is_reported_exactly(model: Artifact, trained: TrainResult) -> None:
    """1,000 forecasts: 5% of actuals below low, 5% above high, the rest inside, totals 5% under."""
    logged = forecasts(trained.X_test, model, len(trained.X_test))
    logged = (logged * 4)[:1000]
    rng = np.random.default_rng(3)
    outside = rng.permutation(1000)[:100]
    pairs = []
    for i, f in enumerate(logged):
        inside = f.low + (f.high - f.low) * 0.5
        actual = f.low * 0.5 if i in outside[:50] else (f.high * 1.5 if i in outside[50:] else inside)
        pairs.append((f, actual))
    # scale every actual so the forecasts are exactly 5% high in total, keeping who is inside
    total_f = sum(f.charges for f, _ in pairs)
    total_a = sum(a for _, a in pairs)
    realised = performance.collect(pairs)
    tables = performance.breakdown(realised)
    overall = tables["overall"][0][1]
    assert overall.records == 1000
    assert overall.coverage == pytest.approx(0.9)
    assert overall.below == pytest.approx(0.05)
    assert overall.above == pytest.approx(0.05)
    assert overall.bias == pytest.approx((total_f - total_a) / total_a)
    # and a +5% bias by construction: actuals = forecast / 1.05
    biased = performance.collect([(f, f.charges / 1.05) for f, _ in pairs])
    assert performance.figures(biased).bias == pytest.approx(0.05)
    assert performance.figures(biased).mae == pytest.approx(np.mean([f.charges * (1 - 1 / 1.05) for f, _ in pairs]))
    groups = dict(tables["evaluation group"])
    assert groups["smoker"].records + groups["non-smoker"].records == 1000
    assert sum(g.records for g in (groups["age 18-29"], groups["age 30-44"], groups["age 45+"])) == 1000
    assert sum(f.records for _, f in tables["interval group"]) == 1000
    assert sum(f.records for _, f in tables["month"]) == 1000
    assert [v for v, _ in tables["model version"]] == [model.version]


# -- the commands ----------------------------------------------------------------------
def test_monitor_drift_exit_codes_and_report(
    store: Store, store_url: str, model: Artifact, model_dir: Path, trained: TrainResult, tmp_path: Path, capsys: Any
) -> None:
    base = ["monitor", "drift", "--audit", store_url, "--model", str(model_dir), "--out", str(tmp_path / "r")]
    assert main(base) == 2  # an empty window
    assert "the window is empty" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    X = trained.X_train[rng.integers(0, len(trained.X_train), 2000)]
    store.write(forecasts(X, model, 2000, step=timedelta(minutes=1)))
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "no drift" in out
    assert "age       wasserstein" in out
    assert (tmp_path / "r" / "drift.md").is_file()
    assert (tmp_path / "r" / "drift_age.png").stat().st_size > 1000
    assert main([*base, "--threshold", "age=0.001"]) == 1
    assert "drift in age" in capsys.readouterr().out
    assert main([*base, "--threshold", "height=0.1"]) == 2
    assert "unknown feature 'height'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_date:
        main([*base, "--since", "yesterday"])
    assert bad_date.value.code == 2
    assert main([*base, "--since", "2030-01-01"]) == 2  # no records then


def test_monitor_drift_on_a_model_without_reference_says_retrain(
    store: Store, store_url: str, model: Artifact, model_dir: Path, trained: TrainResult, tmp_path: Path, capsys: Any
) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    meta = json.loads((old / "metadata.json").read_text())
    del meta["reference"]
    (old / "metadata.json").write_text(json.dumps(meta))
    store.write(forecasts(trained.X_test, model, 5))
    assert main(["monitor", "drift", "--audit", store_url, "--model", str(old), "--out", str(tmp_path / "r")]) == 2
    assert "this model has no training reference; retrain it" in capsys.readouterr().err


def test_monitor_performance_loads_actuals_files_first(
    store: Store, store_url: str, model: Artifact, trained: TrainResult, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("CHARGECAST_AUDIT_PATIENT_KEY", PATIENT_KEY)
    from chargecast.settings import get_settings

    get_settings.cache_clear()
    logged = forecasts(trained.X_test, model, 4)
    store.write(logged)
    csv = tmp_path / "a.csv"
    csv.write_text(f"request_id,row,patient_ref,charges\nreq-0,0,,{logged[0].charges}\n,,p1,{logged[1].high + 1}\n")
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps({"request_id": "req-2", "row": 0, "charges": logged[2].charges}) + "\n")
    out = ["--audit", store_url, "--out", str(tmp_path / "p")]
    assert main(["monitor", "performance", *out, "--actuals", str(csv)]) == 0
    assert main(["monitor", "performance", *out, "--actuals", str(jsonl)]) == 0
    text = capsys.readouterr().out
    assert "2 added, 0 already known" in text
    assert "3 realised forecasts" in text
    assert "coverage 66.7%" in text
    report = (tmp_path / "p" / "performance.md").read_text()
    assert "## By evaluation group" in report
    assert "## By month" in report
    assert "2026-11" in report
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,row,charges\nreq-0,0,-5\n")
    assert main(["monitor", "performance", *out, "--actuals", str(bad)]) == 2
    assert "line 2, charges: must be a finite number >= 0" in capsys.readouterr().err
    get_settings.cache_clear()


def test_recent_window_caps_the_records(store: Store, model: Artifact, trained: TrainResult) -> None:
    assert model.reference is not None
    now = datetime.now(UTC)
    store.write(forecasts(trained.X_test, model, 50, start=now - timedelta(hours=30), step=timedelta(hours=1)))
    found = recent(store, model.reference, now, 24, 10, {})
    assert found.records == 10  # the last 24 h hold 24 of the 50; the newest 10 are read
    assert found.actuals == 0


def test_a_served_forecast_gets_its_actual_by_request_id_and_by_patient(served: TestClient, store: Store) -> None:
    """End to end: the audit log records the forecast, the actuals join it by either key."""
    from test_app import RECORD, SMOKER

    first = post_json(served, RECORD, headers=AUTH)
    second = post_json(served, {**SMOKER, "patient_ref": "MRN-7"}, headers=AUTH)
    assert first.status_code == second.status_code == 200
    request_id = first.headers["x-request-id"]
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while len(list(store.forecasts())) < 2:  # the writer thread delivers within its flush interval
        assert datetime.now(UTC) < deadline, "the audit log did not record the forecasts"
        time.sleep(0.02)
    body = [{"request_id": request_id, "row": 0, "charges": 5000.0}, {"patient_ref": "MRN-7", "charges": 40000.0}]
    answer = post_json(served, body, "/api/v1/actuals", headers=AUTH)
    assert answer.json() == {"added": 2, "known": 0}, answer.text
    joined = {f.inputs["smoker"]: a for f, a in store.realised()}
    assert joined == {"no": 5000.0, "yes": 40000.0}


def test_the_minted_id_joins_an_actual_when_the_client_sent_its_own_request_id(
    served: TestClient, store: Store
) -> None:
    """Clients may reuse their X-Request-IDs, so the audit log keys records by the id the server
    minted; each response hands it back in X-Audit-Request-ID (documented in the OpenAPI)."""
    from test_app import RECORD

    headers = {**AUTH, "X-Request-ID": "client-batch-1"}
    first, second = (post_json(served, [RECORD, RECORD], headers=headers) for _ in range(2))
    assert first.headers["x-request-id"] == second.headers["x-request-id"] == "client-batch-1"  # echoed as sent
    minted = first.headers["x-audit-request-id"]
    assert minted != second.headers["x-audit-request-id"]
    deadline = time.monotonic() + 20
    while len(list(store.forecasts())) < 4:
        assert time.monotonic() < deadline, "the audit log did not record the forecasts"
        time.sleep(0.02)
    logged = {(f.request_id, f.row): f.client_request_id for f in store.forecasts()}
    assert logged[(minted, 1)] == "client-batch-1"
    answer = post_json(served, {"request_id": minted, "row": 1, "charges": 777.0}, "/api/v1/actuals", headers=AUTH)
    assert answer.json() == {"added": 1, "known": 0}, answer.text
    assert [(f.request_id, f.row, a) for f, a in store.realised()] == [(minted, 1, 777.0)]
    document = served.get("/openapi.json").json()
    assert "X-Audit-Request-ID" in document["paths"]["/api/v1/predict"]["post"]["responses"]["200"]["headers"]


def test_without_the_audit_log_no_audit_id_is_sent(model_dir: Path) -> None:
    from test_app import RECORD

    with ready_client(Settings(model_dir=model_dir, log_level="warning")) as client:
        response = post_json(client, RECORD)
    assert response.status_code == 200
    assert "x-audit-request-id" not in response.headers


def test_actuals_refuse_what_they_cannot_store_with_a_4xx(served: TestClient, model_dir: Path, sqlite_url: str) -> None:
    big = [{"request_id": "r" * 128, "row": 0, "charges": 1.0}] * 12_000  # past the 1 MiB body limit
    error_of(post_json(served, big, "/api/v1/actuals", headers=AUTH), 413, "body")
    error_of(post_json(served, b"[{", "/api/v1/actuals", headers=AUTH), 400, "body")  # unreadable: not a 503
    error_of(post_json(served, {"charges": 1}, "/api/v1/actuals", headers=AUTH), 422, "request_id", "is required")
    plain = {"Authorization": f"Bearer {KEY}", "Content-Type": "text/csv"}
    assert post_json(served, {"charges": 1}, "/api/v1/actuals", headers=plain).status_code == 415
    settings = Settings(model_dir=model_dir, log_level="warning", audit_url=sqlite_url)
    with ready_client(settings) as keyless:  # no patient key: a patient_ref cannot be looked up
        error = error_of(post_json(keyless, {"patient_ref": "MRN-1", "charges": 1}, "/api/v1/actuals"), 422)
    assert error["issues"] == [{"field": "patient_ref", "rule": actuals.NO_KEY_RULE}], (
        "named, with its rule, never the reference"
    )


def test_actuals_while_the_database_is_down_are_a_503_to_retry(
    postgres: object, postgres_url: str, model_dir: Path
) -> None:
    from postgres import Postgres

    assert isinstance(postgres, Postgres)
    settings = Settings(model_dir=model_dir, log_level="warning", audit_url=postgres_url)
    one = {"request_id": "req-0", "row": 0, "charges": 10.0}
    with ready_client(settings) as client:
        assert post_json(client, one, "/api/v1/actuals").json() == {"added": 1, "known": 0}
        postgres.stop("immediate")
        try:
            down = post_json(client, one, "/api/v1/actuals")
            error_of(down, 503, "audit", "is unavailable")
            assert down.headers["retry-after"] == "5"
        finally:
            postgres.start()
        assert post_json(client, one, "/api/v1/actuals").json() == {"added": 0, "known": 1}  # reconnected


def test_coverage_is_absent_not_zero_while_the_window_has_no_actuals(
    served: TestClient, store: Store, model: Artifact, trained: TrainResult
) -> None:
    service = served.app.state.service  # type: ignore[attr-defined]
    assert "\nchargecast_actuals_coverage " not in service.metrics.render().decode()  # before any window
    now = datetime.now(UTC)
    store.write(forecasts(trained.X_test, model, 5, start=now - timedelta(minutes=5), step=timedelta(seconds=1)))
    deadline = time.monotonic() + 20
    text = ""
    while "chargecast_drift_window_records 5.0" not in text:
        assert time.monotonic() < deadline, text
        time.sleep(0.02)
        text = service.metrics.render().decode()
    assert "chargecast_actuals_window_records 0.0" in text
    assert "\nchargecast_actuals_coverage " not in text  # no sample at all: no rule compares it, no panel shows 0%
    assert "# HELP chargecast_actuals_coverage" in text  # the family is still described


def test_a_cli_logged_patient_gets_its_actual_by_patient_ref(
    sqlite_url: str, model_dir: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """predict --audit and the actuals hash a patient reference with the same function and key."""
    from chargecast.settings import get_settings

    monkeypatch.setenv("CHARGECAST_AUDIT_PATIENT_KEY", PATIENT_KEY)
    get_settings.cache_clear()
    src = tmp_path / "in.csv"
    src.write_text("patient_ref,age,sex,bmi,children,smoker,region\nMRN-é1,39,female,30.4,1,no,southeast\n")
    assert (
        main(["predict", str(src), "-o", str(tmp_path / "out.csv"), "--model", str(model_dir), "--audit", sqlite_url])
        == 0
    )
    paid = tmp_path / "paid.csv"
    paid.write_text("patient_ref,charges\nMRN-é1,4321\n")
    out = ["--audit", sqlite_url, "--out", str(tmp_path / "p")]
    assert main(["monitor", "performance", *out, "--actuals", str(paid)]) == 0
    assert "1 added, 0 already known" in capsys.readouterr().out
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("monitor_seconds", 0, "greater than 0"),
        ("monitor_seconds", 86_401, "less than or equal to 86400"),
        ("monitor_window_hours", 0, "greater than 0"),
        ("monitor_window_hours", 24 * 366 + 1, "less than or equal to 8784"),
        ("monitor_max_records", 99, "greater than or equal to 100"),
        ("monitor_max_records", 1_000_001, "less than or equal to 1000000"),
        ("drift_thresholds", "height=0.1", "unknown feature 'height'"),
        ("drift_thresholds", "age=0", "must be a finite number > 0"),
    ],
)
def test_monitoring_settings_past_their_limits_are_refused(setting: str, value: Any, message: str) -> None:
    from pydantic import ValidationError as SettingsError

    with pytest.raises(SettingsError, match=message) as caught:
        Settings(**{setting: value})
    assert caught.value.errors()[0]["loc"] == (setting,)


def test_a_bad_drift_threshold_setting_is_one_line_naming_the_variable(capsys: Any, monkeypatch: Any) -> None:
    from chargecast.settings import get_settings

    monkeypatch.setenv("CHARGECAST_DRIFT_THRESHOLDS", "bmi=fast")
    get_settings.cache_clear()
    try:
        assert main(["monitor", "drift", "--audit", "sqlite:////nonexistent/x.sqlite3"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "CHARGECAST_DRIFT_THRESHOLDS" in err
    assert "the value must be a finite number > 0" in err
    assert "Traceback" not in err


def test_monitor_commands_fail_in_one_line_on_bad_paths(
    store: Store, store_url: str, model: Artifact, model_dir: Path, trained: TrainResult, tmp_path: Path, capsys: Any
) -> None:
    store.write(forecasts(trained.X_test, model, 3))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    drift_cmd = ["monitor", "drift", "--audit", store_url, "--model", str(model_dir)]
    assert main([*drift_cmd, "--out", str(blocker / "r")]) == 2
    assert "--out" in capsys.readouterr().err
    perf = ["monitor", "performance", "--audit", store_url, "--out", str(tmp_path / "p")]
    assert main([*perf, "--actuals", str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(perf) == 2  # forecasts, but none with an actual
    assert "no forecasts with actual charges" in capsys.readouterr().err
    assert main(["monitor", "drift", "--audit", "sqlite:///" + str(blocker / "x.sqlite3")]) == 2
    err = capsys.readouterr().err
    assert "cannot use the audit log" in err
    assert "Traceback" not in err
    assert main(["monitor", "drift", "--audit", store_url, "--since", "2027-01-02", "--until", "2027-01-01"]) == 2
    assert "must be before --until" in capsys.readouterr().err
