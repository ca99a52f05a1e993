"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def insurance_csv() -> Path:
    """The public insurance data set, kept in ``shared/`` beside the repository (read-only)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "insurance.csv"
    if not path.is_file():
        pytest.fail(f"test data not found at {path}; the repository must sit beside shared/")
    return path
