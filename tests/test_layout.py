"""The shape of the source tree: what a review would otherwise have to re-check by hand."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "chargecast"
MAX_FUNCTION_LINES = 80  # issue 9: create_app had grown to 200 lines of nested routes


def _functions() -> list[tuple[int, str]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                size = node.end_lineno - node.lineno + 1
                found.append((size, f"{path.relative_to(SRC)}:{node.lineno} {node.name}"))
    return found


def test_no_function_is_longer_than_the_cap() -> None:
    functions = _functions()
    assert len(functions) > 100  # the walk really saw the package
    too_long = sorted(f for f in functions if f[0] > MAX_FUNCTION_LINES)
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


def test_each_deployable_is_a_package_of_its_own() -> None:
    # audit: the audit log's store and writer, imported by serving and by the CLI alike;
    # monitor: drift and realised performance, whose numpy-only parts serve the gauges too;
    # jsonlog: the log line format, shared by the server's processes and the audit process
    for package in ("model", "training", "serving", "deploy", "audit", "monitor"):
        assert (SRC / package / "__init__.py").is_file(), package
    top = sorted(p.stem for p in SRC.glob("*.py") if p.stem not in {"__init__", "__main__"})
    assert set(top) <= {"schema", "settings", "cli", "argtypes", "batch", "csvformat", "signing", "jsonlog"}, top


def test_one_patient_hash_serves_every_path() -> None:
    """Audit records (service and CLI) and actual charges must hash a patient reference alike:
    a second implementation could drift (an encoding, a digest) and actuals would never join."""
    users = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "hmac.new(" in p.read_text(encoding="utf-8"))
    assert users == ["audit/patient.py"], users
