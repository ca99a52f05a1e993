"""What a deploy command will do: an ordered list of steps, and the dry-run listing of them.

A plan is pure data, so the whole procedure can be read, reviewed and tested without a cloud
account; :mod:`chargecast.deploy.runner` executes it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

VAR = re.compile(r"\$\{([A-Z_]+)\}")


@dataclass(frozen=True)
class Poll:
    """Rerun a step until it prints something: for values that appear later (a load balancer IP)."""

    attempts: int
    interval: float


@dataclass(frozen=True)
class Step:
    """One command of a plan.

    Strings may hold ``${NAME}`` placeholders for values only known while running: ``WORKDIR`` (a
    temporary directory for this run) and whatever earlier steps ``capture``.
    """

    name: str
    argv: tuple[str, ...]
    why: str
    hint: str = ""  # how to fix it when it fails
    skip_if: tuple[str, ...] = ()  # a probe: when it succeeds the work is already done
    tools: tuple[str, ...] = ()  # a check step: these must be on PATH (argv is then empty)
    capture: str = ""  # keep the stripped stdout under this name
    secret: bool = False  # the captured value is a secret: the runner never prints it, not even in errors
    require_output: bool = False  # an empty stdout is a failure
    must_contain: str = ""  # stdout must contain this, or the step failed
    stdin: str = ""
    files: tuple[tuple[str, str], ...] = ()  # (name in WORKDIR, text) written before the step
    copies: tuple[tuple[str, Path], ...] = ()  # (name in WORKDIR, directory) copied before the step
    poll: Poll | None = None


@dataclass(frozen=True)
class Plan:
    """What a command will do, in order, and what it prints when everything went well."""

    command: str
    steps: tuple[Step, ...]
    done: str = ""
    retry: str = ""  # what to do after fixing a failure
    # Set for every command of this plan only, never in the user's shell or tool configuration.
    env: tuple[tuple[str, str], ...] = ()


def _show_arg(arg: str) -> str:
    """Shell-quote, keeping ``${NAME}`` placeholders expandable so a reader can paste the line."""
    if not VAR.search(arg):
        return shlex.quote(arg)
    parts = []
    for i, piece in enumerate(VAR.split(arg)):
        if i % 2:
            parts.append("${" + piece + "}")
        else:
            parts.append(re.sub(r'(["\\$`])', r"\\\1", piece))
    return '"' + "".join(parts) + '"'


def show_command(argv: Sequence[str]) -> str:
    """One command line as a shell would take it."""
    return " ".join(_show_arg(a) for a in argv)


def _header(plan: Plan) -> list[str]:
    lines = [
        f"chargecast {plan.command} --dry-run: these steps would run in this order. None of them was run,",
        "not even the tool and login checks (only git, to name the default tag). ${NAME} stands for a",
        "value an earlier step produces.",
    ]
    if plan.env:
        assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in plan.env)
        lines += [
            f"Every step runs with {assignments} in its environment: gcloud's own configuration",
            f"is left as it is. To paste a line into a shell, run `export {assignments}` first.",
        ]
    return lines


def _details(step: Step) -> list[str]:
    """The indented lines under a step: what it prepares, when it is skipped, where its output goes."""
    lines = [f"first copies {source} to ${{WORKDIR}}/{name}" for name, source in step.copies]
    for name, text in step.files:
        lines.append(f"first writes ${{WORKDIR}}/{name}:")
        lines += [f"  | {line}" for line in text.splitlines()]
    if step.skip_if:
        lines.append(f"skipped when this succeeds: {show_command(step.skip_if)}")
    if step.stdin:
        lines.append(f"stdin: {step.stdin}")
    if step.poll:
        lines.append(
            f"repeated every {step.poll.interval:g} s, at most {step.poll.attempts} times, until it prints something"
        )
    if step.capture:
        secret = ", a secret that is never printed" if step.secret else ""
        lines.append(f"its output becomes ${{{step.capture}}}{secret}")
    lines.append(f"# {step.why}")
    return lines


def format_plan(plan: Plan) -> str:
    """The dry-run listing: every command in order, with why it is there."""
    lines = _header(plan)
    for number, step in enumerate(plan.steps, 1):
        what = f"{', '.join(step.tools)} must be on PATH" if step.tools else show_command(step.argv)
        lines.append(f"{number:2d}. {step.name}: {what}")
        lines += [f"    {line}" for line in _details(step)]
    if plan.done:
        lines.append(f"Then it prints: {plan.done}")
    return "\n".join(lines)
