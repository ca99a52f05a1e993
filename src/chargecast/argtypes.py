"""argparse value types shared by the subcommands: each rejects bad input with one clear line."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (holdout share, interval level)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1 (exclusive)")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """A whole number no smaller than ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} must be at least {low}")
        return value

    return parse


def matching(pattern: str, what: str) -> Callable[[str], str]:
    """Text that fully matches ``pattern`` (cloud resource names, tags)."""

    def parse(text: str) -> str:
        if not re.fullmatch(pattern, text):
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {what}")
        return text

    return parse


def port(text: str) -> int:
    """A TCP port; 0 asks the OS for a free one."""
    value = int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0 to 65535)")
    return value


_DURATION = re.compile(r"([0-9]{1,9})([dhm])", re.ASCII)
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
LONGEST = timedelta(days=36_500)  # a century: anything longer is a typo, and "now minus it" must stay a date


def duration(text: str) -> timedelta:
    """A retention period: a whole number of days, hours or minutes above zero (``90d``, ``12h``, ``30m``)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be a whole number above zero followed by d (days), h (hours) or m (minutes), like 90d"
        )
    value = timedelta(**{_UNITS[match[2]]: int(match[1])})
    if value > LONGEST:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {LONGEST.days}d (a century)")
    return value


def moment(text: str) -> datetime:
    """An ISO date (``2026-01-01``, midnight) or timestamp, in UTC unless it names its own offset."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date or timestamp (like 2026-01-01 or 2026-01-01T12:30:00Z)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
