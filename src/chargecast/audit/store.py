"""Where audit records live: one table of forecasts, one of actual charges, three back ends.

``open_store(url)`` picks the back end from the URL: ``sqlite:///path`` (WAL, several
processes may write one file), ``postgresql://…`` (psycopg 3; batches go through ``COPY``
into a staging table, then ``INSERT … ON CONFLICT DO NOTHING``) or ``file:///dir`` (JSON
Lines files meant to ship to object storage; readers dedupe). Every write is idempotent on
``(request_id, row)``: a batch delivered twice (a retry, a spool redelivered after a crash)
is absorbed, never an error and never a second row.

The forecasts table's input columns come from :data:`chargecast.schema.FIELDS`, the single
source of truth for the patient record: integers as INTEGER, numbers as REAL (DOUBLE
PRECISION on PostgreSQL), categories as TEXT holding their canonical value.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import threading
import time as _time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

import orjson

from chargecast.schema import FIELDS, CategoryField, NumberField

SCHEMA_VERSION: Final = 1
FORECASTS: Final = "chargecast_forecasts"
ACTUALS: Final = "chargecast_actuals"
VERSIONS: Final = "chargecast_audit_schema"
INPUTS: Final[tuple[str, ...]] = tuple(f.name for f in FIELDS)
HEAD: Final = ("request_id", "row", "time", "model_version", "model_digest", "route", "caller", "patient")
TAIL: Final = ("charges", "low", "high", "level", "quantiles", "extrapolated", "client_request_id")
COLUMNS: Final[tuple[str, ...]] = (*HEAD, *INPUTS, *TAIL)
if len(set(COLUMNS)) != len(COLUMNS):  # a schema field named like a bookkeeping column would shadow it
    raise RuntimeError(f"an input field collides with an audit column: {COLUMNS}")
# A record as the writer moves it: a plain tuple in COLUMNS order, time as ``timestamp`` text,
# quantiles as compact JSON text (or None), extrapolated comma-separated. No object per record
# on the write path: building a Forecast and then its row cost twice what inserting it does.
Row = tuple[Any, ...]
_QUANTILES: Final = COLUMNS.index("quantiles")
_EXTRAPOLATED: Final = COLUMNS.index("extrapolated")


class AuditUrlError(ValueError):
    """``CHARGECAST_AUDIT_URL`` (or ``--audit``) is not a URL a store can be opened from."""


@dataclass(frozen=True, slots=True)
class Forecast:
    """One scored patient: who asked, with which model, what went in and what came out."""

    request_id: str
    row: int
    time: datetime  # UTC, timezone-aware
    model_version: str
    model_digest: str  # sha256 of the artifact's metadata.json
    route: str
    caller: str | None  # API-key label, never the key
    patient: str | None  # HMAC-SHA256 hex of a caller-supplied patient reference, never the reference
    inputs: dict[str, float | str]
    charges: float
    low: float
    high: float
    level: float
    quantiles: dict[str, float] | None
    extrapolated: tuple[str, ...]
    client_request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Actual:
    """The charges a patient actually incurred, matched to a forecast by ``(request_id, row)``."""

    request_id: str
    row: int
    charges: float
    received: datetime


class Store(Protocol):
    """What every back end offers; see the module docstring and docs/audit.md."""

    def migrate(self) -> None: ...
    def write(self, forecasts: Sequence[Forecast]) -> int: ...
    def write_rows(self, rows: Sequence[Row]) -> int: ...
    def forecasts(
        self, since: datetime | None = None, until: datetime | None = None, newest: int | None = None
    ) -> Iterator[Forecast]: ...
    def add_actuals(self, actuals: Sequence[Actual]) -> tuple[int, int]: ...
    def resolve(self, patient: str) -> tuple[str, int] | None: ...
    def realised(
        self, since: datetime | None = None, until: datetime | None = None, newest: int | None = None
    ) -> Iterator[tuple[Forecast, float]]: ...
    def prune(self, before: datetime) -> int: ...
    def close(self) -> None: ...


URL_RULE: Final = "must be off, sqlite:///path, postgresql://user:password@host:port/database or file:///directory"


def open_store(url: str) -> Store:
    """The store a URL names; :class:`AuditUrlError` (one line, no password) otherwise."""
    kind, target = parse_url(url)
    if kind == "sqlite":
        return SqliteStore(Path(target))
    if kind == "postgresql":
        return PostgresStore(target)
    if kind == "file":
        return FileStore(Path(target))
    raise AuditUrlError(f"the audit URL is off: there is no store to open ({URL_RULE})")


def parse_url(url: str) -> tuple[str, str]:
    """``(kind, target)``: kind is off, sqlite, postgresql or file; checked without connecting."""
    text = url.strip()
    if text.lower() in ("", "off"):
        return "off", ""
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("sqlite", "postgresql", "postgres", "file"):
        raise AuditUrlError(f"audit URL {redact(text)!r} {URL_RULE}")
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(text)
        if not parts.hostname and "host=" not in (parts.query or ""):
            raise AuditUrlError(f"audit URL {redact(text)!r} names no host ({URL_RULE})")
        return "postgresql", text
    # sqlite:///relative/path and file:///relative/dir; four slashes make the path absolute
    if not rest.startswith("/") or rest == "/":
        raise AuditUrlError(f"audit URL {redact(text)!r} {URL_RULE} (three slashes, then the path)")
    path = unquote(rest[1:].split("?", 1)[0])
    if not path:
        raise AuditUrlError(f"audit URL {redact(text)!r} names no path ({URL_RULE})")
    return scheme, path


def redact(url: str) -> str:
    """A URL as errors show it: never the password."""
    try:
        parts = urlsplit(url)
        if parts.password:
            return url.replace(":" + parts.password + "@", ":***@", 1)
    except ValueError:
        return "<unparseable>"
    return url


# -- rows: what a forecast looks like as table columns (and as a JSON Lines record) --------
def timestamp(moment: datetime) -> str:
    """Fixed-width ISO 8601 in UTC, so text order is time order (SQLite, JSON Lines)."""
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware (UTC)")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_SECOND: tuple[int, str] = (-1, "")  # the last second stamp() formatted, and its text


def stamp(moment: float) -> str:
    """:func:`timestamp` of a ``time.time()`` value, without a datetime: the text of the
    second is formatted once per second, so a record's time costs one f-string."""
    global _SECOND  # noqa: PLW0603 - a one-entry cache, replaced whole (thread-safe)
    second = int(moment)
    micros = round((moment - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached = _SECOND
    if cached[0] != second:
        cached = _SECOND = (second, _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(second)))
    return f"{cached[1]}.{micros:06d}Z"


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def to_row(f: Forecast) -> dict[str, Any]:
    """Table columns: inputs by name; quantiles as a JSON object (or null); extrapolated as
    comma-separated input names ('' when none). Times stay datetimes here."""
    out: dict[str, Any] = {name: getattr(f, name) for name in HEAD}
    out["time"] = _utc(f.time)
    for spec in FIELDS:
        value = f.inputs[spec.name]
        if isinstance(spec, NumberField):
            out[spec.name] = int(value) if spec.integer else float(value)
        else:
            out[spec.name] = str(value)
    out |= {"charges": f.charges, "low": f.low, "high": f.high, "level": f.level}
    out["quantiles"] = None if f.quantiles is None else json.dumps(f.quantiles, separators=(",", ":"))
    out["extrapolated"] = ",".join(f.extrapolated)
    out["client_request_id"] = f.client_request_id
    return out


def from_row(row: Sequence[Any]) -> Forecast:
    """A forecast from a row in ``COLUMNS`` order (time as datetime or our text)."""
    values = dict(zip(COLUMNS, row, strict=True))
    moment = values["time"]
    if isinstance(moment, str):
        moment = parse_time(moment)
    inputs: dict[str, float | str] = {}
    for spec in FIELDS:
        value = values[spec.name]
        inputs[spec.name] = str(value) if isinstance(spec, CategoryField) else float(value)
    quantiles = values["quantiles"]
    if isinstance(quantiles, str):
        quantiles = json.loads(quantiles)
    extrapolated = values["extrapolated"]
    return Forecast(
        request_id=values["request_id"],
        row=int(values["row"]),
        time=moment.astimezone(UTC),
        model_version=values["model_version"],
        model_digest=values["model_digest"],
        route=values["route"],
        caller=values["caller"],
        patient=values["patient"],
        inputs=inputs,
        charges=float(values["charges"]),
        low=float(values["low"]),
        high=float(values["high"]),
        level=float(values["level"]),
        quantiles=quantiles,
        extrapolated=tuple(extrapolated.split(",")) if extrapolated else (),
        client_request_id=values["client_request_id"],
    )


def to_json(f: Forecast) -> dict[str, Any]:
    """The JSON Lines record (file sink, spool): the table's columns, time as text, quantiles
    as an object and extrapolated as a list."""
    out = to_row(f)
    out["time"] = timestamp(f.time)
    out["quantiles"] = f.quantiles
    out["extrapolated"] = list(f.extrapolated)
    return out


def from_json(record: dict[str, Any]) -> Forecast:
    values = dict(record)
    values["extrapolated"] = ",".join(values.get("extrapolated") or ())
    return from_row([values.get(name) for name in COLUMNS])


def as_row(f: Forecast) -> Row:
    """The write path's tuple for a forecast (see :data:`Row`)."""
    values = to_row(f)
    values["time"] = timestamp(f.time)
    return tuple(values[c] for c in COLUMNS)


def row_json(row: Row) -> dict[str, Any]:
    """A row as its JSON Lines record (the same as :func:`to_json` of its forecast)."""
    record = dict(zip(COLUMNS, row, strict=True))
    quantiles = row[_QUANTILES]
    record["quantiles"] = None if quantiles is None else orjson.loads(quantiles)
    extrapolated = row[_EXTRAPOLATED]
    record["extrapolated"] = extrapolated.split(",") if extrapolated else []
    return record


def json_row(record: dict[str, Any]) -> Row:
    """A JSON Lines record (file sink, spool) back as a row."""
    values = [record.get(name) for name in COLUMNS]
    quantiles = values[_QUANTILES]
    values[_QUANTILES] = None if quantiles is None else orjson.dumps(quantiles).decode()
    values[_EXTRAPOLATED] = ",".join(values[_EXTRAPOLATED] or ())
    return tuple(values)


def json_lines(rows: Iterable[Row]) -> bytes:
    """Rows as JSON Lines, one record per line."""
    return b"".join(orjson.dumps(row_json(row)) + b"\n" for row in rows)


# -- SQL ---------------------------------------------------------------------------------
def _sql_type(spec: Any, real: str) -> str:
    if isinstance(spec, NumberField):
        return "INTEGER" if spec.integer else real
    return "TEXT"


def create_statements(real: str, time_type: str) -> list[str]:
    """The tables and indexes, derived from FIELDS (the same text for SQLite and PostgreSQL
    but for the real and time types)."""
    inputs = ",\n  ".join(f"{spec.name} {_sql_type(spec, real)} NOT NULL" for spec in FIELDS)
    return [
        f"CREATE TABLE IF NOT EXISTS {VERSIONS} (version INTEGER NOT NULL, applied {time_type} NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS {FORECASTS} (
  request_id TEXT NOT NULL,
  row INTEGER NOT NULL,
  time {time_type} NOT NULL,
  model_version TEXT NOT NULL,
  model_digest TEXT NOT NULL,
  route TEXT NOT NULL,
  caller TEXT,
  patient TEXT,
  {inputs},
  charges {real} NOT NULL,
  low {real} NOT NULL,
  high {real} NOT NULL,
  level {real} NOT NULL,
  quantiles TEXT,
  extrapolated TEXT NOT NULL,
  client_request_id TEXT,
  PRIMARY KEY (request_id, row)
)""",
        f"CREATE INDEX IF NOT EXISTS {FORECASTS}_time ON {FORECASTS} (time, request_id, row)",
        f"CREATE INDEX IF NOT EXISTS {FORECASTS}_patient ON {FORECASTS} (patient, time) WHERE patient IS NOT NULL",
        f"""CREATE TABLE IF NOT EXISTS {ACTUALS} (
  request_id TEXT NOT NULL,
  row INTEGER NOT NULL,
  charges {real} NOT NULL,
  received {time_type} NOT NULL,
  PRIMARY KEY (request_id, row)
)""",
    ]


_COLS: Final = ", ".join(COLUMNS)
_F_COLS: Final = ", ".join(f"f.{c}" for c in COLUMNS)
_SQLITE_INSERT: Final = (
    f"INSERT INTO {FORECASTS} ({_COLS}) VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT DO NOTHING"
)


def _range(since: datetime | None, until: datetime | None, column: str, mark: str, conv: Any) -> tuple[str, list[Any]]:
    where, args = [], []
    if since is not None:
        where.append(f"{column} >= {mark}")
        args.append(conv(since))
    if until is not None:
        where.append(f"{column} < {mark}")
        args.append(conv(until))
    return (" WHERE " + " AND ".join(where)) if where else "", args


def _ordered(select: str, keys: str, newest: int | None, mark: str) -> tuple[str, list[Any]]:
    """``select`` in time order; with ``newest``, only the last ``newest`` rows: read backwards
    on the time index and stopped there, so a day of records costs what ``newest`` of them do."""
    asc = ", ".join(keys.split())
    if newest is None:
        return f"{select} ORDER BY {asc}", []
    desc = ", ".join(f"{k} DESC" for k in keys.split())
    outer = ", ".join(k.split(".")[-1] for k in keys.split())
    return f"SELECT * FROM ({select} ORDER BY {desc} LIMIT {mark}) AS newest ORDER BY {outer}", [newest]


class SqliteStore:
    """SQLite in WAL mode: readers never block the writer, and the workers of one server may
    all write the same file (each waits up to ``BUSY_MS`` for another's transaction)."""

    BUSY_MS: Final = 10_000

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=self.BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA busy_timeout = {self.BUSY_MS}")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, safe on crash

    def migrate(self) -> None:
        with _Transaction(self.db):
            for statement in create_statements("REAL", "TEXT"):
                self.db.execute(statement)
            (have,) = self.db.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSIONS}").fetchone()
            if have < SCHEMA_VERSION:
                self.db.execute(f"INSERT INTO {VERSIONS} VALUES (?, ?)", (SCHEMA_VERSION, timestamp(_now())))

    def write(self, forecasts: Sequence[Forecast]) -> int:
        return self.write_rows([as_row(f) for f in forecasts])

    def write_rows(self, rows: Sequence[Row]) -> int:
        """One transaction; sqlite3 releases the GIL around each row's step, so the request
        thread is held only while a row's values are bound."""
        with _Transaction(self.db):
            before = self.db.total_changes
            self.db.executemany(_SQLITE_INSERT, rows)
            return self.db.total_changes - before

    def forecasts(
        self, since: datetime | None = None, until: datetime | None = None, newest: int | None = None
    ) -> Iterator[Forecast]:
        where, args = _range(since, until, "time", "?", timestamp)
        query, limit = _ordered(f"SELECT {_COLS} FROM {FORECASTS}{where}", "time request_id row", newest, "?")
        for row in self.db.execute(query, args + limit):
            yield from_row(row)

    def add_actuals(self, actuals: Sequence[Actual]) -> tuple[int, int]:
        rows = [(a.request_id, a.row, float(a.charges), timestamp(a.received)) for a in actuals]
        with _Transaction(self.db):
            before = self.db.total_changes
            self.db.executemany(f"INSERT INTO {ACTUALS} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)
            added = self.db.total_changes - before
        return added, len(rows) - added

    def resolve(self, patient: str) -> tuple[str, int] | None:
        found = self.db.execute(
            f"SELECT request_id, row FROM {FORECASTS} WHERE patient = ? "
            "ORDER BY time DESC, request_id DESC, row DESC LIMIT 1",
            (patient,),
        ).fetchone()
        return None if found is None else (str(found[0]), int(found[1]))

    def realised(
        self, since: datetime | None = None, until: datetime | None = None, newest: int | None = None
    ) -> Iterator[tuple[Forecast, float]]:
        where, args = _range(since, until, "f.time", "?", timestamp)
        select = (
            f"SELECT {_F_COLS}, a.charges AS paid FROM {FORECASTS} f JOIN {ACTUALS} a "
            f"ON a.request_id = f.request_id AND a.row = f.row{where}"
        )
        query, limit = _ordered(select, "f.time f.request_id f.row", newest, "?")
        for row in self.db.execute(query, args + limit):
            yield from_row(row[:-1]), float(row[-1])

    def prune(self, before: datetime) -> int:
        cut = timestamp(before)
        with _Transaction(self.db):
            self.db.execute(
                f"DELETE FROM {ACTUALS} WHERE received < ? OR EXISTS (SELECT 1 FROM {FORECASTS} f "
                f"WHERE f.request_id = {ACTUALS}.request_id AND f.row = {ACTUALS}.row AND f.time < ?)",
                (cut, cut),
            )
            return self.db.execute(f"DELETE FROM {FORECASTS} WHERE time < ?", (cut,)).rowcount

    def close(self) -> None:
        self.db.close()


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error): takes the write lock up front, so a busy
    database is waited for at the start instead of failing half way."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")


class PostgresStore:
    """PostgreSQL through psycopg 3: ``COPY`` a batch into a session's staging table, then one
    ``INSERT … SELECT … ON CONFLICT DO NOTHING``, so a batch costs two round trips whatever
    its size and a redelivered batch inserts nothing."""

    CONNECT_TIMEOUT: Final = 3
    # A database that stops answering without closing the connection (paused, partitioned) would
    # block a write until TCP gives up, minutes later: past this the connection is cut and the
    # batch spooled. Also sent as the server's statement_timeout, for one that is slow, not gone.
    WRITE_TIMEOUT: Final = 2.0

    def __init__(self, url: str) -> None:
        self.url = url
        self._db: Any = None
        # (rows, seconds): COPY a batch in pieces of so many rows, pausing between them, in one
        # transaction. The audit process sets it: a database on the same CPUs as the service
        # (at normal priority, unlike the audit process) then works in bursts of well under a
        # millisecond, not one of ~20 ms per flush that a request could wait behind.
        self.pace: tuple[int, float] | None = None

    @property
    def db(self) -> Any:
        """The connection, (re)opened on demand: a database that went away is reconnected on the
        next call rather than failing every later one."""
        import psycopg

        if self._db is None or self._db.closed or self._db.broken:
            self._db = psycopg.connect(
                self.url, connect_timeout=self.CONNECT_TIMEOUT, autocommit=False, application_name="chargecast-audit"
            )
        return self._db

    def _run(self, work: Any, deadline: float | None = None) -> Any:
        """``work(db)`` in one transaction; with a ``deadline`` (seconds), a connection that has
        not answered by then is shut down under it, so the call fails instead of hanging."""
        db = self.db
        watchdog = None
        if deadline is not None:
            watchdog = threading.Timer(deadline, _cut, (db,))
            watchdog.daemon = True
            watchdog.start()
        try:
            with db.transaction():
                return work(db)
        except Exception:
            if db.broken or db.closed or (watchdog is not None and watchdog.finished.is_set()):
                self._db = None
                with contextlib.suppress(Exception):
                    db.close()
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()

    def migrate(self) -> None:
        def run(db: Any) -> None:
            db.execute("SELECT pg_advisory_xact_lock(hashtext('chargecast_audit_migrate'))")
            for statement in create_statements("DOUBLE PRECISION", "TIMESTAMPTZ"):
                db.execute(statement)
            (have,) = db.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSIONS}").fetchone()
            if have < SCHEMA_VERSION:
                db.execute(f"INSERT INTO {VERSIONS} VALUES (%s, %s)", (SCHEMA_VERSION, _now()))

        self._run(run)

    def write(self, forecasts: Sequence[Forecast]) -> int:
        return self.write_rows([as_row(f) for f in forecasts])

    def write_rows(self, rows: Sequence[Row]) -> int:
        """``COPY`` straight into the table (one round trip, half the server's work of going
        through a staging table); a batch that holds a record already there (a redelivery)
        fails on the primary key and is rolled back, then goes through the staging table and
        ``ON CONFLICT DO NOTHING``."""
        if not rows:
            return 0
        from psycopg.errors import UniqueViolation

        def direct(db: Any) -> int:
            piece, pause = self.pace or (len(rows), 0.0)
            for start in range(0, len(rows), piece):
                if start:
                    _time.sleep(pause)
                with db.cursor().copy(f"COPY {FORECASTS} ({_COLS}) FROM STDIN") as copy:
                    for row in rows[start : start + piece]:
                        copy.write_row(row)
            return len(rows)

        def staged(db: Any) -> int:
            stage = "chargecast_forecasts_stage"
            db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {FORECASTS}) ON COMMIT DELETE ROWS")
            with db.cursor().copy(f"COPY {stage} ({_COLS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor = db.execute(f"INSERT INTO {FORECASTS} ({_COLS}) SELECT {_COLS} FROM {stage} ON CONFLICT DO NOTHING")
            return int(cursor.rowcount)

        try:
            return int(self._run(direct, self.WRITE_TIMEOUT))
        except UniqueViolation:
            return int(self._run(staged, self.WRITE_TIMEOUT))

    def _stream(self, query: str, args: list[Any]) -> Iterator[tuple[Any, ...]]:
        """Rows through a server-side cursor: an export of months holds one batch in memory."""
        db = self.db
        with db.transaction(), db.cursor(name=f"chargecast_{uuid.uuid4().hex}") as cursor:
            cursor.itersize = 2000
            cursor.execute(query, args)
            yield from cursor

    def forecasts(
        self, since: datetime | None = None, until: datetime | None = None, newest: int | None = None
    ) -> Iterator[Forecast]:
        where, args = _range(since, until, "time", "%s", _utc)
        query, limit = _ordered(f"SELECT {_COLS} FROM {FORECASTS}{where}", "time request_id row", newest, "%s")
        for row in self._stream(query, args + limit):
            yield from_row(row)

    def add_actuals(self, actuals: Sequence[Actual]) -> tuple[int, int]:
        if not actuals:
            return 0, 0
        rows = [(a.request_id, a.row, float(a.charges), _utc(a.received)) for a in actuals]

        def run(db: Any) -> int:
            added = 0
            with db.cursor() as cursor:
                for row in rows:  # executemany's rowcount is not summed by every psycopg release
                    cursor.execute(f"INSERT INTO {ACTUALS} VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", row)
                    added += cursor.rowcount
            return added

        added = int(self._run(run))
        return added, len(rows) - added

    def resolve(self, patient: str) -> tuple[str, int] | None:
        def run(db: Any) -> Any:
            return db.execute(
                f"SELECT request_id, row FROM {FORECASTS} WHERE patient = %s "
                "ORDER BY time DESC, request_id DESC, row DESC LIMIT 1",
                (patient,),
            ).fetchone()

        found = self._run(run)
        return None if found is None else (str(found[0]), int(found[1]))

    def realised(
        self, since: datetime | None = None, until: datetime | None = None, newest: int | None = None
    ) -> Iterator[tuple[Forecast, float]]:
        where, args = _range(since, until, "f.time", "%s", _utc)
        select = (
            f"SELECT {_F_COLS}, a.charges AS paid FROM {FORECASTS} f JOIN {ACTUALS} a "
            f"ON a.request_id = f.request_id AND a.row = f.row{where}"
        )
        query, limit = _ordered(select, "f.time f.request_id f.row", newest, "%s")
        for row in self._stream(query, args + limit):
            yield from_row(row[:-1]), float(row[-1])

    def prune(self, before: datetime) -> int:
        cut = _utc(before)

        def run(db: Any) -> int:
            db.execute(
                f"DELETE FROM {ACTUALS} a WHERE a.received < %s OR EXISTS (SELECT 1 FROM {FORECASTS} f "
                "WHERE f.request_id = a.request_id AND f.row = a.row AND f.time < %s)",
                (cut, cut),
            )
            return int(db.execute(f"DELETE FROM {FORECASTS} WHERE time < %s", (cut,)).rowcount)

        return int(self._run(run))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _cut(db: Any) -> None:
    """Shut a connection's socket down from another thread: the call blocked on it fails at once."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = db.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware (UTC)")
    return moment.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


# -- JSON Lines files ----------------------------------------------------------------------
class FileStore:
    """JSON Lines files in one directory, for shipping to object storage (Parquet comes from
    ``chargecast audit export --format parquet``: serving may not import pyarrow).

    Each process appends to its own ``forecasts-<start>-<pid>-<random>.jsonl`` and starts a new
    one past ``max_bytes`` or ``max_seconds``; every write is fsync'd. Files are append-only, so
    a duplicate cannot be refused at write time across processes: this store drops the ones
    it has seen itself recently, and every reader here dedupes on ``(request_id, row)``
    (the first written wins), as an export to another system must.
    """

    SEEN: Final = 1 << 20  # keys remembered to absorb this process's own redeliveries

    def __init__(self, path: Path, max_bytes: int = 64 << 20, max_seconds: float = 3600.0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self._file: Any = None
        self._opened = 0.0
        self._seen: dict[tuple[str, int], None] = {}

    def migrate(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        version = self.path / "schema-version"
        if not version.exists() or int(version.read_text() or 0) < SCHEMA_VERSION:
            version.write_text(f"{SCHEMA_VERSION}\n")

    def _target(self) -> Any:
        now = _time.time()
        if self._file is not None and (self._file.tell() >= self.max_bytes or now - self._opened >= self.max_seconds):
            self._file.close()
            self._file = None
        if self._file is None:
            self.path.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            name = f"forecasts-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._file = open(self.path / name, "ab")  # noqa: SIM115 - held open across writes
            self._opened = now
        return self._file

    def write(self, forecasts: Sequence[Forecast]) -> int:
        return self.write_rows([as_row(f) for f in forecasts])

    def write_rows(self, rows: Sequence[Row]) -> int:
        fresh = []
        for row in rows:
            key = (row[0], row[1])
            if key not in self._seen:
                self._seen[key] = None
                fresh.append(row)
        while len(self._seen) > self.SEEN:
            del self._seen[next(iter(self._seen))]
        if fresh:
            _write_synced(self._target(), json_lines(fresh))
        return len(fresh)

    def _lines(self, pattern: str) -> Iterator[dict[str, Any]]:
        for name in sorted(self.path.glob(pattern)):
            with open(name, "rb") as handle:
                for line in handle:
                    if line.endswith(b"\n"):  # a torn last line (crash mid-write) is skipped
                        yield json.loads(line)

    def forecasts(
        self, since: datetime | None = None, until: datetime | None = None, newest: int | None = None
    ) -> Iterator[Forecast]:
        """Files have no index: every line is read, whatever ``newest`` is."""
        low = timestamp(since) if since is not None else ""
        high = timestamp(until) if until is not None else "~"
        seen: dict[tuple[str, int], dict[str, Any]] = {}
        for record in self._lines("forecasts-*.jsonl"):
            if low <= record["time"] < high:
                seen.setdefault((record["request_id"], record["row"]), record)
        ordered = sorted(seen.values(), key=lambda r: (r["time"], r["request_id"], r["row"]))
        if newest is not None:
            ordered = ordered[max(len(ordered) - newest, 0) :]
        return (from_json(r) for r in ordered)

    def _actuals(self) -> dict[tuple[str, int], float]:
        known: dict[tuple[str, int], float] = {}
        for record in self._lines("actuals-*.jsonl"):
            known.setdefault((record["request_id"], record["row"]), float(record["charges"]))
        return known

    def add_actuals(self, actuals: Sequence[Actual]) -> tuple[int, int]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "actuals-all.jsonl", "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # read-check-append as one step across processes
            known = self._actuals()
            fresh = []
            for a in actuals:
                if (a.request_id, a.row) not in known:
                    known[(a.request_id, a.row)] = a.charges
                    received = timestamp(a.received)
                    fresh.append({"request_id": a.request_id, "row": a.row, "charges": a.charges, "received": received})
            _append(handle, fresh)
        return len(fresh), len(actuals) - len(fresh)

    def resolve(self, patient: str) -> tuple[str, int] | None:
        latest = None
        for f in self.forecasts():
            if f.patient == patient:
                latest = (f.request_id, f.row)
        return latest

    def realised(
        self, since: datetime | None = None, until: datetime | None = None, newest: int | None = None
    ) -> Iterator[tuple[Forecast, float]]:
        known = self._actuals()
        paid = [
            (f, known[(f.request_id, f.row)]) for f in self.forecasts(since, until) if (f.request_id, f.row) in known
        ]
        yield from paid if newest is None else paid[max(len(paid) - newest, 0) :]

    def prune(self, before: datetime) -> int:
        """Rewrite every file without what is older than ``before`` (each atomically, by rename)."""
        cut = timestamp(before)
        removed = 0
        pruned: set[tuple[str, int]] = set()
        for name in sorted(self.path.glob("forecasts-*.jsonl")):
            kept = []
            for record in self._lines(name.name):
                if record["time"] < cut:
                    pruned.add((record["request_id"], record["row"]))
                else:
                    kept.append(record)
            removed += _rewrite(name, kept)
        actuals = self.path / "actuals-all.jsonl"
        if actuals.exists():
            kept = [r for r in self._lines(actuals.name) if r["received"] >= cut]
            kept = [r for r in kept if (r["request_id"], r["row"]) not in pruned]
            _rewrite(actuals, kept)
        return len(pruned) if removed else 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _append(handle: Any, records: Iterable[dict[str, Any]]) -> None:
    _write_synced(handle, b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records))


def _write_synced(handle: Any, data: bytes) -> None:
    if data:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _rewrite(path: Path, records: list[dict[str, Any]]) -> int:
    """Replace a file by its kept records; returns how many lines went."""
    before = sum(1 for _ in open(path, "rb"))  # noqa: SIM115
    if before == len(records):
        return 0
    if not records:
        path.unlink()
        return before
    temp = path.with_suffix(".tmp")
    with open(temp, "wb") as handle:
        _append(handle, records)
    temp.replace(path)
    return before - len(records)
