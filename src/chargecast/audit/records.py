"""How what a route answered becomes the table's rows.

A route queues an *entry*: a plain tuple of what it validated and what it answered (the
encoded rows, the answer as bytes or arrays, the request's ids, the caller's label). The
audit writer turns entries into rows (:data:`~chargecast.audit.store.Row`, tuples in the
table's column order) later, in its own process: parsing the answer that was sent, hashing
patient references, flagging extrapolation. So a record holds exactly what was answered,
and the request pays for queueing a tuple.

An entry is ``(kind, time, route, request_id, client_request_id, caller, *data)``; ``kind``
says what ``data`` holds (see :meth:`Builder.build`). Entries carry no model: a worker serves
one model for its life, and the builder is told which (:class:`ModelRef`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from chargecast.audit.patient import patient_hash
from chargecast.audit.store import Row, stamp
from chargecast.schema import FIELDS, CategoryField

ONE, MANY, BARE, FORM, ARRAYS = range(5)  # what an entry's data holds (see Builder.build)


def _converter(spec: Any) -> Callable[[float], Any]:
    """How an encoded input becomes its column: a category's canonical value (a dict lookup on
    the code, a float), an integer, a number. All built-ins, so no Python frame per value."""
    if isinstance(spec, CategoryField):
        return {float(i): choice for i, choice in enumerate(spec.choices)}.__getitem__
    return int if spec.integer else float


_CONVERTERS: Final = tuple(_converter(spec) for spec in FIELDS)


def _values(row: Sequence[float]) -> list[Any]:
    return list(map(operator.call, _CONVERTERS, row))


@dataclass
class ModelRef:
    """The served model as the writer needs it: its identity for every record, and (for the
    routes whose answer lacks the interval or the flags) the artifact itself, loaded from its
    verified directory pinned to the digest the worker served, on first need."""

    version: str
    level: float
    digest: str  # sha256 of metadata.json
    root: Path
    _artifact: Any = field(default=None, repr=False)

    @classmethod
    def of(cls, model: Any, digest: str) -> ModelRef:
        return cls(model.version, model.level, digest, Path(model.path), model)

    @property
    def artifact(self) -> Any:
        if self._artifact is None:
            from chargecast.model.artifact import Artifact

            self._artifact = Artifact.load(self.root, self.digest or None)
        return self._artifact

    def describe(self) -> tuple[str, float, str, str]:
        """What crosses to the writer's process (never the arrays)."""
        return self.version, self.level, self.digest, str(self.root)


class Builder:
    """Rows from entries, for one model and one patient key."""

    def __init__(self, key: bytes | None, model: ModelRef | None = None) -> None:
        self.key = key
        self.model = model

    def _hash(self, ref: str | None) -> str | None:
        if ref is None or self.key is None:
            return None
        return patient_hash(self.key, ref)

    def build(self, entry: Any) -> list[Row]:
        """Rows (tuples in the table's column order) from an entry: its encoded inputs, and
        the answer as it was sent. No object per record: at full load this is most of the
        writer's work."""
        kind, moment, route, request_id, client_id, caller, *data = entry
        model = self.model
        if model is None:
            raise RuntimeError("an audit entry arrived before the writer was told the model")
        head = (stamp(moment), model.version, model.digest, route, caller)
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
            artifact = model.artifact
            p = artifact.predict_row(x)  # the answer was p.charges alone: the same call gives its interval
            flags = ",".join(artifact.extrapolated(x))
            return [
                (request_id, 0, *head, hash_(ref), *_values(x), charges, p.low, p.high, level, None, flags, client_id)
            ]
        if kind == FORM:
            x, charges, low, high, median = data
            flags = ",".join(model.artifact.extrapolated(x))
            quantiles = orjson.dumps({"0.5": median}).decode()
            values = (*_values(x), charges, low, high, level, quantiles, flags, client_id)
            return [(request_id, 0, *head, None, *values)]
        X, charges, low, high, refs = data
        columns = zip(
            X.tolist(), charges.tolist(), low.tolist(), high.tolist(), model.artifact.extrapolated_rows(X), strict=True
        )
        return [
            (request_id, i, *head, hash_(refs[i] if refs is not None else None), *_values(x), c, lo, hi, level, None,
             ",".join(f), client_id)
            for i, (x, c, lo, hi, f) in enumerate(columns)
        ]  # fmt: skip


def count(entry: Any) -> int:
    """How many records an entry holds: one, or a row per line of its matrix."""
    return len(entry[6]) if entry[0] in (MANY, ARRAYS) else 1
