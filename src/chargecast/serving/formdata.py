"""Form bodies: urlencoded and multipart (the multipart parser also finds a CSV upload's file part)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from chargecast.schema import FIELD_BY_NAME, Issue, validate_record
from chargecast.serving.errors import ApiError, invalid
from chargecast.serving.request import media_type


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
