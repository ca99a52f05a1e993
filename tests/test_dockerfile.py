"""The Dockerfile, linted and read: cheap checks that need no container engine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tools import dev_tool

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_reports_nothing() -> None:
    """Every rule on, no ignores in the file: a finding fails the build until it is fixed."""
    proc = subprocess.run(
        [dev_tool("hadolint"), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert json.loads(proc.stdout or "[]") == [], proc.stdout
    assert proc.returncode == 0
    assert "hadolint ignore" not in DOCKERFILE.read_text()


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above is not vacuous: the linter does catch the classic mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD python app.py\n")
    proc = subprocess.run(
        [dev_tool("hadolint"), "--format", "json", str(bad)], capture_output=True, text=True, check=False
    )
    codes = {finding["code"] for finding in json.loads(proc.stdout)}
    assert {"DL3007", "DL3013", "DL3025"} <= codes


def test_final_stage_runs_as_numeric_non_root_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    final = text[text.rindex("\nFROM ") :]
    assert "USER 10001:10001" in final
    assert "EXPOSE 8080" in final
    assert "HEALTHCHECK" in final
    healthcheck = final[final.index("HEALTHCHECK") :].split("\n\n", 1)[0]
    assert "/readyz" in healthcheck  # healthy = the model answers, not merely the process runs
    assert 'ENTRYPOINT ["chargecast", "serve"]' in final  # exec form: the server is PID 1
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "--mount=type=secret,id=ca" in text
    assert "pip install" not in final  # nothing is installed in the final stage


def test_sbom_is_made_in_the_build_stage_and_shipped() -> None:
    """cyclonedx-py runs from its own build-stage venv against /opt/venv; only its output ships."""
    text = DOCKERFILE.read_text()
    build, final = text[: text.rindex("\nFROM ")], text[text.rindex("\nFROM ") :]
    assert "--require-hashes -r requirements/sbom.lock" in build
    assert "/opt/sbom/bin/cyclonedx-py environment" in build
    assert "/opt/venv" in build.split("cyclonedx-py environment", 1)[1].split("&&", 1)[0]
    assert "pip uninstall" in build.split("cyclonedx-py environment", 1)[0]  # the SBOM is of what ships
    assert "COPY --from=build /sbom.cdx.json /app/sbom.cdx.json" in final
    assert "/opt/sbom" not in final
