"""JSON log lines on stdout, one ``write`` each: for the server's processes and the audit writer's.

Several processes share stdout; a line written in one ``os.write`` of under 4 KiB is never
interleaved with another process's, which buffered text streams do not promise. Patient data
is never logged.
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
