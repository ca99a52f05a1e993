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

from chargecast.deploy.plan import VAR, HopelessError, Plan, Reading, Step, show_command

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


class IncompleteError(DeployError):
    """Some steps of a keep-going plan failed; each was reported when it did."""

    def __init__(self, failed: Sequence[str]) -> None:
        Exception.__init__(self, f"{len(failed)} step(s) failed, the others ran: " + ", ".join(failed))
        self.step = failed[0]
        self.failed = tuple(failed)


def _fill(text: str, values: Mapping[str, str]) -> str:
    return VAR.sub(lambda m: values[m.group(1)], text)


def _fill_known(text: str, values: Mapping[str, str]) -> str:
    """Placeholders that have a value get it; the others stay as written (a hint may name later ones)."""
    return VAR.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _span(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 600 else f"{seconds:g} s"


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
        if step.say:
            print(self.redact(_fill(step.say, self.values)), file=self.out)
            return
        if step.when and not self.values.get(step.when):
            print(f"    nothing to do: ${{{step.when}}} is empty", file=self.out)
            return
        for name, source in step.copies:
            shutil.copytree(source, self.workdir / name, dirs_exist_ok=True)
        for name, text in step.files:
            (self.workdir / name).write_text(_fill(text, self.values), encoding="utf-8")
        argv = step.argv
        if step.skip_if:
            status, _, _ = self.invoke(step, [_fill(a, self.values) for a in step.skip_if], stdin=None, capture=True)
            if status == 0 and not step.if_exists:
                print("    already there: skipped", file=self.out)
                return
            if status == 0:
                print("    already there: updating it", file=self.out)
                argv = step.if_exists
        output = self.output(step, [_fill(a, self.values) for a in argv])
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
        """Run the step's command (again while it polls) and check what it printed."""
        stdin = _fill(step.stdin, self.values) if step.stdin else None
        needs_output = bool(step.capture or step.require_output or step.must_contain or step.must_lack or step.poll)
        attempts = step.poll.attempts if step.poll else 1
        output, note = "", ""
        for attempt in range(1, attempts + 1):
            status, stdout, stderr = self.invoke(step, argv, stdin=stdin, capture=needs_output)
            if status != 0 and any(sign.lower() in stderr.lower() for sign in step.gone_if):
                print("    already gone: nothing to delete", file=self.out)
                return ""
            if status != 0:
                raise _failed(step, [self.redact(a) for a in argv], status, self.redact(stderr), self.hint(step))
            if step.poll is None:
                output = stdout.strip()
                break
            reading = self.read(step, stdout)
            if reading.value:
                output = reading.value
                break
            note = self.progress(reading, note, attempt)
            if attempt < attempts:
                self.sleep(step.poll.interval)
        self.check(step, argv, output, note)
        return output

    def read(self, step: Step, stdout: str) -> Reading:
        assert step.poll is not None
        try:
            return step.poll.read(stdout)
        except HopelessError as exc:
            raise DeployError(step.name, f"{self.redact(str(exc))}\n  fix: {self.hint(step)}") from None

    def progress(self, reading: Reading, last: str, attempt: int) -> str:
        """Say where a long wait stands when that changes, and every tenth poll that it goes on."""
        if reading.note and reading.note != last:
            print(f"    {self.redact(reading.note)}", file=self.out, flush=True)
        elif reading.note and attempt % 10 == 0:
            print(f"    still waiting (poll {attempt})", file=self.out, flush=True)
        return reading.note or last

    def check(self, step: Step, argv: list[str], output: str, note: str) -> None:
        command = self.redact(show_command(argv))
        hint = self.hint(step) or "see above"
        if step.poll and not output:
            waited = _span(step.poll.seconds)
            if note:
                raise DeployError(step.name, f"still not done after {waited}: {self.redact(note)}\n  fix: {hint}")
            raise DeployError(step.name, f"`{command}` printed nothing for {waited}\n  fix: {hint}")
        if step.require_output and not output:
            raise DeployError(step.name, f"`{command}` printed nothing\n  fix: {hint}")
        expected = _fill(step.must_contain, self.values)
        if expected not in output:
            raise DeployError(step.name, f"the output lacks {expected}\n  fix: {hint}")
        if step.must_lack and step.must_lack in output:
            raise DeployError(step.name, f"the output contains {step.must_lack}\n  fix: {hint}")

    def hint(self, step: Step) -> str:
        return self.redact(_fill_known(step.hint, self.values))


def _check_tools(step: Step) -> None:
    missing = [tool for tool in step.tools if shutil.which(tool) is None]
    if missing:
        raise DeployError(step.name, "; ".join(f"{tool} not found on PATH; {INSTALL_HINTS[tool]}" for tool in missing))


def _failed(step: Step, argv: Sequence[str], status: int, stderr: str, hint: str) -> DeployError:
    message = f"`{show_command(argv)}` exited with status {status}"
    message += _tail(stderr) if stderr.strip() else " and printed no error"
    if hint:
        message += f"\n  fix: {hint}"
    return DeployError(step.name, message)


def run_plan(
    plan: Plan, *, out: TextIO | None = None, err: TextIO | None = None, sleep: Callable[[float], None] | None = None
) -> dict[str, str]:
    """Run every step in order; raises DeployError at the first failure. Returns the captured values.

    A keep-going plan reports each failed deletion as it happens, runs the rest, then raises
    IncompleteError; its checks and look-ups still stop it (kubectl must never act on another cluster).
    """
    with tempfile.TemporaryDirectory(prefix="chargecast-deploy-") as tmp:
        run = _Run(plan, Path(tmp), out or sys.stdout, err or sys.stderr, sleep or time.sleep)
        failed: list[str] = []
        for number, step in enumerate(plan.steps, 1):
            print(f"[{number}/{len(plan.steps)}] {step.name}", file=run.out, flush=True)
            try:
                run.step(step)
            except DeployError as exc:
                if not (plan.keep_going and step.gone_if):  # checks and look-ups stop even a teardown
                    raise
                print(f"chargecast {plan.command}: {exc}", file=run.err, flush=True)
                failed.append(step.name)
        if failed:
            raise IncompleteError(failed)
        if plan.done:
            print(_fill(plan.done, run.values), file=run.out)
        return run.values
