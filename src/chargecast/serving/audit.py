"""The audit log from the routes' side: what a request hands over, and how it becomes records.

A route calls one of :class:`Audit`'s methods after it has its answer; that appends one
tuple to the writer's queue (the validated rows and the answer as bytes or arrays, the
request's ids, the caller's label) and nothing else. The writer thread turns them into the
table's rows later (:meth:`Audit.build`, plain tuples: :data:`~chargecast.audit.store.Row`):
parsing the answer it sent, hashing patient references, flagging extrapolation. So the record
holds exactly what was answered, and the request pays for a tuple and a lock.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson
from starlette.types import Scope

from chargecast.audit.patient import patient_hash
from chargecast.audit.store import Row, Store, open_store, stamp
from chargecast.audit.writer import Spool, Writer
from chargecast.model.artifact import Artifact
from chargecast.schema import FIELDS, PATIENT_REF, CategoryField, Issue
from chargecast.serving.errors import invalid
from chargecast.settings import Settings

# What one queued one-record entry holds at most (its tuple, ids, encoded row and the compacted
# answer, with a 128-character client id and patient reference; measured 0.7-1.04 KiB, tested):
# the queue's bound in bytes is audit_queue_size times this (docs/limits.md).
QUEUED_RECORD_BYTES: Final = 1280
CALLER: Final = "chargecast.caller"  # scope key: the IAP email or the API-key label the gate matched
ONE, MANY, BARE, FORM, ARRAYS = range(5)  # what an entry holds (see Audit.build)
NO_KEY_RULE: Final = (
    "cannot be stored: the server has no patient key to hash it with (CHARGECAST_AUDIT_PATIENT_KEY); "
    "send the record without it"
)


def _converter(spec: Any) -> Callable[[float], Any]:
    """How an encoded input becomes its column: a category's canonical value (a dict lookup on
    the code, a float), an integer, a number. All built-ins, so no Python frame per value."""
    if isinstance(spec, CategoryField):
        return {float(i): choice for i, choice in enumerate(spec.choices)}.__getitem__
    return int if spec.integer else float


_CONVERTERS: Final = tuple(_converter(spec) for spec in FIELDS)


def _values(row: Sequence[float]) -> list[Any]:
    return list(map(operator.call, _CONVERTERS, row))


def compact(body: bytes) -> bytes:
    """The answer's bytes in a buffer of their size: orjson's output keeps the buffer it grew
    (4 KiB for a 140-byte answer), and a queued answer would hold all of it until written."""
    return memoryview(body).tobytes()


class Audit:
    """One worker's audit log: the writer, the patient key, and the entries routes submit."""

    def __init__(self, settings: Settings) -> None:
        self.key = settings.patient_key()
        self.digest = ""  # sha256 of the served model's metadata.json, set once it is loaded
        url = settings.audit_url

        def connect() -> Store:
            store = open_store(url)
            store.migrate()
            return store

        self.writer = Writer(
            connect,
            self.build,
            Spool(settings.spool_dir(), settings.audit_spool_max_bytes),
            settings.audit_queue_size,
            settings.audit_batch_size,
            settings.audit_flush_seconds,
        )

    # -- the request side ------------------------------------------------------------------
    def refs(self, payload: Any) -> Any:
        """The patient references of a body (one, a list, or None); a 422 if any is given but
        no key is configured to hash it with."""
        if type(payload) is dict:
            found: Any = payload.get(PATIENT_REF) or None
            given = found is not None
        else:
            found = [item.get(PATIENT_REF) or None for item in payload]
            given = any(r is not None for r in found)
            found = found if given else None
        if given:
            self.require_key()
        return found

    def require_key(self) -> None:
        """A patient reference was sent: refuse it (422) unless there is a key to hash it with."""
        if self.key is None:
            raise invalid([Issue(PATIENT_REF, NO_KEY_RULE)], what="record")

    def submit(self, scope: Scope, route: str, model: Artifact, kind: int, rows: int, *data: Any) -> None:
        state = scope["state"]
        entry = (kind, time.time(), route, state["request_id"], state.get("client_request_id"), scope.get(CALLER))
        self.writer.submit((*entry, model, *data), rows)

    # -- the writer thread -----------------------------------------------------------------
    def _hash(self, ref: str | None) -> str | None:
        if ref is None or self.key is None:
            return None
        return patient_hash(self.key, ref)

    def build(self, entry: Any) -> list[Row]:
        """Rows (tuples in the table's column order) from an entry: its encoded inputs, and
        the answer as it was sent. No object per record: this runs in the worker's process,
        so every microsecond here is taken from the requests."""
        kind, moment, route, request_id, client_id, caller, model, *data = entry
        head = (stamp(moment), model.version, self.digest, route, caller)
        level = model.level
        hash_ = self._hash

        if kind == ONE:
            x, body, ref = data
            a = orjson.loads(body)
            interval = a["interval"]
            quantiles = a.get("quantiles")
            return [
                (request_id, 0, *head, hash_(ref), *_values(x), a["charges"], interval["low"], interval["high"],
                 level, None if quantiles is None else orjson.dumps(quantiles).decode(),
                 ",".join(a.get("extrapolated", ())), client_id)
            ]  # fmt: skip
        if kind == MANY:
            X, body, refs = data
            predictions = orjson.loads(body)["predictions"]
            out = []
            for i, (x, p) in enumerate(zip(X.tolist(), predictions, strict=True)):
                interval = p["interval"]
                quantiles = p.get("quantiles")
                out.append(
                    (request_id, i, *head, hash_(refs[i] if refs is not None else None), *_values(x), p["charges"],
                     interval["low"], interval["high"], level,
                     None if quantiles is None else orjson.dumps(quantiles).decode(),
                     ",".join(p.get("extrapolated", ())), client_id)
                )  # fmt: skip
            return out
        if kind == BARE:
            x, charges, ref = data
            p = model.predict_row(x)  # the answer was p.charges alone: the same call gives its interval
            flags = ",".join(model.extrapolated(x))
            return [
                (request_id, 0, *head, hash_(ref), *_values(x), charges, p.low, p.high, level, None, flags, client_id)
            ]
        if kind == FORM:
            x, result = data
            median = orjson.dumps({"0.5": result.median}).decode()
            flags = ",".join(model.extrapolated(x))
            values = (*_values(x), result.charges, result.low, result.high, level, median, flags, client_id)
            return [(request_id, 0, *head, None, *values)]
        X, charges, low, high, refs = data
        columns = zip(
            X.tolist(), charges.tolist(), low.tolist(), high.tolist(), model.extrapolated_rows(X), strict=True
        )
        return [
            (request_id, i, *head, hash_(refs[i] if refs is not None else None), *_values(x), c, lo, hi, level, None,
             ",".join(f), client_id)
            for i, (x, c, lo, hi, f) in enumerate(columns)
        ]  # fmt: skip
