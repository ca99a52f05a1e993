"""Headless Chromium for the end-to-end tests: Debian's own binary, driven by Playwright.

Playwright's bundled browsers would need ``playwright install``, a download; pointing
``executable_path`` at the system's Chromium needs none (CI installs it with apt, see
.ci/run). Playwright's clicks wait until the element is visible, stable and the one that
receives the pointer, so a button hidden behind another element fails the test the way it
fails a person.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",  # containers run as root, where the sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers crashes renderers
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
TIMEOUT_MS = 15_000  # per action; a page that never settles fails instead of hanging the suite


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """The system's Chromium under Playwright, closed (with everything it opened) on exit."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(FLAGS), headless=True, timeout=TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()
