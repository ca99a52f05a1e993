"""Security headers: the few every answer carries, and the content security policy of the pages.

Every answer may carry patient data (a forecast, or an error echoing a value), so every one
says ``Cache-Control: no-store``; and none is meant to be sniffed, framed or to leak its URL
in a Referer. These are constant, so adding them costs a list copy on the hot JSON route.
The HTML pages (the form, /docs and the small error pages) also get a policy that allows
nothing but their own inline stylesheet, named by its hash: no script runs on any page.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Final

# (name, value) as ASGI sends them; routes never set these themselves, so nothing is doubled.
COMMON: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
COMMON_TEXT: Final[Mapping[str, str]] = {name.decode(): value.decode() for name, value in COMMON}
_OPEN, _CLOSE = "<style>", "</style>"


def style_source(css: str) -> str:
    """The CSP source that allows exactly this inline stylesheet (and no other)."""
    digest = hashlib.sha256(css.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


@lru_cache(maxsize=8)
def _policy(styles: tuple[str, ...], form_action: str) -> str:
    style = f"style-src {' '.join(style_source(css) for css in styles)}; " if styles else ""
    # img-src data: for the form's empty favicon (href="data:,"), so browsers do not fetch one.
    return (
        f"default-src 'none'; {style}img-src data:; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )


def _styles(html: str) -> tuple[str, ...]:
    """The text of each ``<style>`` block; found with str.find, five times faster than a lazy
    regex over the stylesheet (a form page is checked on every answer)."""
    found: list[str] = []
    start = html.find(_OPEN)
    while start >= 0:
        end = html.find(_CLOSE, start + len(_OPEN))
        if end < 0:
            break
        found.append(html[start + len(_OPEN) : end])
        start = html.find(_OPEN, end + len(_CLOSE))
    return tuple(found)


def page_policy(html: str, *, form_action: str = "'none'") -> str:
    """The Content-Security-Policy for one HTML page: its own ``<style>`` blocks by hash, data:
    images, forms posting only to ``form_action``, never framed, no script, nothing fetched.

    Computed from the page itself, so a changed stylesheet can never be blocked by a stale hash.
    """
    return _policy(_styles(html), form_action)


def page_headers(html: str, *, form_action: str = "'none'") -> dict[str, str]:
    """What an HTML page adds to :data:`COMMON`: its policy."""
    return {"Content-Security-Policy": page_policy(html, form_action=form_action)}
