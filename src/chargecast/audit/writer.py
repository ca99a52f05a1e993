"""Moving audit records to the store, without losing them.

This runs in each worker's audit process (:mod:`chargecast.audit.sidecar`), which appends
every entry it is sent to a bounded in-memory queue (:meth:`Writer.submit`). A thread drains the queue
every ``flush_seconds`` (sooner when a batch fills), builds the records and writes them in
batches. When the store fails, records go to this worker's spool file (append-only JSON
Lines, fsync'd per flush) and new ones queue behind them, so delivery stays in order; once
the store answers again the spool is delivered and deleted. Delivery is idempotent on
``(request_id, row)``, so a spool delivered twice (a crash between writing and deleting it)
adds nothing. A spool left by a dead worker is taken over by whichever worker locks it first
(``fcntl.flock``). Records are lost only past ``spool_max_bytes`` (the queue full and nothing
more fits on disk), and on ``kill -9``: what the queue held, at most one flush interval.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from chargecast.audit.store import Row, Store, json_lines, json_row

log = logging.getLogger("chargecast.audit")
Build = Callable[[Any], Sequence[Row]]
ORPHAN_SCAN_SECONDS: Final = 2.0  # how often a worker looks for spools that dead workers left


class Spool:
    """This worker's spool file, and the ones dead workers left in the same directory."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.prefix = f"spool-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._seq = 0
        self._handle: Any = None  # ours, locked for as long as we hold it
        self._path = self.dir
        self.records = 0  # in our file, not yet delivered

    def used(self) -> int:
        total = 0
        with os.scandir(self.dir) as entries:
            for entry in entries:
                if entry.name.startswith("spool-"):
                    try:
                        total += entry.stat().st_size
                    except FileNotFoundError:
                        continue
        return total

    def append(self, records: Sequence[Row]) -> bool:
        """Append and fsync; False (nothing written) when it would pass ``max_bytes``."""
        data = json_lines(records)
        if self.used() + len(data) > self.max_bytes:
            return False
        if self._handle is None:
            # Locked under a name no scan matches, then renamed: a worker scanning for orphans
            # could otherwise lock a spool between its creation and its owner's lock, deliver
            # and delete it while the owner went on appending to the deleted file.
            self._seq += 1
            name = f"{self.prefix}{self._seq:06d}.jsonl"
            handle = open(self.dir / f".{name}", "ab")  # noqa: SIM115
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(self.dir / f".{name}", self.dir / name)
            self._handle, self._path = handle, self.dir / name
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records += len(records)
        return True

    @property
    def pending(self) -> bool:
        return self._handle is not None

    def own(self) -> Path | None:
        return None if self._handle is None else self._path

    def delivered(self) -> None:
        """Our file reached the store: delete it (then unlock)."""
        path = self.own()
        if path is not None:
            path.unlink(missing_ok=True)
            self._handle.close()
            self._handle = None
        self.records = 0

    def orphans(self) -> Iterator[tuple[Path, Any]]:
        """Spool files nobody holds (their worker died), each locked while the caller delivers it."""
        mine = self.own()
        for path in sorted(self.dir.glob("spool-*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name)):
            if path == mine:
                continue
            try:
                handle = open(path, "rb")  # noqa: SIM115
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not path.exists() or os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
                    continue  # delivered and deleted by another worker while we waited
                yield path, handle
            except BlockingIOError:
                continue  # a live worker's
            finally:
                handle.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # stays on disk: the next worker to start delivers it
            self._handle = None


def read_spool(path: Path) -> list[Row]:
    out = []
    with open(path, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):  # a torn last line cannot have been acknowledged
                out.append(json_row(orjson.loads(line)))
    return out


class Writer:
    """One worker's audit writer: a bounded queue, a thread, a spool. Counters are plain ints
    that the metrics read (``delivered``, ``dropped``, ``sink_up``, :meth:`backlog`)."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        build: Build,
        spool: Spool,
        queue_size: int,
        batch_size: int,
        flush_seconds: float,
    ) -> None:
        self.open_store = open_store
        self.build = build
        self.spool = spool
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.delivered = 0
        self.dropped = 0
        self.sink_up = 1
        self._queue: deque[tuple[Any, int]] = deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._store: Store | None = None
        self._orphans_at = 0.0
        self._orphan_records = 0
        self.taken = 0  # records ever taken off the queue: written, spooled or dropped since
        self._thread = threading.Thread(target=self._run, name="chargecast-audit", daemon=True)

    # -- the request side ------------------------------------------------------------------
    def submit(self, entry: Any, records: int = 1) -> None:
        """Queue what one request answered (``records`` rows); never blocks on the store."""
        with self._lock:
            fits = self._queued + records <= self.queue_size
            if fits:
                self._queue.append((entry, records))
                self._queued += records
        if not fits:
            self._overflow(entry, records)
        elif self._queued >= self.batch_size:
            self._wake.set()

    def _overflow(self, entry: Any, records: int) -> None:
        """The queue is full (the store is slower than the traffic): spool this one at once."""
        self.taken += records
        try:
            built = self.build(entry)
        except Exception:
            log.exception("audit records could not be built")
            self._drop(records, "could not be built")
            return
        with self._lock:
            ok = self.spool.append(built)
        if not ok:
            self._drop(len(built), "the queue is full and the spool is at CHARGECAST_AUDIT_SPOOL_MAX_BYTES")

    def backlog(self) -> int:
        return self._queued + self.spool.records + self._orphan_records

    def _drop(self, records: int, why: str) -> None:
        self.dropped += records
        log.error("audit records dropped", extra={"fields": {"records": records, "reason": why}})

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.cycle()
            except Exception:  # never let the thread die: the next cycle retries
                log.exception("audit writer cycle failed")
                time.sleep(self.flush_seconds)

    def _take(self) -> list[Row]:
        with self._lock:
            taken = list(self._queue)
            self._queue.clear()
        records: list[Row] = []
        for entry, n in taken:
            try:
                records.extend(self.build(entry))
            except Exception:
                log.exception("audit records could not be built")
                self._drop(n, "could not be built")
        with self._lock:
            n_taken = sum(n for _, n in taken)
            self._queued -= n_taken
            self.taken += n_taken
        return records

    def cycle(self) -> None:
        """One flush: the queue to the store, behind any spool; on failure, to the spool."""
        records = self._take()
        if self.spool.pending:
            self._to_spool(records)
            self._deliver_spool()
        elif records and not self._write(records):
            self._to_spool(records)
        if self.sink_up and time.monotonic() >= self._orphans_at:
            self._orphans_at = time.monotonic() + ORPHAN_SCAN_SECONDS
            self._deliver_orphans()

    def _to_spool(self, records: list[Row]) -> None:
        if not records:
            return
        with self._lock:
            ok = self.spool.append(records)
        if not ok:
            self._drop(len(records), "the store is unreachable and the spool is at CHARGECAST_AUDIT_SPOOL_MAX_BYTES")

    def _write(self, records: Sequence[Row]) -> bool:
        """Write in batches; False at the first failure. Counted as delivered only when all
        went in: after a failure the whole lot is spooled and redelivered (duplicates absorbed)."""
        try:
            if self._store is None:
                self._store = self.open_store()
            for start in range(0, len(records), self.batch_size):
                self._store.write_rows(records[start : start + self.batch_size])
        except Exception as exc:
            if self.sink_up:
                log.warning("audit store unreachable; spooling", extra={"fields": {"error": type(exc).__name__}})
            self.sink_up = 0
            return False
        if not self.sink_up:
            log.info("audit store reachable again")
        self.sink_up = 1
        self.delivered += len(records)
        return True

    def _deliver_spool(self) -> None:
        path = self.spool.own()
        if path is None:
            return
        if self._write(read_spool(path)):
            with self._lock:
                self.spool.delivered()

    def _deliver_orphans(self) -> None:
        for path, _handle in self.spool.orphans():
            records = read_spool(path)
            self._orphan_records = len(records)
            if not self._write(records):
                self._orphan_records = 0
                return
            path.unlink(missing_ok=True)
            self._orphan_records = 0
            log.info("delivered a spool left by another worker", extra={"fields": {"records": len(records)}})

    def close(self, timeout: float) -> None:
        """Stop the thread (waiting up to ``timeout`` s), then flush what is queued: to the
        store if it was up, else (or if it fails now) to the spool, which the next worker to
        start delivers. A thread stuck on the store does not hold the queue back."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        records = self._take()
        stuck = self._thread.is_alive()
        if stuck or self.spool.pending or not self.sink_up or not records or not self._write(records):
            self._to_spool(records)
        self.spool.close()
        if self._store is not None and not stuck:
            self._store.close()
