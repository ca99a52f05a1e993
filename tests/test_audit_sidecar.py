"""The audit writer's own process: what crosses the pipe is what gets written; the child runs
at idle priority, outlives a killed worker, is restarted when it dies, is stood in for when it
is starved or stopped, and stops only when its pipe closes."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from chargecast.audit import sidecar
from chargecast.audit.records import MANY, ONE, Builder, ModelRef
from chargecast.audit.sidecar import Config, Sidecar
from chargecast.audit.store import Row, open_store
from chargecast.model.artifact import Artifact
from chargecast.serving.predict import predict_many, predict_one

RECORD: dict[str, Any] = {"age": 39, "sex": "female", "bmi": 30.4, "children": 1, "smoker": "no", "region": "southeast"}
DIGEST = "d" * 64


def config(tmp_path: Path, **kw: Any) -> Config:
    values: dict[str, Any] = {
        "url": f"sqlite:///{tmp_path}/audit.sqlite3",
        "spool_dir": tmp_path / "spool",
        "spool_max_bytes": 1 << 20,
        "queue_size": 1000,
        "batch_size": 100,
        "flush_seconds": 0.1,
        "close_seconds": 5.0,
        "key": None,
        "log_level": "warning",
    }
    return Config(**(values | kw))


def entry(model: Artifact, i: int) -> tuple[Any, ...]:
    scored = predict_one(model, {**RECORD, "age": 20 + i % 40})
    return (ONE, time.time(), "/api/v1/predict", f"r{i:06d}", None, None, scored.rows, scored.body, None)


@contextmanager
def running(tmp_path: Path, model: Artifact, **kw: Any) -> Iterator[Sidecar]:
    car = Sidecar(config(tmp_path, **kw), Builder(None))
    car.tell(ModelRef.of(model, DIGEST))
    car.start()
    try:
        pid = car.pid
        # started: its writer thread is up (imports done), so what is sent now is read at once
        _wait(lambda: pid is not None and len(os.listdir(f"/proc/{pid}/task")) >= 2)
        yield car
    finally:
        car.close(5.0)


def stored(tmp_path: Path) -> list[str]:
    store = open_store(f"sqlite:///{tmp_path}/audit.sqlite3")
    store.migrate()  # the table may not be there yet: the child creates it on its first write
    try:
        return [f.request_id for f in store.forecasts()]
    finally:
        store.close()


def rows_in_store(tmp_path: Path) -> list[Row]:
    store = open_store(f"sqlite:///{tmp_path}/audit.sqlite3")
    try:
        return [tuple(r) for r in store.db.execute("SELECT * FROM chargecast_forecasts ORDER BY request_id, row")]  # type: ignore[attr-defined]
    finally:
        store.close()


def _wait(check: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


def test_what_crosses_the_pipe_is_what_the_worker_would_have_written(tmp_path: Path, model: Artifact) -> None:
    one = [entry(model, i) for i in range(30)]
    many = predict_many(model, [RECORD, {**RECORD, "smoker": "yes"}, {**RECORD, "bmi": 45.0}])
    batch = (MANY, time.time(), "/api/v1/predict", "batch", "client-7", "team-a", many.rows, many.body, None)
    with running(tmp_path, model) as car:
        pid = car.pid
        assert pid is not None
        assert pid != os.getpid()
        for e in one:
            car.submit(e)
        car.submit(batch, 3)
    assert _gone(pid)  # the pipe closed, the child wrote everything and exited
    builder = Builder(None, ModelRef.of(model, DIGEST))
    expected = sorted(r for e in [*one, batch] for r in builder.build(e))
    assert rows_in_store(tmp_path) == expected
    assert car.delivered == 33
    assert car.backlog() == 0


def test_the_child_and_its_threads_run_at_idle_priority(tmp_path: Path, model: Artifact) -> None:
    with running(tmp_path, model) as car:
        car.submit(entry(model, 0))
        pid = car.pid
        assert pid is not None
        _wait(lambda: car.delivered == 1)
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        assert len(threads) >= 3  # the reader, the writer, the probe
        assert {os.sched_getscheduler(t) for t in threads} == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the worker is untouched


WORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from chargecast.audit.records import Builder, ModelRef
    from chargecast.audit.sidecar import Config, Sidecar
    from chargecast.model.artifact import Artifact
    from test_audit_sidecar import DIGEST, config, entry

    tmp, model_dir, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    model = Artifact.load(model_dir)
    car = Sidecar(config(tmp, flush_seconds=5.0), Builder(None))
    car.tell(ModelRef.of(model, DIGEST))
    car.start()
    for i in range(n):
        car.submit(entry(model, i))
    car.send(blocking=True)  # in the pipe; the child's next flush is seconds away
    (tmp / "child").write_text(str(car.pid))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_worker_killed_with_9_leaves_a_child_that_writes_all_it_was_sent(tmp_path: Path, model_dir: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(model_dir), "500"], env=env, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL
    child = int((tmp_path / "child").read_text())
    _wait(lambda: _gone(child))  # its pipe closed with the worker: it flushed at once and left
    assert sorted(stored(tmp_path)) == [f"r{i:06d}" for i in range(500)]


def test_a_dead_child_is_started_again_and_later_records_arrive(tmp_path: Path, model: Artifact) -> None:
    with running(tmp_path, model) as car:
        for i in range(10):
            car.submit(entry(model, i))
        _wait(lambda: car.delivered == 10)
        first = car.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait(lambda: _gone(first) or car.pid != first)
        time.sleep(sidecar.RESTART_SECONDS)
        for i in range(10, 20):
            car.submit(entry(model, i))
        _wait(lambda: car.restarts == 1 and car.delivered == 20)
        assert car.pid != first
    assert sorted(stored(tmp_path)) == [f"r{i:06d}" for i in range(20)]
    assert car.dropped == 0


def test_a_stopped_child_is_stood_in_for_then_handed_back_with_nothing_lost_or_doubled(
    tmp_path: Path, model: Artifact
) -> None:
    n = 0

    def submit(k: int) -> None:
        nonlocal n
        for _ in range(k):
            car.submit(entry(model, n))
            n += 1

    with running(tmp_path, model) as car:
        submit(20)
        _wait(lambda: car.delivered == 20)
        pid = car.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # as good as starved: it neither reads nor flushes
        try:
            deadline = time.monotonic() + 10
            while not car.writing_locally:
                assert time.monotonic() < deadline, "the worker never stood in"
                submit(5)
                time.sleep(0.02)
            assert car._status[sidecar.PAUSED] == 1  # told to hold what it has
            submit(50)
            _wait(lambda: car.local.delivered >= 50)  # the worker's own writer, while the child sleeps
        finally:
            os.kill(pid, signal.SIGCONT)
        _wait(lambda: not car.writing_locally)  # a CPU is free: handed back
        assert car._status[sidecar.PAUSED] == 0
        assert car.switches == 1
        submit(20)
    ids = stored(tmp_path)
    assert sorted(ids) == [f"r{i:06d}" for i in range(n)]  # every one, once
    assert car.dropped == 0


def test_the_child_ignores_sigterm_and_stops_when_its_pipe_closes(tmp_path: Path, model: Artifact) -> None:
    with running(tmp_path, model) as car:
        pid = car.pid
        assert pid is not None
        time.sleep(0.5)  # past its start-up, when the handlers are set
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        time.sleep(0.3)
        assert not _gone(pid)
        for i in range(5):
            car.submit(entry(model, i))
    assert car._proc is not None
    assert car._proc.returncode == 0
    assert len(stored(tmp_path)) == 5


def test_past_its_bound_the_worker_spools_in_released_files_the_child_delivers(tmp_path: Path, model: Artifact) -> None:
    car = Sidecar(config(tmp_path, queue_size=8), Builder(None))  # holds 4 records waiting to cross
    car.tell(ModelRef.of(model, DIGEST))
    for i in range(10):  # no child yet: nothing crosses
        car.submit(entry(model, i))
    assert car.backlog() == 4
    spools = sorted((tmp_path / "spool").glob("spool-*.jsonl"))
    assert len(spools) == 6  # one released file per overflowing request
    for path in spools:
        with open(path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it: the child may take it
    car.start()
    try:
        _wait(lambda: len(stored(tmp_path)) == 10)
    finally:
        car.close(5.0)
    assert sorted(stored(tmp_path)) == [f"r{i:06d}" for i in range(10)]
    assert not list((tmp_path / "spool").glob("spool-*.jsonl"))


def test_past_the_bound_and_the_spool_limit_records_are_dropped_and_counted(
    tmp_path: Path, model: Artifact, caplog: pytest.LogCaptureFixture
) -> None:
    car = Sidecar(config(tmp_path, queue_size=2, spool_max_bytes=1), Builder(None))
    car.tell(ModelRef.of(model, DIGEST))
    with caplog.at_level("ERROR", logger="chargecast.audit"):
        for i in range(5):
            car.submit(entry(model, i))
    assert car.backlog() == 1
    assert car.dropped == 4
    assert [r.message for r in caplog.records].count("audit records dropped") == 4
    car.close(1.0)


def test_an_entry_that_cannot_be_queued_is_dropped_not_raised(tmp_path: Path, model: Artifact) -> None:
    """The request that queued it has its answer: an audit failure never turns it into a 500."""
    car = Sidecar(config(tmp_path), Builder(None))
    car.submit((ONE, time.time(), "/api/v1/predict", "r1", None, None, lambda: 0, b"{}", None))  # unpicklable
    assert car.dropped == 1
    assert car.backlog() == 0
    car.close(1.0)


def test_idle_cpus_are_read_from_proc_stat_over_a_window(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    cpus = sidecar.CpuIdle(str(stat))

    def write(idle: int, busy: int) -> None:  # user nice system idle iowait irq softirq steal
        stat.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0\ncpu1 0\nintr 1\n")

    write(1000, 1000)
    assert cpus.idle(0.0) is None  # one sample: no window yet
    write(1150, 1350)  # 150 of 500 ticks idle, on two CPUs
    assert cpus.idle(0.1) is None  # within the window: the last figure (none)
    assert cpus.idle(sidecar.IDLE_WINDOW) == pytest.approx(0.6)
    write(1150, 1850)  # saturated
    assert cpus.idle(2 * sidecar.IDLE_WINDOW) == 0.0
    assert sidecar.CpuIdle(str(tmp_path / "missing")).idle(0.0) is None


def test_the_shared_page_is_never_read_half_written() -> None:
    """struct.pack_into zeroes its buffer before packing: a reader racing it saw zeros (a child
    that had taken nothing, so every record looked overdue). The slots are written one by one."""
    _, slots = sidecar._status_page()
    writer = sidecar._Published.__new__(sidecar._Published)
    writer.slots = slots
    writer.delivered, writer.dropped, writer.sink_up, writer.taken = 7, 0, 1, 9
    writer.backlog = lambda: 3  # type: ignore[method-assign]
    writer.publish()
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            writer.publish()

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        seen = {(slots[sidecar.DELIVERED], slots[sidecar.SINK_UP], slots[sidecar.TAKEN]) for _ in range(200_000)}
    finally:
        stop.set()
        thread.join()
    assert seen == {(7, 1, 9)}
