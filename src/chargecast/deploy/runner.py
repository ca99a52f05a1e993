"""Run a plan with ``subprocess``: in order, stopping at the first failure with a message that
names the step and says how to fix it. Every step is safe to repeat, so after a fix the same
command simply runs again: what exists is probed and skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from chargecast.deploy.plan import VAR, Plan, Step, show_command

INSTALL_HINTS = {
    "gcloud": "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install",
    "kubectl": "install it with `gcloud components install kubectl` or from https://kubernetes.io/docs/tasks/tools/",
    "gke-gcloud-auth-plugin": (
        "kubectl needs it to log in to GKE; install it with `gcloud components install gke-gcloud-auth-plugin` "
        "(or the google-cloud-cli-gke-gcloud-auth-plugin package where gcloud came from apt/dnf)"
    ),
    "docker": "install Docker (https://docs.docker.com/get-docker/), or let Cloud Build build the image: --build cloud",
}


class DeployError(Exception):
    """A step failed; the message names it and says what to do."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step '{step}': {message}")
        self.step = step


def _fill(text: str, values: Mapping[str, str]) -> str:
    return VAR.sub(lambda m: values[m.group(1)], text)


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "".join(f"\n    {line}" for line in kept)


class _Run:
    """One run of a plan: its environment, the values steps capture, and where output goes."""

    def __init__(self, plan: Plan, workdir: Path, out: TextIO, err: TextIO, sleep: Callable[[float], None]) -> None:
        # No question may block an unattended run; the plan's own variables (the project) win.
        self.env = {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", **dict(plan.env)}
        self.values = {"WORKDIR": str(workdir)}
        self.secrets: dict[str, str] = {}  # name -> value of captured secrets, masked in all output
        self.workdir, self.out, self.err, self.sleep = workdir, out, err, sleep

    def invoke(self, step: Step, argv: Sequence[str], *, stdin: str | None, capture: bool) -> tuple[int, str, str]:
        """Run one command; returns (status, stdout, stderr tail). Output streams unless it is needed."""
        try:
            if capture or stdin is not None:
                done = subprocess.run(
                    argv,
                    input=stdin,
                    stdin=None if stdin is not None else subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    env=self.env,
                    check=False,
                )
                return done.returncode, done.stdout, done.stderr
            sys.stdout.flush()
            tail: deque[str] = deque(maxlen=12)
            with subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env
            ) as proc:
                assert proc.stderr is not None
                for line in proc.stderr:
                    self.err.write(self.redact(line))
                    tail.append(line)
                status = proc.wait()
            return status, "", "".join(tail)
        except OSError as exc:
            raise DeployError(step.name, f"could not run {argv[0]}: {exc.strerror or exc}") from None

    def step(self, step: Step) -> None:
        if step.tools:
            _check_tools(step)
            return
        for name, source in step.copies:
            shutil.copytree(source, self.workdir / name, dirs_exist_ok=True)
        for name, text in step.files:
            (self.workdir / name).write_text(_fill(text, self.values), encoding="utf-8")
        if step.skip_if:
            status, _, _ = self.invoke(step, [_fill(a, self.values) for a in step.skip_if], stdin=None, capture=True)
            if status == 0:
                print("    already there: skipped", file=self.out)
                return
        output = self.output(step, [_fill(a, self.values) for a in step.argv])
        if step.capture:
            self.values[step.capture] = output
            if step.secret:
                self.secrets[step.capture] = output
        elif output:
            print(self.redact(output), file=self.out)

    def redact(self, text: str) -> str:
        """``text`` with every secret value put back as its ``${NAME}`` placeholder."""
        for name, value in self.secrets.items():
            if value:
                text = text.replace(value, f"${{{name}}}")
        return text

    def output(self, step: Step, argv: list[str]) -> str:
        """Run the step's command (again while it polls for output) and check what it printed."""
        stdin = _fill(step.stdin, self.values) if step.stdin else None
        needs_output = bool(step.capture or step.require_output or step.must_contain or step.poll)
        attempts = step.poll.attempts if step.poll else 1
        output = ""
        for attempt in range(1, attempts + 1):
            status, stdout, stderr = self.invoke(step, argv, stdin=stdin, capture=needs_output)
            if status != 0:
                raise _failed(step, [self.redact(a) for a in argv], status, self.redact(stderr))
            output = stdout.strip()
            if output or step.poll is None:
                break
            if attempt < attempts:
                self.sleep(step.poll.interval)
        command = self.redact(show_command(argv))
        if step.poll and not output:
            waited = step.poll.attempts * step.poll.interval
            raise DeployError(step.name, f"`{command}` printed nothing for {waited:g} s\n  fix: {step.hint}")
        if step.require_output and not output:
            raise DeployError(step.name, f"`{command}` printed nothing\n  fix: {step.hint or 'see above'}")
        expected = _fill(step.must_contain, self.values)
        if expected not in output:
            raise DeployError(step.name, f"the output lacks {expected}\n  fix: {step.hint or 'see above'}")
        return output


def _check_tools(step: Step) -> None:
    missing = [tool for tool in step.tools if shutil.which(tool) is None]
    if missing:
        raise DeployError(step.name, "; ".join(f"{tool} not found on PATH; {INSTALL_HINTS[tool]}" for tool in missing))


def _failed(step: Step, argv: Sequence[str], status: int, stderr: str) -> DeployError:
    message = f"`{show_command(argv)}` exited with status {status}"
    message += _tail(stderr) if stderr.strip() else " and printed no error"
    if step.hint:
        message += f"\n  fix: {step.hint}"
    return DeployError(step.name, message)


def run_plan(
    plan: Plan, *, out: TextIO | None = None, err: TextIO | None = None, sleep: Callable[[float], None] | None = None
) -> dict[str, str]:
    """Run every step in order; raises DeployError at the first failure. Returns the captured values."""
    with tempfile.TemporaryDirectory(prefix="chargecast-deploy-") as tmp:
        run = _Run(plan, Path(tmp), out or sys.stdout, err or sys.stderr, sleep or time.sleep)
        for number, step in enumerate(plan.steps, 1):
            print(f"[{number}/{len(plan.steps)}] {step.name}", file=run.out, flush=True)
            run.step(step)
        if plan.done:
            print(_fill(plan.done, run.values), file=run.out)
        return run.values
