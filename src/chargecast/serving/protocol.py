"""What requests and responses look like, apart from the transport.

Everything here works on bytes, strings and the model, never on sockets or ASGI, so the
rules (what a valid body is, which status a mistake gets, how an error reads) are tested
without a server and the routes in :mod:`chargecast.serving.app` stay thin. Every mistake becomes
an :class:`ApiError` with one JSON shape:
``{"error": {"status": int, "message": str, "issues": [{"field", "rule", "value"?, "row"?}]}}``.
"""

from __future__ import annotations

import csv
import hmac
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final
from urllib.parse import parse_qsl

import numpy as np
import numpy.typing as npt
import orjson

from chargecast.model.artifact import Artifact
from chargecast.model.totals import BookTotal, summary_json, total_json
from chargecast.schema import (
    FEATURES,
    FIELD_BY_NAME,
    FIELDS,
    MAX_REPORTED_ISSUES,
    Issue,
    NumberField,
    ValidationError,
    encode_columns,
    validate_record,
)
from chargecast.serving.form import FormResult

Array = npt.NDArray[np.float64]
MAX_RECORDS: Final = 10_000
OUTPUT_COLUMNS: Final = ("charges", "charges_low", "charges_high")
CSV_CHUNK_ROWS: Final = 32_768
CSV_TYPES: Final = frozenset({"text/csv", "application/csv", "text/plain", "application/vnd.ms-excel"})
MAX_SHOWN_VALUE: Final = 80
NUMBER_NAMES: Final = tuple(f.name for f in FIELDS if isinstance(f, NumberField))
EXAMPLE_RECORD: Final[dict[str, Any]] = {f.name: f.example for f in FIELDS}
MAX_LEVELS: Final = 99
# A list's quantiles cost memory per record and level (~85 B each once serialised): 10,000
# records at 99 levels took ~100 MB to answer a 1 MB body. More than this is a 422.
MAX_QUANTILE_CELLS: Final = 100_000
PREDICT_PARAMETERS: Final = ("explain", "quantiles")
LEVELS_RULE: Final = (
    f"must be a comma-separated list of 1 to {MAX_LEVELS} different decimal numbers strictly between 0 and 1, "
    "such as 0.05,0.5,0.95"
)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = re.compile(rb"(?<![\w\"])-?(?:NaN|Infinity)(?![\w\"])")


class ApiError(Exception):
    """A request the service refuses, with the status and the body it answers."""

    def __init__(
        self,
        status: int,
        message: str,
        issues: Sequence[Issue] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.issues = list(issues)
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.issues)


def issue_dict(issue: Issue) -> dict[str, Any]:
    """An issue as JSON; long values are cut so an error never echoes a whole upload."""
    out = issue.as_dict()
    value = out.get("value")
    if isinstance(value, str) and len(value) > MAX_SHOWN_VALUE:
        out["value"] = value[: MAX_SHOWN_VALUE - 1] + "…"
    return out


def error_body(status: int, message: str, issues: Sequence[Issue] = ()) -> bytes:
    return orjson.dumps({"error": {"status": status, "message": message, "issues": [issue_dict(i) for i in issues]}})


def invalid(issues: Sequence[Issue], total: int | None = None, what: str = "input") -> ApiError:
    """The 422 for broken schema rules; the message lists the first few in words."""
    total = max(total or 0, len(issues))
    shown = issues[:MAX_REPORTED_ISSUES]
    words = "; ".join(str(i) for i in shown[:3])
    more = total - min(3, len(shown))
    message = f"invalid {what}: {words}" + (f" (and {more} more)" if more > 0 else "")
    if total > len(shown):
        message += f"; the first {len(shown)} of {total} problems are listed"
    return ApiError(422, message, shown)


# -- headers ----------------------------------------------------------------------------
def media_type(content_type: str | None) -> str:
    """``text/csv; charset=utf-8`` -> ``text/csv``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def require_json(content_type: str | None) -> None:
    if content_type == "application/json":  # the usual case, checked first
        return
    kind = media_type(content_type)
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return
    got = f"got {kind}" if kind else "none was sent"
    raise ApiError(
        415,
        f"Content-Type must be application/json ({got})",
        [Issue("Content-Type", "must be application/json", kind or None)],
    )


def parse_query(query: bytes, allowed: Sequence[str] = ()) -> dict[str, str]:
    """Query parameters; unknown ones are a 422 (``?explian=true`` must not be silently ignored)."""
    if not query:
        return {}
    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, max_num_fields=16)
    except ValueError:
        raise invalid([Issue("query", "must have at most 16 parameters")], what="query") from None
    unknown = list(dict.fromkeys(key for key, _ in pairs if key not in allowed))
    if unknown:
        rule = f"is not a query parameter of this route (allowed: {', '.join(allowed) or 'none'})"
        raise invalid([Issue(key, rule) for key in unknown], what="query")
    out = dict(pairs)
    if len(out) < len(pairs):  # a repeat would silently overrule the first value
        repeated = sorted({key for key, _ in pairs if [k for k, _ in pairs].count(key) > 1})
        raise invalid([Issue(key, "must appear at most once") for key in repeated], what="query")
    return out


def parse_flag(name: str, value: str | None) -> bool:
    """Query flags such as ``?explain=true``: absent, ``true`` or ``false``; anything else is a 422."""
    if value is None:
        return False
    text = value.lower()
    if text == "true":
        return True
    if text == "false":
        return False
    raise invalid([Issue(name, "must be true or false", value)], what="query parameter")


@dataclass(frozen=True, slots=True)
class Levels:
    """Quantile levels a client asked for, ascending, with the keys the answer names them by."""

    keys: tuple[str, ...]
    values: tuple[float, ...]


def level_key(level: float) -> str:
    """The canonical name of a level: the shortest decimal that reads back as the same double,
    written without an exponent ("0.50" -> "0.5", ".05" -> "0.05", "1e-3" -> "0.001")."""
    return format(Decimal(repr(level)), "f")


def parse_levels(text: str) -> Levels:
    """``?quantiles=0.05,0.5,0.95``: each item a decimal number (spaces around it ignored) whose
    double lies strictly between 0 and 1; no empty items, no level twice (after reading, so
    "0.5,0.50" repeats), at most ``MAX_LEVELS``. Every broken rule is a 422 naming ``quantiles``."""
    items = text.split(",")
    if len(items) > MAX_LEVELS:
        raise invalid([Issue("quantiles", f"must list at most {MAX_LEVELS} levels ({LEVELS_RULE})")], what="query")
    issues: list[Issue] = []
    seen: dict[float, str] = {}
    for raw in items:
        item = raw.strip()
        if not item:
            issues.append(Issue("quantiles", f"must not have empty items ({LEVELS_RULE})", text))
            continue
        if not _DECIMAL.fullmatch(item):
            finite = item.lower().lstrip("+-") not in ("nan", "inf", "infinity")
            kind = "a decimal number" if finite else "a finite number"
            issues.append(Issue("quantiles", f"each level must be {kind} ({LEVELS_RULE})", item))
            continue
        level = float(item)
        if not 0.0 < level < 1.0:
            issues.append(Issue("quantiles", f"each level must be strictly between 0 and 1 ({LEVELS_RULE})", item))
        elif level in seen:
            rule = f"must not repeat a level ({seen[level]} and {item} are the same level; {LEVELS_RULE})"
            issues.append(Issue("quantiles", rule, item))
        else:
            seen[level] = item
    if issues:
        raise invalid(issues, what="query parameter")
    values = tuple(sorted(seen))
    return Levels(tuple(level_key(q) for q in values), values)


@lru_cache(maxsize=256)
def predict_options(query: bytes) -> tuple[bool, Levels | None]:
    """``explain`` and ``quantiles`` of ``/api/v1/predict``; clients repeat the same few query
    strings, so parsing is cached (a refused query raises and is not cached)."""
    params = parse_query(query, PREDICT_PARAMETERS)
    quantiles = params.get("quantiles")
    return parse_flag("explain", params.get("explain")), (parse_levels(quantiles) if quantiles is not None else None)


def check_bearer(header: str | None, keys: Sequence[bytes]) -> None:
    """Accept ``Authorization: Bearer <key>`` for any configured key, in constant time per key."""
    challenge = {"WWW-Authenticate": 'Bearer realm="chargecast"'}
    if header is None:
        raise ApiError(
            401,
            "missing API key: send the header 'Authorization: Bearer <key>'",
            [Issue("Authorization", "is required")],
            challenge,
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "malformed Authorization header: expected 'Bearer <key>'",
            [Issue("Authorization", "must be 'Bearer <key>'")],
            challenge,
        )
    presented = token.encode("utf-8", "surrogateescape")
    ok = False
    for key in keys:  # no early exit: every key is compared
        ok |= hmac.compare_digest(key, presented)
    if not ok:
        raise ApiError(401, "invalid API key", [Issue("Authorization", "must hold a valid API key")], challenge)


# -- JSON -------------------------------------------------------------------------------
def parse_json(body: bytes | bytearray) -> Any:
    """Parse a JSON body strictly: NaN, Infinity, bad UTF-8 and nesting beyond 1024 levels are
    400s, and a key twice in one object is a 422 (see :func:`check_duplicate_keys`)."""
    if not body:
        raise ApiError(
            400,
            "body is empty: send one record as a JSON object or a list of records as an array",
            [Issue("body", "is required")],
        )
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if _NON_FINITE.search(body):
            message = f"body is not valid JSON (NaN and Infinity are not allowed): {exc}"
            rule = "must be valid JSON; NaN and Infinity are not JSON numbers"
        else:
            message = f"body is not valid JSON: {exc}"
            rule = "must be valid JSON"
        raise ApiError(400, message, [Issue("body", rule)]) from None
    if type(payload) is dict and len(payload) == body.count(b":"):
        return payload  # the usual record, proved free of duplicates in ~0.1 µs
    if type(payload) is dict or type(payload) is list:
        check_duplicate_keys(body, payload)
    return payload


# -- duplicate keys ---------------------------------------------------------------------
# orjson (like most parsers) keeps the last of two equal keys, so {"age": 30, "age": 70} would
# be forecast for a 70-year-old while the client's own code may have read 30. Duplicates are
# refused instead. The check is exact and almost free for the usual body: in valid JSON every
# key is followed by exactly one colon outside strings, and colons appear nowhere else outside
# strings. So the body's colons C, the key tokens R and the keys that survived parsing K obey
# C >= R >= K, with R > K exactly when some key repeats: C == K proves there is no duplicate.
# Only bodies with colons inside strings (or with duplicates) need the slower exact scans.
DUPLICATE_KEY_RULE: Final = "appears more than once in the same object (duplicate keys are refused)"
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],]', re.DOTALL)
_OBJECT, _ARRAY = 0, 1


def _keys_account_for(colons: int, payload: dict[str, Any] | list[Any]) -> bool:
    """Whether the parsed keys, counted level by level, reach ``colons`` (then C == K)."""
    level: list[Any] = [payload]
    counted = 0
    while level:
        counted += sum(len(node) for node in level if type(node) is dict)
        if counted == colons:
            return True
        deeper: list[Any] = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    deeper.append(child)
        level = deeper
    return False


class _DuplicateKeyError(Exception):
    """Raised by the object hook on the first repeated key; caught in check_duplicate_keys."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKeyError
    return out


def _where(frames: list[list[Any]], key: str) -> str:
    """``[3].age``, ``age``, ``region.name``: the path to ``key`` in the object on top of ``frames``."""
    path = ""
    for frame in frames[:-1]:
        if frame[0] == _ARRAY:
            path += f"[{frame[1]}]"
        else:
            path += f".{frame[2]}" if path else str(frame[2])
    return f"{path}.{key}" if path else key


def duplicate_keys(body: bytes | bytearray) -> tuple[list[Issue], int]:
    """Every key repeated within one object of a valid JSON ``body``, in document order, as
    issues naming its path (the first ``MAX_REPORTED_ISSUES``), and how many there are.

    A token scan, not a parse: strings, brackets, braces and commas are all that matter (numbers,
    true, false and null hold none of them), and it keeps no recursion, so any depth is fine.
    Keys are compared decoded, so ``"a"`` and ``"\\u0061"`` are the same key. A key that appears
    three times in an object counts once.
    """
    issues: list[Issue] = []
    total = 0
    # an object: [_OBJECT, {key: times seen}, current key, expecting a key]; an array: [_ARRAY, index]
    frames: list[list[Any]] = []
    for match in _JSON_TOKEN.finditer(body):
        token = match.group()
        first = token[0]
        if first == 0x22:  # '"'
            top = frames[-1] if frames else None
            if top is not None and top[0] == _OBJECT and top[3]:
                key = orjson.loads(token)
                seen = top[1]
                times = seen.get(key, 0) + 1
                seen[key] = times
                top[2], top[3] = key, False
                if times == 2:
                    total += 1
                    if len(issues) < MAX_REPORTED_ISSUES:
                        issues.append(Issue(_where(frames, key), DUPLICATE_KEY_RULE))
        elif first == 0x7B:  # '{'
            frames.append([_OBJECT, {}, None, True])
        elif first == 0x5B:  # '['
            frames.append([_ARRAY, 0])
        elif first == 0x2C:  # ','
            top = frames[-1]
            if top[0] == _OBJECT:
                top[3] = True
            else:
                top[1] += 1
        else:  # '}' or ']'
            frames.pop()
    return issues, total


def check_duplicate_keys(body: bytes | bytearray, payload: dict[str, Any] | list[Any]) -> None:
    """Refuse a body whose objects repeat a key (422 naming each, with list indexes); ``payload``
    is what orjson made of ``body``. Exact; costs a count of colons unless strings hold colons."""
    if _keys_account_for(body.count(b":"), payload):
        return
    try:  # colons inside strings: json's C parser answers whether any key repeats, quickly
        json.loads(body, object_pairs_hook=_refuse_duplicates)
        return
    except _DuplicateKeyError:
        pass
    except RecursionError:  # deeper than Python's stack allows (orjson takes 1024 levels)
        pass
    issues, total = duplicate_keys(body)
    if total:
        raise invalid(issues, total, what="JSON")


def check_json_record(obj: Any, prefix: str = "") -> tuple[list[float], list[Issue]]:
    """The schema's scalar validation, plus JSON typing: numbers must be JSON numbers.

    ``schema.check_value`` accepts ``"39"`` for forms and CSV cells; in JSON a quoted
    number is a client bug worth reporting, so it is refused here.
    """
    encoded, issues = validate_record(obj, field_prefix=prefix)
    if type(obj) is dict:
        for name in NUMBER_NAMES:
            value = obj.get(name)
            if type(value) is str:
                where = prefix + name
                issues = [i for i in issues if i.field != where]
                issues.append(Issue(where, "must be a JSON number, not a string", value))
    return encoded, issues


@dataclass(frozen=True, slots=True)
class Scored:
    """A prediction response's body, plus what the metrics need to see (no patient data leaves)."""

    body: bytes
    rows: Sequence[float] | Array  # one encoded row, or an (n, 6) matrix
    charges: float | Array
    count: int


def _contributions(model: Artifact, X: Array) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, row, strict=True)) for row in model.explain(X).tolist()]


def predict_one(model: Artifact, obj: Any, explain: bool = False, levels: Levels | None = None) -> Scored:
    """One record: the scalar hot path (no numpy unless an explanation is asked for)."""
    row, issues = check_json_record(obj)
    if issues:
        raise invalid(issues, what="record")
    p = model.predict_row(row)
    out: dict[str, Any] = {
        "charges": p.charges,
        "interval": {"low": p.low, "high": p.high, "level": model.level},
        "model_version": model.version,
    }
    if levels is not None:
        out["quantiles"] = dict(zip(levels.keys, model.quantiles_row(p.charges, row, levels.values), strict=True))
    if explain:
        out["contributions"] = _contributions(model, np.array([row], dtype=np.float64))[0]
        out["baseline"] = model.baseline
    if outside := model.extrapolated(row):
        out["extrapolated"] = outside
    return Scored(orjson.dumps(out), row, p.charges, 1)


def check_quantile_cells(rows: int, levels: Levels | None) -> None:
    """Refuse (422) a list whose quantiles would be too many to answer."""
    if levels is not None and rows * len(levels.values) > MAX_QUANTILE_CELLS:
        asked = f"{rows:,} records x {len(levels.values)} levels"
        rule = f"times the number of records must be at most {MAX_QUANTILE_CELLS:,} (got {asked})"
        raise invalid([Issue("quantiles", f"{rule}: ask fewer levels or send fewer records")], what="batch")


def predict_many(model: Artifact, items: list[Any], explain: bool = False, levels: Levels | None = None) -> Scored:
    """A list of 1 to 10,000 records, validated one by one (errors name ``[i].field``), and
    their total: the book's charges with an interval for what it will actually cost."""
    if not items:
        raise invalid([Issue("body", f"must hold 1 to {MAX_RECORDS} records, got 0")], what="batch")
    if len(items) > MAX_RECORDS:
        raise invalid(
            [Issue("body", f"must hold at most {MAX_RECORDS} records (send bigger batches to /api/v1/predict/csv)")],
            what="batch",
        )
    check_quantile_cells(len(items), levels)
    rows: list[list[float]] = []
    issues: list[Issue] = []
    total = 0
    for i, obj in enumerate(items):
        encoded, found = check_json_record(obj, f"[{i}].")
        if found:
            total += len(found)
            issues.extend(found[: max(0, MAX_REPORTED_ISSUES - len(issues))])
        elif not total:
            rows.append(encoded)
    if total:
        raise invalid(issues, total, what="records")
    X = np.array(rows, dtype=np.float64)
    charges, low, high = model.predict(X)
    level = model.level
    predictions: list[dict[str, Any]] = [
        {"charges": c, "interval": {"low": lo, "high": hi, "level": level}}
        for c, lo, hi in zip(charges.tolist(), low.tolist(), high.tolist(), strict=True)
    ]
    if explain:
        baseline = model.baseline
        for item, contribution in zip(predictions, _contributions(model, X), strict=True):
            item["contributions"] = contribution
            item["baseline"] = baseline
    if levels is not None:
        keys = levels.keys
        for item, values in zip(predictions, model.quantiles(charges, X, levels.values).tolist(), strict=True):
            item["quantiles"] = dict(zip(keys, values, strict=True))
    for item, outside in zip(predictions, model.extrapolated_rows(X), strict=True):
        if outside:
            item["extrapolated"] = outside
    book = total_json(model.total(charges, X), level)
    body = orjson.dumps({"predictions": predictions, "total": book, "model_version": model.version})
    return Scored(body, X, charges, len(rows))


def predict_payload(model: Artifact, payload: Any, explain: bool = False, levels: Levels | None = None) -> Scored:
    """Dispatch a parsed body: an object is one record, an array a batch, anything else a 422."""
    if type(payload) is dict:
        return predict_one(model, payload, explain, levels)
    if type(payload) is list:
        return predict_many(model, payload, explain, levels)
    raise invalid(
        [Issue("body", f"must be a JSON object (one record) or an array of 1 to {MAX_RECORDS} records", payload)],
        what="body",
    )


def predict_bare(model: Artifact, payload: Any) -> Scored:
    """The tutorial's ``/predict_api``: one JSON object in, a bare number out."""
    if type(payload) is not dict:
        raise invalid([Issue("body", "must be a JSON object with the six fields", payload)], what="body")
    row, issues = check_json_record(payload)
    if issues:
        raise invalid(issues, what="record")
    p = model.predict_row(row)
    return Scored(orjson.dumps(p.charges), row, p.charges, 1)


def model_info(model: Artifact) -> bytes:
    """``GET /api/v1/model``: the artifact's metadata without file hashes."""
    info = model.describe()
    info["version"] = model.version
    info["interval_level"] = model.level
    return orjson.dumps(info, option=orjson.OPT_SERIALIZE_NUMPY)


def warm_up(model: Artifact) -> None:
    """Exercise every prediction path once so the first real request is not the slow one."""
    levels = parse_levels("0.05,0.5,0.95")
    one = predict_one(model, dict(EXAMPLE_RECORD), explain=True, levels=levels)
    many = predict_many(model, [dict(EXAMPLE_RECORD)] * 2, explain=True, levels=levels)
    for body in (one.body, many.body):
        if b"NaN" in body or b"null" in body:
            raise ValueError("warm-up prediction is not a finite number")


# -- forms and multipart ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Part:
    """One part of a multipart body, by offsets into the body (nothing is copied)."""

    name: str
    filename: str | None
    content_type: str
    start: int
    end: int


_PARAM = re.compile(r';\s*([\w*.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def header_params(value: str) -> dict[str, str]:
    """Parameters of a header such as ``form-data; name="file"; filename="a.csv"``."""
    out: dict[str, str] = {}
    for key, raw in _PARAM.findall(value):
        text = raw.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        out[key.lower()] = text
    return out


def parse_multipart(body: bytes | bytearray, content_type: str, max_parts: int = 64) -> list[Part]:
    """Split a ``multipart/form-data`` body into parts without copying their contents."""
    boundary = header_params(content_type).get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "multipart body without a valid boundary", [Issue("Content-Type", "needs a boundary")])
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    malformed = ApiError(400, "multipart body is malformed", [Issue("body", "must be valid multipart/form-data")])
    pos = body.find(delimiter)
    if pos < 0:
        raise malformed
    parts: list[Part] = []
    while True:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            return parts
        line_end = body.find(b"\r\n", pos)
        head_end = body.find(b"\r\n\r\n", line_end) if line_end >= 0 else -1
        if head_end < 0 or len(parts) >= max_parts:
            raise malformed
        headers: dict[str, str] = {}
        for line in bytes(body[line_end + 2 : head_end]).decode("utf-8", "replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        start = head_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise malformed
        disposition = header_params(headers.get("content-disposition", ""))
        parts.append(
            Part(
                disposition.get("name", ""),
                disposition.get("filename"),
                media_type(headers.get("content-type", "text/plain")),
                start,
                end,
            )
        )
        pos = end + 2


def form_values(body: bytes | bytearray, content_type: str | None) -> dict[str, str]:
    """The six fields from a urlencoded or multipart form; other fields (a button) are ignored."""
    kind = media_type(content_type)
    pairs: list[tuple[str, str]]
    if kind in ("application/x-www-form-urlencoded", ""):
        try:
            pairs = parse_qsl(bytes(body).decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=64)
        except ValueError:
            raise ApiError(400, "form has too many fields", [Issue("body", "must be the form's fields")]) from None
    elif kind == "multipart/form-data":
        pairs = [
            (p.name, bytes(body[p.start : p.end]).decode("utf-8", "replace"))
            for p in parse_multipart(body, content_type or "")
        ]
    else:
        raise ApiError(
            415,
            f"a form must be sent as application/x-www-form-urlencoded or multipart/form-data (got {kind})",
            [Issue("Content-Type", "must be a form encoding", kind)],
        )
    values: dict[str, str] = {}
    repeated: list[str] = []
    for key, value in pairs:
        if key in FIELD_BY_NAME:
            if key in values:  # age=30&age=70: which one the person meant is not ours to guess
                repeated.append(key)
            values[key] = value
    if repeated:
        issues = [Issue(key, "must be given once (the form sent it more than once)") for key in dict.fromkeys(repeated)]
        raise invalid(issues, what="form")
    return values


def check_form(values: Mapping[str, str]) -> tuple[list[float], dict[str, str]]:
    """Validate form strings; errors map each field to a sentence naming it, shown beside it
    and in the error summary ("Age must be a whole number from 18 to 100")."""
    encoded, issues = validate_record(values)
    errors: dict[str, str] = {}
    for issue in issues:
        spec = FIELD_BY_NAME.get(issue.field)
        errors.setdefault(issue.field, f"{spec.label} {issue.rule}" if spec else issue.rule)
    return encoded, errors


def form_result(model: Artifact, encoded: Sequence[float]) -> FormResult:
    """The form's answer: the mean forecast, its interval, and the median of the same
    distribution, so the page can say where half of such patients fall."""
    p = model.predict_row(encoded)
    (median,) = model.quantiles_row(p.charges, encoded, [0.5])
    contributions = _contributions(model, np.array([encoded], dtype=np.float64))[0]
    return FormResult(p.charges, p.low, p.high, median, model.level, contributions, model.baseline)


# -- CSV --------------------------------------------------------------------------------
CSV_BLOCK: Final = 1 << 20  # bytes decoded at a time: the text is never held whole as a str
_BOM: Final = b"\xef\xbb\xbf"


@dataclass
class CsvSource:
    """A CSV inside a request body, by offsets (the file part of a multipart upload, or all)."""

    body: bytearray
    start: int
    end: int
    filename: str | None = None

    def rows_bound(self) -> int:
        """At most this many records: one per line (found at memchr speed, nothing decoded)."""
        return self.body.count(b"\n", self.start, self.end) + 1


@dataclass
class CsvScored:
    """A validated, predicted CSV: its bytes (kept once, to echo rows) and the three new columns."""

    source: CsvSource
    charges: Array
    low: Array
    high: Array

    @property
    def rows(self) -> int:
        return len(self.charges)

    @property
    def filename(self) -> str | None:
        return self.source.filename


def _lines(text: str) -> Iterator[str]:
    """Lines with their endings, sliced one at a time (no list of all lines is built)."""
    start, size = 0, len(text)
    while start < size:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start : end + 1]
        start = end + 1


def _text_lines(source: CsvSource) -> Iterator[str]:
    """The CSV's lines as text, decoded a block (about 1 MiB, cut after a newline) at a time.

    Decoding everything at once held the whole upload as a str, at up to four bytes per
    character when one character is outside Latin-1; block by block, that copy is bounded.
    A newline byte never occurs inside a UTF-8 sequence, so cutting after one is safe.
    """
    body, pos, end = source.body, source.start, source.end
    if body.startswith(_BOM, pos, end):
        pos += len(_BOM)
    base = pos
    with memoryview(body) as view:
        while pos < end:
            stop = min(pos + CSV_BLOCK, end)
            if stop < end:
                cut = body.rfind(b"\n", pos, stop)
                if cut < 0:  # one line longer than a block: take the whole line
                    cut = body.find(b"\n", stop, end)
                stop = end if cut < 0 else cut + 1
            try:
                text = str(view[pos:stop], "utf-8")
            except UnicodeDecodeError as exc:
                raise ApiError(
                    400,
                    f"CSV is not UTF-8 text: {exc.reason} at byte {pos - base + exc.start}",
                    [Issue("body", "must be UTF-8")],
                ) from None
            yield from _lines(text)
            del text
            pos = stop


def _byte_lines(source: CsvSource) -> Iterator[bytes]:
    """The CSV's lines as bytes with their endings (after a BOM), for echoing them unchanged."""
    body, pos, end = source.body, source.start, source.end
    if body.startswith(_BOM, pos, end):
        pos += len(_BOM)
    while pos < end:
        cut = body.find(b"\n", pos, end)
        stop = end if cut < 0 else cut + 1
        yield bytes(body[pos:stop])
        pos = stop


def require_csv(content_type: str | None) -> None:
    """A CSV body or a multipart upload; checked before the (possibly large) body is read."""
    kind = media_type(content_type)
    if kind != "multipart/form-data" and kind not in CSV_TYPES:
        raise ApiError(
            415,
            f"Content-Type must be text/csv or multipart/form-data ({f'got {kind}' if kind else 'none was sent'})",
            [Issue("Content-Type", "must be text/csv or multipart/form-data", kind or None)],
        )


def csv_source(body: bytearray, content_type: str | None) -> CsvSource:
    """Where the CSV is in a request body: all of it, or the file part of a multipart upload."""
    kind = media_type(content_type)
    if kind != "multipart/form-data":
        require_csv(content_type)
        return CsvSource(body, 0, len(body))
    parts = parse_multipart(body, content_type or "")
    chosen = next((p for p in parts if p.name == "file"), None) or next(
        (p for p in parts if p.filename is not None), None
    )
    if chosen is None:
        raise ApiError(
            422,
            "multipart upload has no file part: send the CSV as the field 'file'",
            [Issue("file", "is required")],
        )
    return CsvSource(body, chosen.start, chosen.end, chosen.filename)


def score_csv(
    model: Artifact,
    source: CsvSource,
    max_rows: int,
    on_chunk: Callable[[Array, Array], None] | None = None,
    chunk_rows: int = CSV_CHUNK_ROWS,
) -> CsvScored:
    """Parse column-wise with the stdlib reader, validate with the schema, predict, chunk by chunk.

    Only the six input columns are collected, as lists of (interned) strings that
    ``schema.encode_columns`` checks vectorised every ``chunk_rows`` rows; a valid chunk is
    predicted at once and only its three result columns are kept, so memory holds the upload,
    the results and one chunk (and one decoded block), whatever the row count. ``on_chunk(X, charges)`` sees each
    predicted chunk (for metrics; they count only if the whole file turns out valid).
    Other columns pass through untouched. Rows are numbered from 1 at the first data row
    (header and blank lines not counted).
    """
    reader = csv.reader(_text_lines(source))
    try:
        try:
            header = next(reader)
        except StopIteration:
            raise ApiError(
                400, "CSV is empty: send a header row and data rows", [Issue("body", "is required")]
            ) from None
        names = [h.strip().lower() for h in header]
        problems: list[Issue] = []
        for name in OUTPUT_COLUMNS:
            if name in names:
                problems.append(Issue(name, "is a column this endpoint adds; remove or rename it"))
        for name in FEATURES:
            count = names.count(name)
            if count == 0:
                problems.append(Issue(name, "column is required"))
            elif count > 1:
                problems.append(Issue(name, f"column appears {count} times"))
        if problems:
            raise invalid(problems, what="CSV header")
        index = [names.index(name) for name in FEATURES]
        width = len(names)
        columns: list[list[str]] = [[] for _ in FEATURES]
        interned: list[dict[str, str]] = [{} for _ in FEATURES]
        plan = list(zip(index, [c.append for c in columns], [d.setdefault for d in interned], strict=True))
        results: list[tuple[Array, Array, Array]] = []
        issues: list[Issue] = []
        bad_total = 0
        first_row = 1  # the row number of the chunk's first row

        def encode_chunk() -> None:
            nonlocal bad_total
            if not columns[0]:
                return
            try:
                X = encode_columns({name: columns[j] for j, name in enumerate(FEATURES)}, first_row=first_row)
            except ValidationError as exc:
                bad_total += exc.total
                issues.extend(exc.issues[: max(0, MAX_REPORTED_ISSUES - len(issues))])
            else:
                if not bad_total:  # after the first bad row only validation goes on
                    charges, low, high = model.predict(X)
                    results.append((charges, low, high))
                    if on_chunk is not None:
                        on_chunk(X, charges)
            for column, seen in zip(columns, interned, strict=True):
                column.clear()
                seen.clear()

        ragged: list[Issue] = []
        n = ragged_total = 0
        for row in reader:
            if not row:
                continue
            n += 1
            if n > max_rows:
                raise ApiError(
                    413,
                    f"CSV has more than {max_rows} data rows; split it into smaller files",
                    [Issue("body", f"must have at most {max_rows} rows")],
                )
            if len(row) != width:
                if not ragged_total:
                    encode_chunk()  # rows before it are still numbered right; later ones are not read
                ragged_total += 1
                if len(ragged) < MAX_REPORTED_ISSUES:
                    ragged.append(Issue("(row)", f"has {len(row)} values but the header has {width}", None, n))
                continue
            if ragged_total:
                continue
            for j, append, intern in plan:
                value = row[j]
                append(intern(value, value))
            if len(columns[0]) >= chunk_rows:
                encode_chunk()
                first_row = n + 1
    except csv.Error as exc:
        raise ApiError(
            400, f"CSV cannot be parsed at line {reader.line_num}: {exc}", [Issue("body", "must be valid CSV")]
        ) from None
    if not ragged_total:
        encode_chunk()
    if ragged_total or bad_total:
        found = sorted([*issues, *ragged], key=lambda i: i.row or 0)
        raise invalid(found, bad_total + ragged_total, what="CSV")
    if n == 0:
        raise invalid([Issue("body", "must have at least one data row")], what="CSV")
    charges, low, high = (np.concatenate(part) for part in zip(*results, strict=True))
    return CsvScored(source, charges, low, high)


def summarize_csv(
    model: Artifact,
    source: CsvSource,
    max_rows: int,
    on_chunk: Callable[[Array, Array], None] | None = None,
    chunk_rows: int = CSV_CHUNK_ROWS,
) -> bytes:
    """``{"rows": n, "total": {...}}`` of a CSV, under :func:`score_csv`'s rules: the same
    bytes that ``chargecast predict --summary`` writes for the file."""
    book = BookTotal(model)

    def add(X: Array, charges: Array) -> None:
        book.add(X, charges)
        if on_chunk is not None:
            on_chunk(X, charges)

    score_csv(model, source, max_rows, on_chunk=add, chunk_rows=chunk_rows)
    return summary_json(book)


def csv_chunks(scored: CsvScored, rows_per_chunk: int = 2000) -> Iterator[bytes]:
    """The uploaded CSV with ``charges``, ``charges_low``, ``charges_high`` appended, in chunks.

    Rows are echoed byte for byte when the file has no quoting (the common case); otherwise
    they are re-written by the csv module. Amounts are rounded to cents.
    """
    source = scored.source
    charges, low, high = scored.charges, scored.low, scored.high
    total = len(charges)
    if source.body.find(b'"', source.start, source.end) < 0:
        lines = _byte_lines(source)
        header = next(lines)
        eol = b"\r\n" if header.endswith(b"\r\n") else b"\n"
        yield header.rstrip(b"\r\n") + b"," + ",".join(OUTPUT_COLUMNS).encode() + eol
        done = 0
        while done < total:
            stop = min(done + rows_per_chunk, total)
            values = zip(charges[done:stop].tolist(), low[done:stop].tolist(), high[done:stop].tolist(), strict=True)
            out: list[bytes] = []
            for c, lo, hi in values:
                line = next(lines).rstrip(b"\r\n")
                while not line:  # blank lines carry no row
                    line = next(lines).rstrip(b"\r\n")
                out.append(b"%s,%.2f,%.2f,%.2f%s" % (line, c, lo, hi, eol))
            yield b"".join(out)
            done = stop
        return
    reader = csv.reader(_text_lines(source))
    header_row = next(reader)
    first = source.body.find(b"\n", source.start, source.end)
    eol_text = "\r\n" if first > source.start and source.body[first - 1] == 0x0D else "\n"
    buffer = _Buffer()
    writer = csv.writer(buffer, lineterminator=eol_text)
    writer.writerow([*header_row, *OUTPUT_COLUMNS])
    done = 0
    for row in reader:
        if not row:
            continue
        writer.writerow([*row, f"{charges[done]:.2f}", f"{low[done]:.2f}", f"{high[done]:.2f}"])
        done += 1
        if done % rows_per_chunk == 0:
            yield buffer.take()
    yield buffer.take()


class _Buffer:
    """A write-only text sink for csv.writer that hands out its content as UTF-8 chunks."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def take(self) -> bytes:
        out = "".join(self._parts).encode()
        self._parts.clear()
        return out
