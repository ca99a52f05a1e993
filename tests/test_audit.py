"""The audit log in one process: every route that forecasts writes what it answered; ids,
callers and patient references as promised; the spool when the store is down, and its limit."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from chargecast.audit.store import Forecast, as_row, from_row, open_store
from chargecast.audit.writer import Spool, Writer, read_spool
from chargecast.serving.app import create_app
from chargecast.settings import Settings

RECORD: dict[str, Any] = {"age": 39, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "southeast"}
OLD = {"age": 99, "sex": "male", "bmi": 60.0, "children": 0, "smoker": "yes", "region": "northwest"}  # extrapolated
PATIENT_KEY = "a-patient-key-of-32-bytes-000000"
JSON = {"Content-Type": "application/json"}


@contextmanager
def audited(tmp_path: Path, model_dir: Path, **extra: Any) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=model_dir,
        log_level="warning",
        audit_url=extra.pop("audit_url", f"sqlite:///{tmp_path}/audit.sqlite3"),
        audit_spool_dir=tmp_path / "spool",
        audit_flush_seconds=0.05,
        **extra,
    )
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield client  # leaving it runs the lifespan's shutdown: the queue is flushed


def stored(tmp_path: Path) -> list[Forecast]:
    store = open_store(f"sqlite:///{tmp_path}/audit.sqlite3")
    try:
        return list(store.forecasts())
    finally:
        store.close()


def test_every_forecasting_route_writes_what_it_answered(tmp_path: Path, model_dir: Path) -> None:
    answers: dict[str, Any] = {}
    with audited(tmp_path, model_dir) as client:
        one = client.post("/api/v1/predict?quantiles=0.1,0.5", json=RECORD, headers={"X-Request-ID": "mine"})
        answers["one"] = one.json()
        answers["many"] = client.post("/api/v1/predict", json=[RECORD, OLD]).json()
        answers["bare"] = client.post("/predict_api", json=RECORD).json()
        form = {k: str(v) for k, v in RECORD.items()}
        assert client.post("/", data=form).status_code == 200
        assert client.post("/predict", data=form).status_code == 200
        csv = "age,sex,bmi,children,smoker,region,note\n39,female,30.4,1,no,southeast,x\n99,male,60,0,yes,northwest,y\n"
        files = {"file": ("p.csv", csv.encode(), "text/csv")}
        assert client.post("/api/v1/predict/csv", files=files).status_code == 200
        assert client.post("/api/v1/predict/csv/summary", files=files).status_code == 200
        assert client.post("/api/v1/predict", json={**RECORD, "age": 5}).status_code == 422  # refused: not audited
    records = stored(tmp_path)
    routes = [r.route for r in records]
    assert (
        routes
        == ["/api/v1/predict"] * 3
        + ["/predict_api", "/", "/predict"]
        + ["/api/v1/predict/csv"] * 2
        + ["/api/v1/predict/csv/summary"] * 2
    )
    first = records[0]
    assert first.client_request_id == "mine"
    assert first.request_id != "mine"
    assert len(first.request_id.split("-")[0]) == 16
    assert (first.charges, first.low, first.high) == (
        answers["one"]["charges"],
        answers["one"]["interval"]["low"],
        answers["one"]["interval"]["high"],
    )
    assert first.quantiles == answers["one"]["quantiles"]
    assert first.inputs == {k: float(v) if isinstance(v, int | float) else v for k, v in RECORD.items()}
    assert len(first.model_digest) == 64
    assert first.model_digest == hashlib.sha256((model_dir / "metadata.json").read_bytes()).hexdigest()
    many = [r for r in records if r.request_id == records[1].request_id]
    assert [r.row for r in many] == [0, 1]
    assert many[1].extrapolated == tuple(answers["many"]["predictions"][1]["extrapolated"])
    assert records[3].charges == answers["bare"]
    assert list(records[4].quantiles or ()) == ["0.5"]
    csv_rows = [r for r in records if r.route == "/api/v1/predict/csv"]
    assert csv_rows[1].extrapolated  # age 99, bmi 60


def test_reused_client_ids_never_collapse(tmp_path: Path, model_dir: Path) -> None:
    with audited(tmp_path, model_dir) as client:
        for _ in range(3):
            response = client.post("/api/v1/predict", json=RECORD, headers={"X-Request-ID": "same"})
            assert response.headers["x-request-id"] == "same"  # still echoed
    records = stored(tmp_path)
    assert len(records) == 3
    assert len({r.request_id for r in records}) == 3
    assert {r.client_request_id for r in records} == {"same"}


def test_patient_refs_are_stored_as_hmac_only(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with audited(tmp_path, model_dir, audit_patient_key=PATIENT_KEY) as client:
        assert client.post("/api/v1/predict", json={**RECORD, "patient_ref": "MRN-12345"}).status_code == 200
        batch = [{**RECORD, "patient_ref": "MRN-1"}, RECORD]
        assert client.post("/api/v1/predict", json=batch).status_code == 200
        csv = "age,sex,bmi,children,smoker,region,patient_ref\n39,female,30.4,1,no,southeast,MRN-9\n"
        assert client.post("/api/v1/predict/csv", content=csv, headers={"Content-Type": "text/csv"}).status_code == 200
        too_long = client.post("/api/v1/predict", json={**RECORD, "patient_ref": "x" * 129})
        assert too_long.status_code == 422
        assert "patient_ref: must be a string of at most 128 characters" in too_long.text
    expected = {
        ref: hmac.new(PATIENT_KEY.encode(), ref.encode(), hashlib.sha256).hexdigest()
        for ref in ("MRN-12345", "MRN-1", "MRN-9")
    }
    assert [r.patient for r in stored(tmp_path)] == [expected["MRN-12345"], expected["MRN-1"], None, expected["MRN-9"]]
    raw = (tmp_path / "audit.sqlite3").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("audit*"))
    assert b"MRN-" not in raw
    assert "MRN-" not in caplog.text


def test_a_patient_ref_without_a_key_is_a_422_only_with_the_audit_on(tmp_path: Path, model_dir: Path) -> None:
    with audited(tmp_path, model_dir) as client:
        refused = client.post("/api/v1/predict", json={**RECORD, "patient_ref": "MRN-1"})
        assert refused.status_code == 422
        issue = refused.json()["error"]["issues"][0]
        assert issue["field"] == "patient_ref"
        assert "CHARGECAST_AUDIT_PATIENT_KEY" in issue["rule"]
        csv = "age,sex,bmi,children,smoker,region,patient_ref\n39,female,30.4,1,no,southeast,MRN-9\n"
        assert client.post("/api/v1/predict/csv", content=csv, headers={"Content-Type": "text/csv"}).status_code == 422
    with TestClient(create_app(Settings(model_dir=model_dir, log_level="warning"))) as client:
        assert client.post("/api/v1/predict", json={**RECORD, "patient_ref": "MRN-1"}).status_code == 200  # ignored


def test_the_caller_label_is_recorded_and_the_key_never(tmp_path: Path, model_dir: Path) -> None:
    labelled, bare = "billing:Zx9-secret-token-one", "plain-secret-token-two"
    with audited(tmp_path, model_dir, api_keys=f"{labelled} {bare}") as client:
        for key in ("Zx9-secret-token-one", bare):
            ok = client.post("/api/v1/predict", json=RECORD, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert (
            client.post("/api/v1/predict", json=RECORD, headers={"Authorization": "Bearer billing"}).status_code == 401
        )
    unlabelled = "key-" + hashlib.sha256(bare.encode()).hexdigest()[:8]
    assert [r.caller for r in stored(tmp_path)] == ["billing", unlabelled]
    assert b"secret-token" not in (tmp_path / "audit.sqlite3").read_bytes()


def test_bad_audit_settings_name_the_variable() -> None:
    with pytest.raises(ValueError, match="audit_url"):
        Settings(audit_url="mysql://db/x")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Settings(audit_patient_key="short")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label of 1-64"):
        Settings(api_keys="b@d:key")  # type: ignore[arg-type]


# -- the writer on its own: spool, order, limit ---------------------------------------------
class FlakyStore:
    """A store that fails while ``down``; remembers what it got, absorbing duplicates."""

    def __init__(self) -> None:
        self.down = False
        self.rows: dict[tuple[str, int], Forecast] = {}
        self.order: list[tuple[str, int]] = []

    def write_rows(self, rows: Any) -> int:
        if self.down:
            raise ConnectionError("down")
        added = 0
        for row in rows:
            f = from_row(row)
            if (f.request_id, f.row) not in self.rows:
                self.rows[(f.request_id, f.row)] = f
                self.order.append((f.request_id, f.row))
                added += 1
        return added

    def close(self) -> None:
        pass


def _forecast(i: int) -> Forecast:
    from test_audit_store import forecast

    return forecast(f"r{i:05d}", 0, i)


def _writer(tmp_path: Path, store: FlakyStore, **kw: Any) -> Writer:
    opened: Any = store
    spool = Spool(tmp_path / "spool", kw.pop("spool_max_bytes", 1 << 20))
    return Writer(lambda: opened, lambda i: [as_row(_forecast(i))], spool, kw.pop("queue_size", 1000), 50, 0.01)


def test_records_spool_while_the_store_is_down_and_arrive_in_order(tmp_path: Path) -> None:
    store = FlakyStore()
    writer = _writer(tmp_path, store)
    for i in range(10):
        writer.submit(i)
    writer.cycle()
    store.down = True
    for i in range(10, 30):
        writer.submit(i)
    writer.cycle()
    assert writer.sink_up == 0
    assert writer.backlog() == 20
    assert len(list((tmp_path / "spool").glob("spool-*.jsonl"))) == 1
    for i in range(30, 40):
        writer.submit(i)
    writer.cycle()  # still down: behind the spool
    store.down = False
    for i in range(40, 45):
        writer.submit(i)
    writer.cycle()
    assert store.order == [(f"r{i:05d}", 0) for i in range(45)]  # in order, no duplicates
    assert writer.backlog() == 0
    assert writer.delivered == 45
    assert not list((tmp_path / "spool").glob("spool-*"))


def test_a_spool_is_redelivered_whole_and_twice_without_duplicates(tmp_path: Path) -> None:
    store = FlakyStore()
    dead = _writer(tmp_path, store)
    store.down = True
    for i in range(5):
        dead.submit(i)
    dead.cycle()
    path = next((tmp_path / "spool").glob("spool-*.jsonl"))
    dead.spool.close()  # the worker died: its lock is gone, its file stays
    copy = path.with_name("spool-copy-0.jsonl")  # and a second copy, as if delivered but not deleted
    copy.write_bytes(path.read_bytes())
    store.down = False
    heir = _writer(tmp_path, store)
    heir.cycle()
    assert store.order == [(f"r{i:05d}", 0) for i in range(5)]
    assert not list((tmp_path / "spool").glob("spool-*"))
    assert heir.delivered == 10  # both files went in; the store absorbed the second


def test_a_spool_is_locked_before_any_scan_can_find_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Created under a hidden name, locked, then renamed: a worker scanning for orphans can
    never lock (and deliver, and delete) a spool its owner is about to append to."""
    import fcntl
    import os

    spool = Spool(tmp_path, 1 << 20)
    seen: list[str] = []
    rename = os.rename

    def checked(src: Any, dst: Any) -> None:
        assert not list(tmp_path.glob("spool-*.jsonl"))  # nothing a scan would match yet
        with open(src, "rb") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("unlocked")
            except BlockingIOError:
                seen.append("locked")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", checked)
    assert spool.append([as_row(_forecast(1))])
    assert seen == ["locked"]
    own = spool.own()
    assert own is not None
    assert [p.name for p in tmp_path.glob("spool-*.jsonl")] == [own.name]
    assert spool.append([as_row(_forecast(2))])  # the same file, appended to
    assert [r[0] for r in read_spool(own)] == ["r00001", "r00002"]


def test_a_live_workers_spool_is_never_taken(tmp_path: Path) -> None:
    store = FlakyStore()
    live = _writer(tmp_path, store)
    store.down = True
    live.submit(1)
    live.cycle()
    store.down = False
    other = _writer(tmp_path, store)
    other.cycle()
    assert store.order == []  # locked by its owner
    live.cycle()
    assert store.order == [("r00001", 0)]


def test_past_the_spool_limit_records_are_dropped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore()
    store.down = True
    one = len(orjson.dumps(_forecast(0).request_id)) + 600  # about one record's line
    writer = _writer(tmp_path, store, spool_max_bytes=3 * one)
    with caplog.at_level(logging.ERROR, logger="chargecast.audit"):
        for i in range(10):
            writer.submit(i)
            writer.cycle()
    on_disk = sum(p.stat().st_size for p in (tmp_path / "spool").glob("spool-*"))
    assert on_disk <= 3 * one
    assert writer.dropped == 10 - len(read_spool(next((tmp_path / "spool").glob("spool-*"))))
    assert writer.dropped > 0
    dropped = [r for r in caplog.records if r.message == "audit records dropped"]
    assert dropped
    assert all(r.levelno == logging.ERROR for r in dropped)
    assert "r0000" not in caplog.text  # counts only, never a record


def test_a_full_queue_spools_at_once_rather_than_drop(tmp_path: Path) -> None:
    store = FlakyStore()
    writer = _writer(tmp_path, store, queue_size=3)
    for i in range(5):
        writer.submit(i)
    assert writer.dropped == 0
    assert writer.backlog() == 5  # three queued, two spooled by the requests themselves
    writer.cycle()
    assert sorted(store.order) == [(f"r{i:05d}", 0) for i in range(5)]


def test_close_spools_what_the_store_cannot_take(tmp_path: Path) -> None:
    store = FlakyStore()
    writer = _writer(tmp_path, store)
    writer.start()
    store.down = True
    for i in range(7):
        writer.submit(i)
    writer.close(1.0)
    spooled = [row[0] for p in (tmp_path / "spool").glob("spool-*") for row in read_spool(p)]
    assert sorted(spooled) == [f"r{i:05d}" for i in range(7)]


def test_a_queued_record_fits_the_bytes_the_memory_budget_counts(model_dir: Path) -> None:
    """The queues' bound in the pod's arithmetic (docs/limits.md): an entry (as the audit
    process and the worker's own writer hold it) within QUEUED_RECORD_BYTES, its pickle (as
    it waits in the worker to cross) within half of that, for the worst one-record entries."""
    import pickle
    import tracemalloc

    from chargecast.audit.sidecar import Config
    from chargecast.model.artifact import Artifact
    from chargecast.serving.audit import ONE, QUEUED_RECORD_BYTES, compact
    from chargecast.serving.predict import predict_one

    model = Artifact.load(model_dir)
    n = 2000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        queued = []
        for i in range(n):
            ref = f"{i:0128d}"  # distinct strings of the longest allowed length
            scored = predict_one(model, {**RECORD, "patient_ref": ref})
            entry = (ONE, time.time(), "/api/v1/predict", f"{i:016x}-{i:x}", f"{i:0128x}", "caller-label")
            queued.append(((*entry, scored.rows, compact(scored.body), ref), 1))
        per_record = (tracemalloc.get_traced_memory()[0] - before) / n
        before = tracemalloc.get_traced_memory()[0]
        frames = [pickle.dumps(e, pickle.HIGHEST_PROTOCOL) for e, _ in queued]
        per_frame = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert frames
    assert per_record <= QUEUED_RECORD_BYTES, per_record
    assert per_frame <= QUEUED_RECORD_BYTES / 2, per_frame
    size = Settings().audit_queue_size
    c = Config("off", Path(), 0, size, 1, 0.2, 1.0, None, "info")
    held = 2 * c.child_queue * QUEUED_RECORD_BYTES + (size // 2) * QUEUED_RECORD_BYTES / 2  # both writers, the crossing
    assert held <= 19 << 20  # the figure in docs/limits.md
