"""JSON bodies, read strictly: no NaN or Infinity, no key twice in one object, numbers as numbers."""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson

from chargecast.schema import FIELDS, MAX_REPORTED_ISSUES, Issue, NumberField, validate_record
from chargecast.serving.errors import ApiError, invalid
from chargecast.serving.request import media_type

NUMBER_NAMES: Final = tuple(f.name for f in FIELDS if isinstance(f, NumberField))


_NON_FINITE = re.compile(rb"(?<![\w\"])-?(?:NaN|Infinity)(?![\w\"])")


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
