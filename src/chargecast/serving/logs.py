"""The access log: one JSON line per request, in the format of :mod:`chargecast.jsonlog`.

The access log bypasses :mod:`logging` (record creation and caller lookup cost more than
the prediction), and writes blocks of lines in one ``write`` each. Patient data is never
logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Final

import orjson

from chargecast.jsonlog import LEVELS, STDOUT


class AccessLog:
    """One JSON line per request: id, method, route, status, duration, model version, pid, caller.

    Lines are gathered and written in blocks of under 4 KiB (still atomic on a pipe), at
    the latest every ``Metrics.FLUSH_SECONDS`` by the app's flusher and at shutdown: one
    system call per request cost as much as the prediction.
    """

    BLOCK: Final = 4000

    def __init__(self, level: str = "info", fd: int = STDOUT) -> None:
        self.enabled = LEVELS.get(level, logging.INFO) <= logging.INFO
        self.fd = fd
        self.pid = os.getpid()
        self._pending = bytearray()
        self._second = -1
        self._prefix = ""

    def _ts(self, now: float) -> str:
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"

    def write(
        self,
        request_id: str,
        method: str,
        route: str,
        status: int,
        seconds: float,
        model_version: str | None,
        caller: str | None = None,
    ) -> None:
        """``caller`` (the API-key label or the IAP email) is in the line only when one was verified."""
        if not self.enabled:
            return
        fields = {
            "ts": self._ts(time.time()),
            "level": "info",
            "event": "request",
            "request_id": request_id,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000.0, 3),
            "model_version": model_version,
            "pid": self.pid,
        }
        if caller is not None:
            fields["caller"] = caller
        line = orjson.dumps(fields)
        if len(self._pending) + len(line) >= self.BLOCK:
            self.flush()
        self._pending += line
        self._pending += b"\n"

    def flush(self) -> None:
        if self._pending:
            with contextlib.suppress(OSError):  # stdout gone
                os.write(self.fd, self._pending)
            self._pending.clear()
