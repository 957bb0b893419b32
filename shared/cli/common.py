"""What every command shares: exit codes, the --config / --json options, durations, ages."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from shared.errors import ReplicatorError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Execute = Callable[[argparse.Namespace], int]


class Command(NamedTuple):
    """One sub-command: its name, one line of help, how it parses its options, what it does (an exit code)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    execute: Execute


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML or JSON configuration (default: the REPLICATOR_CONFIG setting)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a positive whole number."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text!r}")
    return value


def fail(exc: ReplicatorError) -> None:
    """The one-line error and its Tip, on stderr."""
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"Tip: {exc.hint}", file=sys.stderr)


def age(at: object, now: float) -> float | None:
    return round(now - at, 1) if isinstance(at, int | float) else None


def ago(value: object) -> str:
    return f"{value:.0f}s ago" if isinstance(value, int | float) else "never"


def when(at: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if isinstance(at, int | float) else "the start"
