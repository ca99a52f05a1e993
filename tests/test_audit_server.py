"""The audit log against a real ``chargecast serve`` (2 workers) and a real PostgreSQL: the
database dies under load, SIGTERM arrives with a backlog, a worker is killed with -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from chargecast.audit.store import open_store
from postgres import Postgres
from test_server import RECORD, metric, serving

pytestmark = pytest.mark.slow
FLUSH = 0.2


class Load:
    """Clients posting forecasts until stopped; each sends its own X-Request-ID and keeps the
    ids that were answered 200 (the audit stores them as client_request_id)."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.answered: list[str] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                rid = f"c{n}-{i}"
                try:
                    response = client.post(f"{self.url}/api/v1/predict", json=RECORD, headers={"X-Request-ID": rid})
                except httpx.TransportError as exc:
                    self.failed.append(f"{rid}: {exc!r}")
                    continue
                (self.answered if response.status_code == 200 else self.failed).append(rid)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def audited_ids(url: str) -> list[str | None]:
    store = open_store(url)
    try:
        return [f.client_request_id for f in store.forecasts()]
    finally:
        store.close()


@contextmanager
def audit_server(tmp_path: Path, model_dir: Path, url: str, **env: str) -> Iterator[object]:
    settings = {
        "CHARGECAST_AUDIT_URL": url,
        "CHARGECAST_AUDIT_FLUSH_SECONDS": str(FLUSH),
        "CHARGECAST_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        **env,
    }
    with serving(tmp_path, ["--workers", "2", "--model", str(model_dir)], settings) as server:
        yield server


def _wait_for(check: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_database_dies_under_load_and_nothing_is_lost(
    tmp_path: Path, model_dir: Path, postgres: Postgres, postgres_url: str
) -> None:
    with audit_server(tmp_path, model_dir, postgres_url) as server, Load(server.url) as load:  # type: ignore[attr-defined]
        time.sleep(1.5)
        postgres.stop("immediate")
        time.sleep(3)
        down = httpx.get(server.metrics_url).text  # type: ignore[attr-defined]
        postgres.start()
        time.sleep(1.5)
    assert not load.failed, load.failed[:5]  # forecasts went on while the database was down
    assert "chargecast_audit_sink_up" in down
    assert metric(down, "chargecast_audit_backlog_records") > 0
    answered = set(load.answered)

    def caught_up() -> bool:
        return set(audited_ids(postgres_url)) >= answered

    _wait_for(caught_up)  # the server is stopped: SIGTERM flushed what was still queued
    ids = audited_ids(postgres_url)
    assert len(ids) == len(set(ids)) == len(answered)  # exactly, no duplicates
    per_client: dict[str, list[int]] = {}
    for rid in ids:
        assert rid is not None
        client, n = rid.split("-")
        per_client.setdefault(client, []).append(int(n))
    # Each client's requests were sequential, so in time order each client's ids ascend.
    assert all(ns == sorted(ns) for ns in per_client.values())
    print(f"\n{len(answered)} forecasts answered and audited across a database outage of 3 s")


def test_a_hung_database_holds_no_forecast_and_loses_no_record(
    tmp_path: Path, model_dir: Path, postgres: Postgres, postgres_url: str
) -> None:
    """PostgreSQL SIGSTOPped under load: connections stay open and nothing answers. The write
    deadline cuts the writer loose, records spool, and arrive once the database answers again."""
    with audit_server(tmp_path, model_dir, postgres_url) as server, Load(server.url) as load:  # type: ignore[attr-defined]
        time.sleep(1.5)
        postgres.pause()
        try:
            time.sleep(5)
            during = len(load.answered)
            time.sleep(1)
            hung = httpx.get(server.metrics_url).text  # type: ignore[attr-defined]
            assert len(load.answered) > during  # forecasts went on while it hung
            # the writers were cut loose by their deadline and spooled, rather than waiting on it
            assert list((tmp_path / "spool").glob("spool-*.jsonl")), "nothing spooled while the database hung"
        finally:
            postgres.resume()
        time.sleep(3)
    assert not load.failed, load.failed[:5]
    assert metric(hung, "chargecast_audit_backlog_records") > 0
    answered = set(load.answered)
    _wait_for(lambda: set(audited_ids(postgres_url)) >= answered)
    ids = audited_ids(postgres_url)
    assert len(ids) == len(set(ids)) == len(answered)
    print(f"\n{len(answered)} forecasts answered and audited across a hung database (SIGSTOP, 6 s)")


def test_sigterm_with_the_database_down_loses_nothing(
    tmp_path: Path, model_dir: Path, postgres: Postgres, postgres_url: str
) -> None:
    with audit_server(tmp_path, model_dir, postgres_url) as server:
        postgres.stop("immediate")
        with Load(server.url) as load:  # type: ignore[attr-defined]
            time.sleep(2)
        # serving() sends SIGTERM on exit: the backlog must reach the spool
    spooled = list((tmp_path / "spool").glob("spool-*.jsonl"))
    assert spooled, "nothing was spooled"
    postgres.start()
    with audit_server(tmp_path, model_dir, postgres_url):  # a restart delivers what was spooled
        _wait_for(lambda: not list((tmp_path / "spool").glob("spool-*.jsonl")))
    ids = audited_ids(postgres_url)
    assert sorted(ids) == sorted(load.answered)  # type: ignore[type-var]
    assert not load.failed


def test_sqlite_with_two_workers_gets_every_record_once(tmp_path: Path, model_dir: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    with audit_server(tmp_path, model_dir, url) as server, Load(server.url) as load:  # type: ignore[attr-defined]
        time.sleep(2)
    ids = audited_ids(url)
    assert sorted(ids) == sorted(load.answered)  # type: ignore[type-var]
    with sqlite3.connect(tmp_path / "audit.sqlite3") as db:
        assert db.execute("SELECT COUNT(DISTINCT request_id) FROM chargecast_forecasts").fetchone()[0] == len(ids)


def test_the_file_sink_with_two_workers_gets_every_record(tmp_path: Path, model_dir: Path) -> None:
    url = f"file:///{tmp_path}/jsonl"
    with audit_server(tmp_path, model_dir, url) as server, Load(server.url, clients=2) as load:  # type: ignore[attr-defined]
        time.sleep(1.5)
    assert sorted(audited_ids(url)) == sorted(load.answered)  # type: ignore[type-var]
    files = list((tmp_path / "jsonl").glob("forecasts-*.jsonl"))
    pids = [f.name.split("-")[2] for f in files]
    assert 1 <= len(files) == len(set(pids)) <= 2  # one file per worker that served (connections pick one)


def _worker_pids(server_pid: int) -> list[int]:
    """The serving workers (spawned processes), not multiprocessing's resource tracker."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return [int(p) for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_kill_9_of_a_worker_loses_at_most_one_flush_interval(
    tmp_path: Path, model_dir: Path, postgres_url: str
) -> None:
    with audit_server(tmp_path, model_dir, postgres_url) as server, Load(server.url, clients=6) as load:  # type: ignore[attr-defined]
        time.sleep(2)
        before = len(load.answered)
        started = time.monotonic()
        time.sleep(2)
        rate = (len(load.answered) - before) / (time.monotonic() - started)
        victim = _worker_pids(server.proc.pid)[0]  # type: ignore[attr-defined]
        os.kill(victim, signal.SIGKILL)
        time.sleep(2)
    answered = set(load.answered)
    audited = set(audited_ids(postgres_url))
    lost = len(answered - audited)
    bound = rate * FLUSH  # all workers' rate: one worker's share of one interval is half of it
    print(f"\nkill -9 at {rate:.0f} records/s ({FLUSH} s flush): {lost} records lost, bound {bound:.0f}")
    assert audited <= answered | {None}
    assert lost <= max(bound, 1)
