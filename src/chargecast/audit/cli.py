"""The ``chargecast audit {migrate,prune,export}`` commands, and the log ``chargecast predict --audit`` writes.

The log is named by a URL (``--audit``, else ``CHARGECAST_AUDIT_URL``; ``off`` disables it),
so one command line serves SQLite, PostgreSQL and the JSON Lines file sink alike. An export
is an auditor's extract: every column of the forecasts table, one row per forecast, written
to a temporary file and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from chargecast.argtypes import duration, moment
from chargecast.audit.runlog import PATIENT_SETTING, RunLog, os_user
from chargecast.audit.store import SCHEMA_VERSION, AuditUrlError, Forecast, Store, open_store, redact
from chargecast.model.artifact import METADATA_FILE, Artifact, sha256_file
from chargecast.schema import FEATURES, FIELDS, CategoryField, NumberField

URL_SETTING: Final = "CHARGECAST_AUDIT_URL"
EXPORT_FORMATS: Final = ("csv", "parquet")
EXPORT_BATCH: Final = 65_536  # rows per Parquet row group while exporting
HEAD: Final = ("request_id", "row", "time", "model_version", "model_digest", "route", "caller", "patient")
TAIL: Final = ("charges", "low", "high", "level", "quantiles", "extrapolated", "client_request_id")
COLUMNS: Final = (*HEAD, *FEATURES, *TAIL)


class AuditError(Exception):
    """The audit log cannot be opened, read or written as asked; the message says why."""


def chosen_url(given: str | None) -> str | None:
    """``--audit``, else ``CHARGECAST_AUDIT_URL``; None (no log) when neither is set or either says ``off``."""
    if given is None:
        given = os.environ.get(URL_SETTING)
    if given is None or given.strip().lower() in ("", "off"):
        return None
    return given.strip()


def connect(url: str | None) -> Store:
    """Open (not yet migrate) the store at ``url``; every failure becomes one line naming the log."""
    if url is None:
        raise AuditError(f"no audit log: give --audit URL or set {URL_SETTING}")
    try:
        store = open_store(url)  # SQLite opens its file here: a path it cannot open fails here
        store.migrate()  # connects: an unreachable database is an input error, not a bug
    except AuditUrlError as exc:
        raise AuditError(f"--audit: {exc}") from None
    except unreachable() as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuditError(f"--audit: cannot use the audit log at {redact(url)}: {reason}") from None
    return store


def unreachable() -> tuple[type[Exception], ...]:
    """What a missing or refusing database raises: sqlite3's and psycopg's errors, and OS errors."""
    errors: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
    with contextlib.suppress(ImportError):
        import psycopg

        errors = (*errors, psycopg.Error)
    return errors


@dataclass
class PredictLog:
    """The audit log of one ``chargecast predict`` run (``run`` is None when logging is off)."""

    run: RunLog | None = None
    store: Store | None = None
    where: str = ""

    def close(self) -> None:
        if self.run is not None:
            self.run.close()
        if self.store is not None:
            self.store.close()


def run_log(model_dir: Path, given: str | None, sha256: str | None = None) -> tuple[Artifact, PredictLog]:
    """The model, and the log its forecasts go to: the store is opened before any input is read, so
    a bad URL or an unreachable database stops the run before it writes anything. ``sha256`` pins
    the metadata.json the model must be built from (the one whose signature was checked)."""
    url = chosen_url(given)
    if url is None:
        return Artifact.load(model_dir, sha256), PredictLog()
    store = connect(url)
    try:
        model, digest = pinned(model_dir, sha256)
        key = os.environ.get(PATIENT_SETTING, "").encode("utf-8")
        run = RunLog(store, model, digest, patient_key=key or None, caller=os_user())
    except BaseException:
        store.close()
        raise
    return model, PredictLog(run, store, redact(url))


def pinned(model_dir: Path, sha256: str | None = None) -> tuple[Artifact, str]:
    """The model and the sha256 of the very metadata.json it was built from: the digest is taken
    first (or given) and the load is pinned to it, so a ``models/current`` link moved meanwhile is
    an error, not a record naming another model."""
    if sha256 is not None:
        return Artifact.load(model_dir, sha256), sha256
    meta = Path(model_dir) / METADATA_FILE
    if not meta.is_file():
        Artifact.load(model_dir)  # raises the artifact's own message (not a model directory)
    try:
        digest = sha256_file(meta)
    except OSError as exc:
        raise AuditError(f"{meta}: cannot read ({exc.strerror or exc})") from None
    return Artifact.load(model_dir, digest), digest


def add_audit_parser(sub: Any) -> None:
    """``chargecast audit …``: the subcommands and their options (bad values are argparse errors, exit 2)."""
    a = sub.add_parser("audit", help="the forecast audit log: create its tables, prune it, export it")
    commands = a.add_subparsers(dest="audit_command", required=True)
    log = argparse.ArgumentParser(add_help=False)
    log.add_argument(
        "--audit", metavar="URL", help=f"sqlite:///PATH, postgresql://…, file:///DIR (default: ${URL_SETTING})"
    )

    m = commands.add_parser("migrate", parents=[log], help="create or upgrade the tables; print the schema version")
    m.set_defaults(func=_migrate)

    p = commands.add_parser("prune", parents=[log], help="delete forecasts (and their actuals) older than a period")
    p.add_argument("--older-than", type=duration, required=True, metavar="PERIOD", help="like 90d, 12h or 30m")
    p.set_defaults(func=_prune)

    e = commands.add_parser("export", parents=[log], help="write the forecasts of a time window to CSV or Parquet")
    e.add_argument("--since", type=moment, required=True, metavar="DATE", help="first instant, inclusive (UTC)")
    e.add_argument("--until", type=moment, required=True, metavar="DATE", help="end, exclusive (UTC)")
    e.add_argument("--format", choices=EXPORT_FORMATS, help="default: parquet for a .parquet/.pq file, else csv")
    e.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    e.set_defaults(func=_export)


def _migrate(args: argparse.Namespace) -> int:
    with contextlib.closing(connect(chosen_url(args.audit))) as store:
        store.migrate()
    print(f"audit log schema version {SCHEMA_VERSION}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    before = datetime.now(UTC) - args.older_than
    with contextlib.closing(connect(chosen_url(args.audit))) as store:
        deleted = store.prune(before)
    print(f"{deleted:,} forecasts (and their actuals) older than {before.isoformat(timespec='seconds')} deleted")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.until <= args.since:
        raise AuditError(f"--until ({args.until.isoformat()}) must be after --since ({args.since.isoformat()})")
    out: Path = args.output
    fmt = args.format or ("parquet" if out.suffix.lower() in (".parquet", ".pq") else "csv")
    if not out.parent.is_dir():
        raise AuditError(f"{out}: the output directory {out.parent} does not exist")
    if out.is_dir():
        raise AuditError(f"{out}: is a directory")
    url = chosen_url(args.audit)
    write = _write_parquet if fmt == "parquet" else _write_csv
    with contextlib.closing(connect(url)) as store:
        records = forecasts(store, args.since, args.until, dedupe=(url or "").startswith("file:"))
        rows = _atomically(out, lambda handle: write(records, handle))
    print(f"{rows:,} forecasts from {args.since.isoformat()} until {args.until.isoformat()} -> {out}")
    return 0


def forecasts(store: Store, since: datetime, until: datetime, *, dedupe: bool) -> Iterator[Forecast]:
    """The window's forecasts; ``dedupe`` drops a repeated (request_id, row), which a JSON Lines
    file may hold after a crash between a write and its acknowledgement (the first one wins)."""
    seen: set[tuple[str, int]] = set()
    for record in store.forecasts(since, until):
        if dedupe:
            key = (record.request_id, record.row)
            if key in seen:
                continue
            seen.add(key)
        yield record


def _atomically(dest: Path, write: Callable[[IO[bytes]], int]) -> int:
    """Write through ``write`` into a hidden file beside ``dest``, renamed over it only on success."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.partial")
    try:
        with tmp.open("xb") as handle:
            rows = write(handle)
        os.replace(tmp, dest)
    except OSError as exc:
        raise AuditError(f"{dest}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def cells(record: Forecast) -> list[Any]:
    """One forecast as export cells, in :data:`COLUMNS` order (integers as ints, None as None)."""
    inputs = [
        int(record.inputs[spec.name]) if isinstance(spec, NumberField) and spec.integer else record.inputs[spec.name]
        for spec in FIELDS
    ]
    quantiles = None if record.quantiles is None else json.dumps(record.quantiles, separators=(",", ":"))
    head = [record.request_id, record.row, record.time.astimezone(UTC), record.model_version, record.model_digest]
    return [
        *head,
        record.route,
        record.caller,
        record.patient,
        *inputs,
        record.charges,
        record.low,
        record.high,
        record.level,
        quantiles,
        ";".join(record.extrapolated),
        record.client_request_id,
    ]


def _write_csv(records: Iterator[Forecast], handle: IO[bytes]) -> int:
    """CSV text: ISO 8601 UTC times, floats as Python writes them (exact round trip), None empty."""
    text = _Text(handle)
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    rows = 0
    for record in records:
        row = cells(record)
        row[2] = row[2].isoformat()
        writer.writerow(["" if v is None else v for v in row])
        rows += 1
    return rows


class _Text:
    """The csv module writes str; the temporary file is binary (opened exclusively)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def write(self, text: str) -> int:
        return self.handle.write(text.encode("utf-8"))


def _write_parquet(records: Iterator[Forecast], handle: IO[bytes]) -> int:
    """Parquet via pyarrow (the batch extra), a row group per :data:`EXPORT_BATCH` forecasts."""
    pa, pq = _pyarrow()
    schema = _arrow_schema(pa)
    rows = 0
    with pq.ParquetWriter(handle, schema) as writer:
        batch: list[list[Any]] = []
        for record in records:
            batch.append(cells(record))
            if len(batch) == EXPORT_BATCH:
                writer.write_table(_table(pa, schema, batch))
                rows, batch = rows + len(batch), []
        if batch or not rows:
            writer.write_table(_table(pa, schema, batch))
            rows += len(batch)
    return rows


def _pyarrow() -> tuple[Any, Any]:
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise AuditError(
            "a Parquet export needs pyarrow: pip install 'chargecast[batch]' (or use --format csv)"
        ) from None


def _arrow_schema(pa: Any) -> Any:
    def kind(name: str) -> Any:
        spec = next((f for f in FIELDS if f.name == name), None)
        if isinstance(spec, CategoryField):
            return pa.string()
        if spec is not None:
            return pa.int64() if spec.integer else pa.float64()
        return _ARROW[name](pa)

    return pa.schema([pa.field(name, kind(name), nullable=True) for name in COLUMNS])


_ARROW: Final[dict[str, Callable[[Any], Any]]] = {
    "row": lambda pa: pa.int64(),
    "time": lambda pa: pa.timestamp("us", tz="UTC"),
    **{name: (lambda pa: pa.float64()) for name in ("charges", "low", "high", "level")},
    **{
        name: (lambda pa: pa.string())
        for name in (*HEAD, *TAIL)
        if name not in ("row", "time", "charges", "low", "high", "level")
    },
}


def _table(pa: Any, schema: Any, batch: list[list[Any]]) -> Any:
    columns: list[tuple[Any, ...]] = list(zip(*batch, strict=True)) if batch else [() for _ in COLUMNS]
    return pa.Table.from_arrays(
        [pa.array(list(c), f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )
