"""Test helpers: command-line tools the dev lock installs (kubectl, hadolint, ...), and an
app served for real by uvicorn in a thread on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn


def dev_tool(name: str) -> str:
    """The virtualenv's copy first (the dev lock installs it), else PATH.

    Missing, it is a skip on a developer's machine and a failure in CI, which installs the lock.
    """
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        message = f"{name} not found beside {sys.executable} or on PATH (it comes with the dev lock)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextlib.contextmanager
def served(app: Any, server: type[uvicorn.Server] = uvicorn.Server, **config: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a thread until its /readyz is 200; yields the base URL, stops on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    instance = server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 15
        while not instance.started or httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.05)
        yield url
    finally:
        instance.should_exit = True
        thread.join(timeout=10)
        sock.close()
