"""What a request says before its body: the media type, the query string and the API key.

Parsed from plain strings and bytes, never from ASGI, so each rule is tested without a server.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Final
from urllib.parse import parse_qsl

from chargecast.schema import Issue
from chargecast.serving.errors import ApiError, invalid

MAX_LEVELS: Final = 99


PREDICT_PARAMETERS: Final = ("explain", "quantiles")
LEVELS_RULE: Final = (
    f"must be a comma-separated list of 1 to {MAX_LEVELS} different decimal numbers strictly between 0 and 1, "
    "such as 0.05,0.5,0.95"
)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def media_type(content_type: str | None) -> str:
    """``text/csv; charset=utf-8`` -> ``text/csv``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


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


def check_bearer(header: str | None, keys: Sequence[bytes]) -> int:
    """Accept ``Authorization: Bearer <key>`` for any configured key, in constant time per key;
    the index of the key that matched (the audit log records its label)."""
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
    matched = -1
    for i, key in enumerate(keys):  # no early exit: every key is compared
        if hmac.compare_digest(key, presented):
            matched = i
    if matched < 0:
        raise ApiError(401, "invalid API key", [Issue("Authorization", "must hold a valid API key")], challenge)
    return matched
