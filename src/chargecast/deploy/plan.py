"""What a deploy command will do: an ordered list of steps, and the dry-run listing of them.

A plan is pure data, so the whole procedure can be read, reviewed and tested without a cloud
account; :mod:`chargecast.deploy.runner` executes it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

VAR = re.compile(r"\$\{([A-Z_]+)\}")


@dataclass(frozen=True)
class Reading:
    """What a poll made of one output: ``value`` once there is one, else a note on where things stand."""

    value: str | None
    note: str = ""


class HopelessError(Exception):
    """Raised by a poll's reader when the output shows that waiting longer cannot help."""


def _printed(output: str) -> Reading:
    return Reading(output.strip() or None)


@dataclass(frozen=True)
class Poll:
    """Rerun a step until its output is what it waits for: a load balancer IP, an ACTIVE certificate.

    ``read`` turns one output into a Reading (a pure function, so a plan stays data); by default
    any output at all is the value.
    """

    attempts: int
    interval: float
    read: Callable[[str], Reading] = _printed
    until: str = "it prints something"

    @property
    def seconds(self) -> float:
        return self.attempts * self.interval


@dataclass(frozen=True)
class Step:
    """One command of a plan.

    Strings may hold ``${NAME}`` placeholders for values only known while running: ``WORKDIR`` (a
    temporary directory for this run) and whatever earlier steps ``capture``.
    """

    name: str
    argv: tuple[str, ...]
    why: str
    hint: str = ""  # how to fix it when it fails; may name ${VALUES} captured before it
    skip_if: tuple[str, ...] = ()  # a probe: when it succeeds the work is already done
    if_exists: tuple[str, ...] = ()  # run this instead of skipping when the probe succeeds (an update)
    when: str = ""  # a captured value: the step is skipped while it is empty
    gone_if: tuple[str, ...] = ()  # a failure whose error says one of these means "already deleted"
    say: str = ""  # a message step: it prints this (placeholders filled) and runs nothing
    tools: tuple[str, ...] = ()  # a check step: these must be on PATH (argv is then empty)
    capture: str = ""  # keep the stripped stdout under this name
    secret: bool = False  # the captured value is a secret: the runner never prints it, not even in errors
    require_output: bool = False  # an empty stdout is a failure
    must_contain: str = ""  # stdout must contain this, or the step failed
    must_lack: str = ""  # stdout must not contain this, or the step failed
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
    keep_going: bool = False  # a failed step is reported and the others still run (teardown)
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
    git = " (only git, to name the default tag)" if plan.command == "deploy gke" else ""
    lines = [
        f"chargecast {plan.command} --dry-run: these steps would run in this order. None of them was run,",
        f"not even the tool and login checks{git}. ${{NAME}} stands for a value an earlier step produces.",
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
    if step.when:
        lines.append(f"skipped when ${{{step.when}}} is empty")
    if step.skip_if and step.if_exists:
        lines.append(f"probe: {show_command(step.skip_if)}")
        lines.append(f"when it succeeds, this runs instead: {show_command(step.if_exists)}")
    elif step.skip_if:
        lines.append(f"skipped when this succeeds: {show_command(step.skip_if)}")
    if step.stdin:
        lines.append(f"stdin: {step.stdin}")
    if step.poll:
        lines.append(
            f"repeated every {step.poll.interval:g} s, at most {step.poll.attempts} times"
            f"{_span(step.poll.seconds)}, until {step.poll.until}"
        )
    if step.gone_if:
        lines.append("an error saying it is already gone counts as done")
    if step.capture:
        secret = ", a secret that is never printed" if step.secret else ""
        lines.append(f"its output becomes ${{{step.capture}}}{secret}")
    lines.append(f"# {step.why}")
    return lines


def _span(seconds: float) -> str:
    """`` (60 min)`` for long waits, nothing for short ones (their seconds say it)."""
    return f" ({seconds / 60:g} min)" if seconds >= 600 else ""


def _what(step: Step) -> str:
    if step.tools:
        return f"{', '.join(step.tools)} must be on PATH"
    if step.say:
        return "prints (runs nothing)"
    return show_command(step.argv)


def format_plan(plan: Plan) -> str:
    """The dry-run listing: every command in order, with why it is there."""
    lines = _header(plan)
    if plan.keep_going:
        lines.append(
            "A deletion that fails is reported and the others still run; the command then exits with status 2."
        )
    for number, step in enumerate(plan.steps, 1):
        lines.append(f"{number:2d}. {step.name}: {_what(step)}")
        lines += [f"    | {line}" for line in step.say.splitlines()]
        lines += [f"    {line}" for line in _details(step)]
    if plan.done:
        lines.append(f"Then it prints: {plan.done}")
    return "\n".join(lines)
