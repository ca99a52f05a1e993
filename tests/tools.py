"""Command-line tools the dev lock installs beside the interpreter (kubectl, hadolint, ...)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


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
