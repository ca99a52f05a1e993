"""The audit log from the routes' side: what a request hands over, and how it becomes records.

A route calls one of :class:`Audit`'s methods after it has its answer; that appends one
tuple to the writer's queue (the validated rows and the answer as bytes or arrays, the
request's ids, the caller's label) and nothing else. The writer thread turns tuples into
:class:`~chargecast.audit.store.Forecast` records later (:meth:`Audit.build`): parsing the
answer it sent, hashing patient references, flagging extrapolation. So the record holds
exactly what was answered, and the request pays for a tuple and a lock.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from starlette.types import Scope

from chargecast.audit.store import Forecast, Store, open_store
from chargecast.audit.writer import Spool, Writer
from chargecast.model.artifact import Artifact
from chargecast.schema import FIELDS, PATIENT_REF, CategoryField, Issue
from chargecast.serving.errors import invalid
from chargecast.settings import Settings

CALLER: Final = "chargecast.caller"  # scope key: the IAP email or the API-key label the gate matched
ONE, MANY, BARE, FORM, ARRAYS = range(5)  # what an entry holds (see Audit.build)
Outcome = tuple[float, float, float, Any, Sequence[str]]  # charges, low, high, quantiles, extrapolated
NO_KEY_RULE: Final = (
    "cannot be stored: the server has no patient key to hash it with (CHARGECAST_AUDIT_PATIENT_KEY); "
    "send the record without it"
)


def _inputs(row: Sequence[float]) -> dict[str, float | str]:
    return {
        spec.name: spec.choices[int(v)] if isinstance(spec, CategoryField) else float(v)
        for spec, v in zip(FIELDS, row, strict=True)
    }


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
        return hmac.new(self.key, ref.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def build(self, entry: Any) -> list[Forecast]:
        """Records from an entry: rows, and the answer as it was sent."""
        kind, moment, route, request_id, client_id, caller, model, *data = entry
        when = datetime.fromtimestamp(moment, UTC)
        common = (when, model.version, self.digest, route, caller)

        def record(
            row: int, x: Sequence[float], ref: Any, out: tuple[float, float, float, Any, Sequence[str]]
        ) -> Forecast:
            return Forecast(
                request_id, row, *common, self._hash(ref), _inputs(x), out[0], out[1], out[2], model.level,
                out[3], tuple(out[4]), client_id,
            )  # fmt: skip

        if kind == ONE:
            x, body, ref = data
            a = orjson.loads(body)
            interval = a["interval"]
            flags = a.get("extrapolated", ())
            return [record(0, x, ref, (a["charges"], interval["low"], interval["high"], a.get("quantiles"), flags))]
        if kind == MANY:
            X, body, refs = data
            predictions = orjson.loads(body)["predictions"]
            out = []
            for i, (x, p) in enumerate(zip(X.tolist(), predictions, strict=True)):
                ref = refs[i] if refs is not None else None
                interval = p["interval"]
                outcome = (
                    p["charges"],
                    interval["low"],
                    interval["high"],
                    p.get("quantiles"),
                    p.get("extrapolated", ()),
                )
                out.append(record(i, x, ref, outcome))
            return out
        if kind == BARE:
            x, charges, ref = data
            p = model.predict_row(x)  # the answer was p.charges alone: the same call gives its interval
            return [record(0, x, ref, (charges, p.low, p.high, None, model.extrapolated(x)))]
        if kind == FORM:
            x, result = data
            median = {"0.5": result.median}
            return [record(0, x, None, (result.charges, result.low, result.high, median, model.extrapolated(x)))]
        X, charges, low, high, refs = data
        flags = model.extrapolated_rows(X)
        columns = zip(X.tolist(), charges.tolist(), low.tolist(), high.tolist(), flags, strict=True)
        return [
            record(i, x, refs[i] if refs is not None else None, (c, lo, hi, None, f))
            for i, (x, c, lo, hi, f) in enumerate(columns)
        ]
