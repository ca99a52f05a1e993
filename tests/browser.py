"""A tiny headless-Chromium driver over the DevTools protocol, for end-to-end tests.

Selenium or Playwright would need a driver binary or a browser download; Debian's
``chromium`` plus ``websockets`` (already installed with uvicorn) is enough for what
these tests do: open a page, type, choose, click, read text and take screenshots.
Every action goes through real input events, so a button hidden behind another
element, or an input that ignores typing, fails the test the way it fails a person.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from websockets.sync.client import ClientConnection, connect

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",  # containers run as root, where the sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers crashes renderers
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
)


class BrowserError(RuntimeError):
    """Chromium did not start, a command failed, or the page did not do what was asked."""


class Browser:
    """One Chromium process and one tab; use as a context manager so it always exits."""

    def __init__(
        self, *, executable: str = CHROMIUM, width: int = 1280, height: int = 900, timeout: float = 30.0
    ) -> None:
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="chargecast-chromium-")
        self._log = open(Path(self._profile) / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()  # owns the websocket, as websockets asks
        try:
            self._proc = subprocess.Popen(
                [
                    executable,
                    *FLAGS,
                    f"--user-data-dir={self._profile}",
                    f"--window-size={width},{height}",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            self._cleanup_files()
            raise BrowserError(f"cannot start {executable}: {exc}") from None
        try:
            self._ws = self._stack.enter_context(connect(self._page_socket(), max_size=None, open_timeout=timeout))
            self._call("Page.enable")
            self._call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    # -- plumbing --------------------------------------------------------------------------
    def _page_socket(self) -> str:
        """Wait for DevToolsActivePort, then find the tab's websocket."""
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not port_file.is_file() or not port_file.read_text().strip():
            if self._proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self._proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium did not open a debugging port: {self.log_tail()}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as resp:
                targets: list[dict[str, Any]] = json.load(resp)
            pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            if time.monotonic() > deadline:
                raise BrowserError("chromium opened no tab")
            time.sleep(0.05)

    def log_tail(self, chars: int = 2000) -> str:
        self._log.flush()
        path = Path(self._profile) / "chromium.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    def _recv(self, deadline: float) -> dict[str, Any]:
        if self._ws is None:
            raise BrowserError("browser is closed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        message: dict[str, Any] = json.loads(self._ws.recv(timeout=remaining))
        return message

    def _call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        if self._ws is None:
            raise BrowserError("browser is closed")
        self._next_id += 1
        msg_id = self._next_id
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                message = self._recv(deadline)
                if message.get("id") == msg_id:
                    if "error" in message:
                        raise BrowserError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message.get("result", {})
                    return result
                if "method" in message:
                    self._events.append(message)
        except TimeoutError:
            raise BrowserError(f"{method}: no answer within {self.timeout}s") from None

    def wait_for_event(self, method: str) -> dict[str, Any]:
        """The oldest unseen event named ``method``, waiting for it if none has arrived."""
        deadline = time.monotonic() + self.timeout
        while True:
            for i, event in enumerate(self._events):
                if event["method"] == method:
                    del self._events[: i + 1]
                    params: dict[str, Any] = event.get("params", {})
                    return params
            try:
                message = self._recv(deadline)
            except TimeoutError:
                raise BrowserError(f"no {method} within {self.timeout}s") from None
            if "method" in message:
                self._events.append(message)

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page and return its JSON value; page exceptions raise."""
        reply = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"page script failed: {text}")
        return reply.get("result", {}).get("value")

    def _element(self, selector: str, body: str) -> Any:
        """Run ``body`` with ``el`` bound to the selector's element; a missing one raises."""
        return self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            f" if (!el) throw new Error('no element matches ' + {json.dumps(selector)}); {body} }})()"
        )

    # -- what tests use ----------------------------------------------------------------------
    def open(self, url: str) -> None:
        self._discard("Page.loadEventFired")
        reply = self._call("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"cannot open {url}: {reply['errorText']}")
        self.wait_for_load()

    def wait_for_load(self) -> None:
        """Wait for the load event of the navigation started by the last open() or click()."""
        self.wait_for_event("Page.loadEventFired")

    def fill(self, selector: str, value: str) -> None:
        """Clear the field and type ``value`` into it, as a person would."""
        self._element(
            selector,
            "el.scrollIntoView({block: 'center'}); el.focus(); el.value = '';"
            " el.dispatchEvent(new Event('input', {bubbles: true})); return true;",
        )
        if value:
            self._call("Input.insertText", {"text": value})
        typed = self._element(selector, "return el.value;")
        if typed != value:
            raise BrowserError(f"{selector}: typed {value!r} but the field holds {typed!r}")

    def select(self, selector: str, value: str) -> None:
        """Choose the option whose value is ``value`` and fire the events a real choice fires."""
        ok = self._element(
            selector,
            f"el.focus(); el.value = {json.dumps(value)};"
            " el.dispatchEvent(new Event('input', {bubbles: true}));"
            " el.dispatchEvent(new Event('change', {bubbles: true}));"
            f" return el.value === {json.dumps(value)};",
        )
        if not ok:
            raise BrowserError(f"{selector}: has no option {value!r}")

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (fails if something else is on top)."""
        box = self._element(
            selector,
            "el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
            " const x = r.left + r.width / 2, y = r.top + r.height / 2;"
            " const top = document.elementFromPoint(x, y);"
            " return {x, y, hit: top === el || el.contains(top)};",
        )
        if not box["hit"]:
            raise BrowserError(f"{selector}: another element covers it")
        self._discard("Page.loadEventFired")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self._call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    def press(self, key: str) -> None:
        """Press and release one named key (e.g. "Tab"), for keyboard-only checks."""
        codes = {"Tab": 9, "Enter": 13, "Escape": 27}
        event = {"key": key, "code": key, "windowsVirtualKeyCode": codes.get(key, 0)}
        self._call("Input.dispatchKeyEvent", {"type": "rawKeyDown", **event})
        self._call("Input.dispatchKeyEvent", {"type": "keyUp", **event})

    def text(self, selector: str) -> str:
        """The element's rendered text, whitespace collapsed."""
        return " ".join(str(self._element(selector, "return el.textContent;")).split())

    def attribute(self, selector: str, name: str) -> str | None:
        value = self._element(selector, f"return el.getAttribute({json.dumps(name)});")
        return None if value is None else str(value)

    def count(self, selector: str) -> int:
        return int(self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length"))

    def set_viewport(self, width: int, height: int, *, mobile: bool = False, scale: float = 1.0) -> None:
        """Emulate a screen; ``mobile`` also honours <meta name=viewport> like a phone does."""
        self._call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile},
        )
        self._call("Emulation.setTouchEmulationEnabled", {"enabled": mobile})

    def reset_viewport(self) -> None:
        self._call("Emulation.clearDeviceMetricsOverride")
        self._call("Emulation.setTouchEmulationEnabled", {"enabled": False})

    def screenshot(self, path: Path | str, *, full_page: bool = True) -> Path:
        """Save a PNG of the page (the whole document unless ``full_page`` is false)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self._call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            viewport = metrics.get("cssLayoutViewport") or metrics["layoutViewport"]
            width = max(size["width"], viewport["clientWidth"])
            params |= {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1},
            }
        data = base64.b64decode(self._call("Page.captureScreenshot", params)["data"])
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        return out

    def close(self) -> None:
        """Stop Chromium and remove its profile; safe to call twice."""
        self._ws = None
        self._stack.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        if not self._log.closed:
            self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def _discard(self, method: str) -> None:
        self._events = [e for e in self._events if e["method"] != method]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
