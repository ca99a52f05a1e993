"""Actual charges, reported after the stay: validated, resolved to their forecast, stored.

One implementation for ``POST /api/v1/actuals`` and ``chargecast monitor performance
--actuals FILE``. An actual names its forecast by ``request_id`` and ``row`` (what the audit
log keys forecasts by; a response's ``X-Audit-Request-ID`` header) or by ``patient_ref``,
hashed with the audit log's patient key by the audit log's own function
(:func:`chargecast.audit.patient.patient_hash`) and resolved to the latest forecast for that
patient. A batch is taken whole or not at all: every problem is reported at once, naming
the item, field and rule. An unknown ``request_id`` is stored anyway (its forecast may still
be in a worker's queue), an unknown ``patient_ref`` is refused (there is nothing to store it
under). No numpy work and no plotting: serving imports it.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson

from chargecast.audit.patient import patient_hash
from chargecast.audit.store import Actual, Store
from chargecast.csvformat import Text, file_blocks, normalize
from chargecast.schema import MAX_REPORTED_ISSUES, PATIENT_REF_MAX_CHARS, Issue, ValidationError

MAX_ACTUALS: Final = 10_000  # items in one request or file load chunk
MAX_ROW: Final = 10_000_000  # far above the CSV route's row limit
REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)  # the ids the service mints
REQUEST_ID_RULE: Final = "must be a request id: 1 to 128 of A-Z a-z 0-9 . _ : -"
ROW_RULE: Final = f"must be a whole number from 0 to {MAX_ROW:,}"
CHARGES_RULE: Final = "must be a finite number >= 0 (USD)"
REF_RULE: Final = f"must be a non-empty string of at most {PATIENT_REF_MAX_CHARS} characters"
KEYS: Final = frozenset({"request_id", "row", "patient_ref", "charges"})
NO_KEY_RULE: Final = (
    "cannot be resolved: this server keeps patient references only as an HMAC and has no "
    "CHARGECAST_AUDIT_PATIENT_KEY set (send request_id and row instead)"
)
UNKNOWN_REF_RULE: Final = "matches no logged forecast (send request_id and row, or retry once it is logged)"


@dataclass(frozen=True)
class Claim:
    """One validated actual: either (request_id, row) or patient_ref, and the charges."""

    where: str  # "" for a single object, "[3]." in a list
    charges: float
    request_id: str | None = None
    row: int | None = None
    patient_ref: str | None = None
    line: int | None = None  # in a file, the line the record is on


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def check_item(obj: Any, where: str = "", line: int | None = None) -> tuple[Claim | None, list[Issue]]:
    """One actual; ``where`` prefixes field names (``[3].charges``), ``line`` numbers a file's."""
    claim, issues = _check(obj, where)
    if line is not None:
        issues = [Issue(i.field, i.rule, i.value, line) for i in issues]
        claim = None if claim is None else replace(claim, line=line)
    return claim, issues


def _check(obj: Any, where: str) -> tuple[Claim | None, list[Issue]]:
    if not isinstance(obj, dict):
        return None, [Issue(where.rstrip(".") or "body", "must be an object with request_id, row and charges", None)]
    issues = [Issue(f"{where}{k}"[:100], "is not a known field", None) for k in obj if k not in KEYS]
    charges = _number(obj.get("charges"))
    if charges is None or not math.isfinite(charges) or charges < 0:
        issues.append(Issue(f"{where}charges", CHARGES_RULE, obj.get("charges")))
    ref = obj.get("patient_ref")
    if "patient_ref" in obj:
        if "request_id" in obj or "row" in obj:
            issues.append(Issue(f"{where}patient_ref", "must not come with request_id or row (name one forecast)"))
        elif not (isinstance(ref, str) and 0 < len(ref) <= PATIENT_REF_MAX_CHARS):
            issues.append(Issue(f"{where}patient_ref", REF_RULE))  # never echoed: it names a patient
        return (None if issues else Claim(where, float(charges or 0), patient_ref=ref)), issues
    request_id, row = obj.get("request_id"), obj.get("row")
    if not (isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id)):
        rule = "is required (or patient_ref)" if request_id is None else REQUEST_ID_RULE
        issues.append(Issue(f"{where}request_id", rule, request_id))
    number = _number(row)
    if number is None or not (number.is_integer() and 0 <= number <= MAX_ROW):
        issues.append(Issue(f"{where}row", "is required" if row is None else ROW_RULE, row))
    if issues:
        return None, issues
    return Claim(where, float(charges or 0), request_id=request_id, row=int(number or 0)), []


def _raise(issues: list[Issue]) -> None:
    if issues:
        raise ValidationError(issues[:MAX_REPORTED_ISSUES], len(issues) > MAX_REPORTED_ISSUES, len(issues))


def check_payload(payload: Any) -> list[Claim]:
    """A JSON body: one actual or a list of at most ``MAX_ACTUALS``; ``ValidationError`` otherwise."""
    if isinstance(payload, list):
        if not payload:
            _raise([Issue("body", "must hold at least one actual")])
        if len(payload) > MAX_ACTUALS:
            _raise([Issue("body", f"must hold at most {MAX_ACTUALS:,} actuals (send several requests)", len(payload))])
        items = [(obj, f"[{i}].") for i, obj in enumerate(payload)]
    else:
        items = [(payload, "")]
    claims, issues = [], []
    for obj, where in items:
        claim, found = check_item(obj, where)
        issues.extend(found)
        if claim is not None:
            claims.append(claim)
    _raise(issues)
    return claims


def resolve(store: Store, claims: Sequence[Claim], key: bytes | None, received: datetime) -> list[Actual]:
    """Actuals for the store; every patient_ref must resolve, or nothing is stored."""
    out, issues = [], []
    for c in claims:
        if c.patient_ref is None:
            assert c.request_id is not None
            assert c.row is not None
            out.append(Actual(c.request_id, c.row, c.charges, received))
            continue
        if key is None:
            issues.append(Issue(f"{c.where}patient_ref", NO_KEY_RULE, None, c.line))
            continue
        found = store.resolve(patient_hash(key, c.patient_ref))
        if found is None:
            issues.append(Issue(f"{c.where}patient_ref", UNKNOWN_REF_RULE, None, c.line))
        else:
            out.append(Actual(found[0], found[1], c.charges, received))
    _raise(issues)
    return out


def record(store: Store, claims: Sequence[Claim], key: bytes | None, received: datetime) -> tuple[int, int]:
    """Resolve and store; returns (added, already known). A repeat changes nothing."""
    return store.add_actuals(resolve(store, claims, key, received))


# -- files ------------------------------------------------------------------------------
_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _cell(name: str, text: str) -> Any:
    """A CSV cell as JSON would carry it: numbers for row and charges (plain ASCII decimals)."""
    text = text.strip()
    if name in ("row", "charges") and _NUMBER.fullmatch(text):
        return float(text)
    return text


def _csv_items(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as fh:
        rows = csv.reader(Text(file_blocks(fh)).lines())
        try:
            header = [normalize(c) for c in next(rows, [])]
            previous = rows.line_num
            for cells in rows:
                start, previous = previous + 1, rows.line_num
                if not cells:
                    continue
                if len(cells) != len(header):
                    yield start, f"has {len(cells)} cells, the header has {len(header)}"
                    continue
                yield start, {k: _cell(k, v) for k, v in zip(header, cells, strict=True) if v.strip()}
        except csv.Error as exc:
            raise ValidationError([Issue("file", f"is not valid CSV: {exc}", None, rows.line_num)]) from None


def _jsonl_items(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if raw.strip():
                try:
                    yield number, orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    yield number, f"is not valid JSON ({exc})"


def load_file(path: Path) -> list[Claim]:
    """Actuals from a CSV (header ``request_id,row,charges`` and/or ``patient_ref``) or JSON
    Lines file (``.jsonl``, ``.ndjson``, or a first byte ``{``); ``ValidationError`` names lines."""
    with path.open("rb") as fh:
        first = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    jsonl = path.suffix.lower() in {".jsonl", ".ndjson"} or first == b"{"
    claims, issues = [], []
    for line, item in (_jsonl_items if jsonl else _csv_items)(path):
        if isinstance(item, str):
            issues.append(Issue("record", item, None, line))
            continue
        claim, found = check_item(item, line=line)
        issues.extend(found)
        if claim is not None:
            claims.append(claim)
    if not claims and not issues:
        issues.append(Issue("file", "has no actuals"))
    _raise(issues)
    return claims
