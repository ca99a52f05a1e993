"""The one error shape every JSON answer uses, and the exception that carries it.

Every refusal anywhere in serving is an :class:`ApiError`; the routes turn it into
``{"error": {"status": int, "message": str, "issues": [{"field", "rule", "value"?, "line"?}]}}``,
so a client parses one shape whatever went wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from chargecast.schema import MAX_REPORTED_ISSUES, Issue

MAX_SHOWN_VALUE: Final = 80


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
