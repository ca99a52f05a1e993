"""argparse value types shared by the subcommands: each rejects bad input with one clear line."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable


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
