"""JSON log lines on stdout, one ``write`` each.

Several worker processes share stdout; a line written in one ``os.write`` of under 4 KiB
is never interleaved with another process's, which buffered text streams do not promise.
The access log bypasses :mod:`logging` (record creation and caller lookup cost more than
the prediction); everything else goes through a :class:`logging.Handler` with the same
line format. Patient data is never logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Final

import orjson

LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
STDOUT: Final = 1


def _timestamp(now: float) -> str:
    seconds = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((now - seconds) * 1000):03d}Z"


def write_line(fields: dict[str, Any], fd: int = STDOUT) -> None:
    """Write one JSON object as one line; a closed or full stdout never breaks a request."""
    with contextlib.suppress(OSError):  # stdout gone (the pipe's reader exited)
        os.write(fd, orjson.dumps(fields, default=str) + b"\n")


class JsonHandler(logging.Handler):
    """Formats records as JSON lines with the same keys as the access log."""

    def __init__(self, fd: int = STDOUT) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {
                "ts": _timestamp(record.created),
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": record.getMessage(),
                "pid": record.process,
            }
            extra = getattr(record, "fields", None)
            if isinstance(extra, dict):
                fields.update(extra)
            if record.exc_info:
                fields["exception"] = self.formatException(record.exc_info)
            write_line(fields, self.fd)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)

    def formatException(self, exc_info: Any) -> str:  # noqa: N802 - logging's naming
        return logging.Formatter().formatException(exc_info)


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and chargecast: JSON lines, one level."""
    name = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": {"()": JsonHandler}},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": name, "propagate": False},
            "uvicorn.error": {"level": name},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "chargecast": {"handlers": ["json"], "level": name, "propagate": False},
        },
    }


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
