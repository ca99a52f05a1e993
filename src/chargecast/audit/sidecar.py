"""The audit writer in a process of its own, one per worker, at idle CPU priority.

A writer thread inside the worker shares the interpreter lock with the thread that answers
requests, and a writer process at normal priority shares the CPUs: either way a request that
arrives while a batch is built and written waits, and the p99 at one connection was 1.8-2.5 ms
against 0.22 ms with the audit log off. So the worker only pickles each entry (a few
microseconds, on the request path) and a sender thread hands the bytes every
:data:`SEND_SECONDS` through a pipe (a ``write``, which releases the lock) to a child process,
``python -m chargecast.audit.sidecar``, that runs the :class:`~chargecast.audit.writer.Writer`
(the queue, the batches, the spool, orphan delivery) under ``SCHED_IDLE``: it gets a CPU only
when no request wants one, and a request never waits for it.

- **When the CPUs are saturated** an idle-priority process gets next to nothing, and a busy
  one is preempted at every request, which costs the workers more than its work. So the
  worker writes itself, with its own :class:`Writer` thread at normal priority (what the audit
  log did before this process existed), and pauses the child, when the machine has had fewer
  than :data:`BUSY_CORES` CPUs idle for :data:`BUSY_SECONDS`, or when a record it sent has
  waited :data:`LATE_FLUSHES` flush intervals without the child taking it. It hands back
  once :data:`FREE_CORES` CPUs have been idle for :data:`FREE_SECONDS` (see
  :meth:`Sidecar.steer`).
- **Shutdown.** The child ignores SIGTERM and SIGINT: it stops when its pipe closes, after
  writing what it holds (or spooling it). The worker closes the pipe during its drain, once
  every answered request is queued, and waits for the child.
- **A killed worker** closes the pipe too, so its child still writes everything it was sent;
  only the worker's unsent entries (at most :data:`SEND_SECONDS`) and the queue of its own
  writer (at most a flush interval, and only while saturated) are lost.
- **A dead child** (killed, crashed) is restarted on the next send, at most once every
  :data:`RESTART_SECONDS`; the entries of that send go to the new child. What the dead one
  held is lost (at most a flush interval); its spool is delivered by the new one. ERROR.
- **A stuck child** (the pipe full): entries wait in the worker up to a quarter of the queue
  size; then the request that finds it full builds its rows and spools them in a file that
  it releases at once, which the child delivers as a dead worker's spool.
- **Counters.** The child publishes delivered, dropped, store-up, backlog and its last flush
  in a shared memory page (``memfd``), which the worker's metrics read without a round trip.

The pipe carries pickles from the worker to its own child, never anything from a client.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import io
import logging
import mmap
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from chargecast.audit.records import Builder, ModelRef, count
from chargecast.audit.store import PostgresStore, Row, Store, open_store
from chargecast.audit.writer import Spool, Writer

log = logging.getLogger("chargecast.audit")
SEND_SECONDS: Final = 0.02  # how long an entry waits in the worker before it crosses to the child
RESTART_SECONDS: Final = 1.0  # the shortest time between two starts of the child
LATE_FLUSHES: Final = 2.0  # the child is behind when a record it was sent waits this many intervals
HOLD_SECONDS: Final = 1.0  # the worker writes for at least this long before it hands back
MAX_HOLD_SECONDS: Final = 10.0
PAUSE_SECONDS: Final = 0.05  # how often a paused child looks whether it may write again
IDLE_WINDOW: Final = 0.25  # the machine's idle CPUs are measured over windows this long
FREE_CORES: Final = 0.5  # hand back only with at least this many CPUs idle...
FREE_SECONDS: Final = 1.0  # ...for this long
BUSY_CORES: Final = 0.25  # and take the writing with fewer than this many idle...
BUSY_SECONDS: Final = 0.5  # ...for this long
# While the worker writes, its writer thread shares the interpreter lock with the requests, and
# builds rows or binds a batch in long C calls: a request that wants the lock then waits up to
# the switch interval (5 ms by default). At 0.5 ms it waits at most that; the cost is a forced
# switch every 0.5 ms while both threads have work, none when the writer is idle.
SWITCH_INTERVAL: Final = 0.0005
PIPE_BYTES: Final = 1 << 20  # the pipe's capacity (Linux's default cap for unprivileged processes)
F_SETPIPE_SZ: Final = 1031
PACE: Final = (100, 0.002)  # the audit process COPYs to PostgreSQL 100 rows at a time, 2 ms apart
# The shared page: int64 slots, each written with one aligned store (struct.pack_into zeroes the
# whole buffer before it packs, so a reader could see zeros mid-write). TAKEN: records the
# child has taken off its queue (written, spooled or dropped), against which the worker
# matches what it sent.
# PAUSED (set by the worker): the child holds its queue and does not write (see Sidecar.steer).
DELIVERED, DROPPED, SINK_UP, BACKLOG, TAKEN, PAUSED = range(6)
SLOTS: Final = 6
STATUS_BYTES: Final = 8 * SLOTS
PROTOCOL: Final = pickle.HIGHEST_PROTOCOL


@dataclass(frozen=True)
class Config:
    """What the child needs to run the writer; sent as the pipe's first pickle (the patient
    key is in it, so it never appears in an argument list or the environment)."""

    url: str
    spool_dir: Path
    spool_max_bytes: int
    queue_size: int
    batch_size: int
    flush_seconds: float
    close_seconds: float
    key: bytes | None
    log_level: str
    status_fd: int = -1

    @property
    def send_seconds(self) -> float:
        return min(SEND_SECONDS, self.flush_seconds / 4)

    @property
    def child_flush_seconds(self) -> float:
        """With the worker's send interval it adds up to the configured flush interval, so a
        kill -9 of both still loses at most one flush interval."""
        return self.flush_seconds - self.send_seconds

    @property
    def child_queue(self) -> int:
        """Half the queue each for the child and the worker's own writer: the two together
        hold what one queue held (docs/limits.md)."""
        return max(1, self.queue_size // 2)


def _slots(page: mmap.mmap) -> memoryview:
    return memoryview(page).cast("q")


def _reset(slots: memoryview) -> None:
    for i, value in enumerate((0, 0, 1, 0, 0, 0)):
        slots[i] = value


def _status_page() -> tuple[int, memoryview]:
    try:
        fd = os.memfd_create("chargecast-audit-status")
    except (AttributeError, OSError):  # no memfd (not Linux, or a sandbox that refuses it)
        with tempfile.TemporaryFile() as unnamed:
            fd = os.dup(unnamed.fileno())
    os.ftruncate(fd, STATUS_BYTES)
    slots = _slots(mmap.mmap(fd, STATUS_BYTES))
    _reset(slots)
    return fd, slots


class CpuIdle:
    """How many of the machine's CPUs were idle, on average, over the last window of
    :data:`IDLE_WINDOW`, from ``/proc/stat`` (None before the first window, or without it)."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self._last: tuple[float, int, int] | None = None
        self.cores: float | None = None

    def _read(self) -> tuple[int, int, int] | None:
        try:
            with open(self.path, "rb") as handle:
                lines = handle.read().splitlines()
            fields = [int(v) for v in lines[0].split()[1:9]]
        except (OSError, ValueError, IndexError):
            return None
        cpus = sum(1 for line in lines[1:] if line.startswith(b"cpu"))
        return fields[3] + fields[4], sum(fields), max(cpus, 1)  # idle + iowait; all but guest

    def idle(self, now: float) -> float | None:
        if self._last is not None and now - self._last[0] < IDLE_WINDOW:
            return self.cores
        sample = self._read()
        if sample is None:
            return None
        idle, total, cpus = sample
        if self._last is not None and total > self._last[2]:
            self.cores = cpus * (idle - self._last[1]) / (total - self._last[2])
        self._last = (now, idle, total)
        return self.cores


def _connector(url: str, paced: bool = False) -> Any:
    def connect() -> Store:
        store = open_store(url)
        if paced and isinstance(store, PostgresStore):
            store.pace = PACE
        store.migrate()
        return store

    return connect


class Sidecar:
    """The worker's side: queue entries (pickled), send them, keep the child running, write
    locally while the child is starved, and read the counters. The same surface as
    :class:`Writer` for the metrics and the app (``submit``, ``start``, ``close``, counters)."""

    def __init__(self, config: Config, builder: Builder) -> None:
        self.builder = builder  # for what the worker writes or spools itself
        self.bound = max(1, config.queue_size // 2)  # records waiting to cross, at most (pickled: ~0.4 KiB)
        self._status_fd, self._status = _status_page()
        self.config = dataclasses.replace(config, status_fd=self._status_fd)
        self.send_seconds = self.config.send_seconds
        self.spool = Spool(config.spool_dir, config.spool_max_bytes)  # only for overflow
        self.local = Writer(
            _connector(config.url),
            builder.build,
            Spool(config.spool_dir, config.spool_max_bytes),
            self.config.child_queue,
            config.batch_size,
            config.flush_seconds,
        )
        self.writing_locally = False
        self.switches = 0  # to the worker's own writer, since start
        self.cpus = CpuIdle()
        self._free_since: float | None = None
        self._busy_since: float | None = None
        self.hold = HOLD_SECONDS
        self._local_since = 0.0
        self._handed_back_at = -MAX_HOLD_SECONDS
        self._switch_interval = sys.getswitchinterval()
        self._frames: list[bytes] = []
        self._buffered = 0  # records in _frames and in the chunk being written
        self._chunk: bytes | None = None  # frames joined, partly written to the pipe
        self._chunk_records = 0
        self._chunk_since = 0.0
        # (when, records sent by then) for sends the child has not yet taken off its queue
        self._sent: collections.deque[tuple[float, int]] = collections.deque()
        self._sent_total = 0
        self._offset = 0
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._base = [0, 0]  # delivered, dropped by children that are gone
        self._dropped = 0  # by this side
        self.restarts = 0
        self._thread = threading.Thread(target=self._run, name="chargecast-audit-send", daemon=True)

    # -- what the metrics read -----------------------------------------------------------
    @property
    def delivered(self) -> int:
        return self._base[0] + self._status[DELIVERED] + self.local.delivered

    @property
    def dropped(self) -> int:
        return self._base[1] + self._dropped + self._status[DROPPED] + self.local.dropped

    @property
    def sink_up(self) -> int:
        return self.local.sink_up if self.writing_locally else int(self._status[SINK_UP])

    def backlog(self) -> int:
        return self._buffered + self._status[BACKLOG] + self.local.backlog()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # -- the request side ----------------------------------------------------------------
    def tell(self, model: ModelRef) -> None:
        """The model this worker serves: every entry after this is built with it."""
        self.builder.model = model
        with self._lock:
            self._frames.append(pickle.dumps(("model", *model.describe()), PROTOCOL))

    def submit(self, entry: Any, records: int = 1) -> None:
        """Queue one request's entry; never blocks on the child or the store, and never
        fails the request: a record that cannot be queued is counted and logged as dropped."""
        try:
            self._submit(entry, records)
        except Exception:
            log.exception("audit record could not be queued")
            self._drop(records, "could not be queued")

    def _submit(self, entry: Any, records: int) -> None:
        if self.writing_locally:
            self.local.submit(entry, records)
            return
        frame = pickle.dumps(entry, PROTOCOL)
        with self._lock:
            fits = self._buffered + records <= self.bound
            if fits:
                self._frames.append(frame)
                self._buffered += records
        if not fits:
            self._overflow(entry, records)

    def _overflow(self, entry: Any, records: int) -> None:
        """The child takes nothing (stuck or gone): spool this entry's rows in a file of their
        own, released at once, which the child delivers as a dead worker's spool."""
        try:
            rows = self.builder.build(entry)
        except Exception:
            log.exception("audit records could not be built")
            self._drop(records, "could not be built")
            return
        self._spool(rows)

    def _spool(self, rows: Sequence[Row]) -> None:
        with self._lock:
            ok = self.spool.append(rows)
            self.spool.close()
        if not ok:
            self._drop(len(rows), "the writer process is stuck and the spool is at CHARGECAST_AUDIT_SPOOL_MAX_BYTES")

    def _drop(self, records: int, why: str) -> None:
        self._dropped += records
        log.error("audit records dropped", extra={"fields": {"records": records, "reason": why}})

    # -- the sender thread ---------------------------------------------------------------
    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        if self._proc is not None:
            code = self._proc.wait()
            backlog = self._status[BACKLOG]
            self._base[0] += self._status[DELIVERED]
            self._base[1] += self._status[DROPPED]
            self.restarts += 1
            log.error(
                "audit writer process died; starting another",
                extra={"fields": {"exit": code, "records_lost_at_most": backlog}},
            )
        _reset(self._status)
        self._sent.clear()  # the new child counts from zero; what the dead one held is gone
        self._sent_total = 0
        self._started_at = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "chargecast.audit.sidecar"], stdin=subprocess.PIPE, pass_fds=(self._status_fd,)
        )
        with contextlib.suppress(OSError):  # a smaller pipe only means more, shorter writes
            fcntl.fcntl(self._pipe(), F_SETPIPE_SZ, PIPE_BYTES)
        head = [pickle.dumps(("config", self.config), PROTOCOL)]
        if self.builder.model is not None:
            head.append(pickle.dumps(("model", *self.builder.model.describe()), PROTOCOL))
        self._write(b"".join(head))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        fd = self._pipe()
        while view:
            view = view[os.write(fd, view) :]

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.send_seconds)
            self._wake.clear()
            try:
                self.send()
                self.steer()
            except Exception:  # never let the thread die: the next send retries
                log.exception("audit send failed")
                time.sleep(self.send_seconds)

    def send(self, blocking: bool = False) -> None:
        """Hand what is queued to the child, without waiting for it: a chunk the pipe cannot
        take yet is finished on later calls (a starved child reads slowly); restart the child
        first if it is gone, and spool the chunk if none will start."""
        with self._send_lock:
            if self._chunk is None:
                with self._lock:
                    frames, records = self._frames, self._buffered
                    self._frames = []
                if not frames:
                    return
                self._chunk, self._chunk_records, self._offset = b"".join(frames), records, 0
                self._chunk_since = time.monotonic()
            sent = self._deliver(self._chunk, blocking)
            if sent is False:
                return
            if sent is None:
                self._spool_frames(self._chunk)
            else:
                self._sent_total += self._chunk_records
                self._sent.append((time.monotonic(), self._sent_total))
            with self._lock:
                self._buffered -= self._chunk_records
            self._chunk = None

    def _deliver(self, chunk: bytes, blocking: bool) -> bool | None:
        """True once all of ``chunk`` is in the pipe, False if the pipe is full, None if there
        is no child to take it."""
        view = memoryview(chunk)
        for _attempt in range(2):
            try:
                if self._child().poll() is not None:
                    if time.monotonic() - self._started_at < RESTART_SECONDS:
                        return None  # it dies as it starts: spool rather than spin
                    self._spawn()
                    self._offset = 0  # the whole chunk to the new child (duplicates are absorbed)
                fd = self._pipe()
                os.set_blocking(fd, blocking)
                while self._offset < len(chunk):
                    try:
                        self._offset += os.write(fd, view[self._offset :])
                    except BlockingIOError:
                        return False
                return True
            except OSError:  # died while we wrote
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._child().wait(1.0)
        return None

    def _child(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "start() first"
        return self._proc

    def _pipe(self) -> int:
        stdin = self._child().stdin
        assert stdin is not None
        return stdin.fileno()

    def _spool_frames(self, data: bytes) -> None:
        rows: list[Row] = []
        stream = io.BytesIO(data)
        while stream.tell() < len(data):
            entry = pickle.load(stream)
            if isinstance(entry[0], str):
                continue
            try:
                rows.extend(self.builder.build(entry))
            except Exception:
                log.exception("audit records could not be built")
                self._drop(count(entry), "could not be built")
        if rows:
            self._spool(rows)

    def behind(self, now: float) -> bool:
        """Has a record waited :data:`LATE_FLUSHES` flush intervals without the child taking it
        off its queue (written, spooled or dropped), or a chunk as long for room in the pipe?
        Either way the child is starved of CPU, stopped, or reading too slowly."""
        limit = LATE_FLUSHES * self.config.child_flush_seconds
        taken = self._status[TAKEN]
        while self._sent and self._sent[0][1] <= taken:
            self._sent.popleft()
        waiting = self._sent and now - self._sent[0][0] > limit
        return bool(waiting) or (self._chunk is not None and now - self._chunk_since > limit)

    def steer(self) -> None:
        """Write in the worker while the machine's CPUs are saturated (fewer than
        :data:`BUSY_CORES` idle for :data:`BUSY_SECONDS`) or the idle-priority child is behind
        (:meth:`behind`: starved of CPU, stopped, or reading too slowly), and pause the child
        meanwhile.

        A busy idle-priority process on busy CPUs is preempted at every request and costs the
        workers far more than its work (16 connections: 10-13k req/s against 19-20k with the
        worker writing), so the child holds what it has until the CPUs are free: at least
        :data:`FREE_CORES` of the machine's CPUs idle for :data:`FREE_SECONDS`, after a hold of
        :data:`HOLD_SECONDS`, twice as long each time it falls behind again within a hold (to
        :data:`MAX_HOLD_SECONDS`). Then it writes what it held and takes the writing back."""
        now = time.monotonic()
        idle = self.cpus.idle(now)
        if idle is not None:
            self._free_since = (self._free_since or now) if idle >= FREE_CORES else None
            self._busy_since = (self._busy_since or now) if idle < BUSY_CORES else None
        busy = self._busy_since is not None and now - self._busy_since >= BUSY_SECONDS
        if not self.writing_locally:
            if (busy or self.behind(now)) and self._proc is not None and self._proc.poll() is None:
                again = now - self._handed_back_at < self.hold
                self.hold = min(self.hold * 2, MAX_HOLD_SECONDS) if again else HOLD_SECONDS
                self._local_since = now
                if not self.local.running:
                    self.local.start()
                self._switch_interval = sys.getswitchinterval()
                sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL))
                self.writing_locally = True
                self._status[PAUSED] = 1
                self.switches += 1
                log.info(
                    "audit process behind: the worker writes",
                    extra={"fields": {"backlog": self._status[BACKLOG], "hold_seconds": self.hold, "idle_cpus": idle}},
                )
            return
        free = self._free_since is not None and now - self._free_since >= FREE_SECONDS
        if now - self._local_since >= self.hold and (free or idle is None) and self._chunk is None:
            self.writing_locally = False
            self._handed_back_at = now
            self._sent = collections.deque((now, n) for _, n in self._sent)  # held, not late
            self._status[PAUSED] = 0
            sys.setswitchinterval(self._switch_interval)
            log.info("audit process writes again", extra={"fields": {"idle_cpus": idle}})

    def close(self, timeout: float) -> None:
        """Send what is queued, close the pipe and wait (up to ``timeout`` s) for the child to
        write or spool everything; flush the worker's own writer beside it."""
        self._stop = True
        self._wake.set()
        if self._proc is None:  # never started: what is queued goes to the spool, for the next one
            with self._lock:
                frames, self._frames, self._buffered = self._frames, [], 0
            self._spool_frames(b"".join(frames))
            self.local.close(timeout)
            return
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._status[PAUSED] = 0  # it writes what it held, then stops when its pipe closes
        self.send(blocking=True)  # the chunk a full pipe held back, then the rest
        self.send(blocking=True)
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        self.local.close(timeout)
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("audit writer process still busy at shutdown", extra={"fields": {"pid": proc.pid}})
        self.spool.close()


# -- the child ----------------------------------------------------------------------------
class _Published(Writer):
    """The writer, publishing its counters in the shared page after every flush."""

    def __init__(self, slots: memoryview, *args: Any) -> None:
        super().__init__(*args)
        self.slots = slots

    def publish(self) -> None:
        slots = self.slots
        slots[DELIVERED] = self.delivered
        slots[DROPPED] = self.dropped
        slots[SINK_UP] = self.sink_up
        slots[BACKLOG] = self.backlog()
        slots[TAKEN] = self.taken

    def cycle(self) -> None:
        while self.slots[PAUSED] and not self._stop:  # the worker writes: take no CPU from it
            time.sleep(PAUSE_SECONDS)
        super().cycle()
        self.publish()


def idle_priority() -> bool:
    """Run this process (every thread it has, such as a BLAS pool started on import, and the
    threads it starts later, which inherit it) only on CPU time nobody else wants."""
    try:
        for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or a seccomp profile that refuses it
        log.warning("audit writer runs at normal priority", extra={"fields": {"error": str(exc)}})
        return False
    return True


def main() -> int:
    """Run the writer on what arrives through stdin until it closes."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the worker's pipe says when to stop, not a signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stream = sys.stdin.buffer
    try:
        tag, config = pickle.load(stream)
    except (EOFError, pickle.UnpicklingError):
        return 0
    if tag != "config" or not isinstance(config, Config):
        sys.stderr.write("chargecast.audit.sidecar: started without its configuration\n")
        return 2
    _configure_logging(config.log_level)
    idle_priority()
    builder = Builder(config.key)
    writer = _Published(
        _slots(mmap.mmap(config.status_fd, STATUS_BYTES)),
        _connector(config.url, paced=True),
        builder.build,
        Spool(config.spool_dir, config.spool_max_bytes),
        config.child_queue,
        config.batch_size,
        config.child_flush_seconds,
    )
    writer.start()
    try:
        while True:
            try:
                entry = pickle.load(stream)
            except EOFError:
                break
            except (pickle.UnpicklingError, ValueError, TypeError):  # torn by a killed worker
                log.warning("audit pipe ended mid-entry: the worker died while writing it")
                break
            if isinstance(entry[0], str):
                builder.model = ModelRef(entry[1], entry[2], entry[3], Path(entry[4]))
            else:
                writer.submit(entry, count(entry))
                writer.publish()
    finally:
        writer.close(config.close_seconds)
        writer.publish()
    return 0


def _configure_logging(level: str) -> None:
    import logging.config

    from chargecast.jsonlog import uvicorn_log_config

    logging.config.dictConfig(uvicorn_log_config(level))


if __name__ == "__main__":  # as `python -m`: run the module's own copy, whose Config the worker pickled
    from chargecast.audit.sidecar import main as _main

    sys.exit(_main())
