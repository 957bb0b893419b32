"""What every command shares: exit codes, the --config / --json options, the services, durations, ages, times."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

from shared import scope
from shared.auth.mongo_client import ClientFactory
from shared.config_loader import load_config
from shared.errors import ConfigError
from shared.services import Services, build_services

if TYPE_CHECKING:
    from shared.config import ReplicatorConfig, StreamConfig

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


def add_collection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--collection",
        metavar="NAME",
        help="one collection of a scoped stream (database.collection for a whole-cluster scope)",
    )


def one_stream(config: ReplicatorConfig, stream: str, collection: str | None) -> StreamConfig:
    """The stream ``--stream`` names, or one collection of it (``--collection``); a scoped stream needs the latter."""
    if collection is not None:
        if config.stream(stream).cursor == "single":
            raise ConfigError(
                [f"stream '{stream}' reads one change stream for all its collections: address it without --collection"]
            )
        return config.stream(scope.unit_name(stream, collection))
    found = config.stream(stream)
    if found.scope != "collection" and found.cursor == "per_collection":
        raise ConfigError(
            [f"stream '{stream}' replicates every matching collection of a {found.scope}: name one with --collection"],
            hint=f"python -m shared status --stream {stream} lists them",
        )
    return found


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


@contextmanager
def services(args: argparse.Namespace) -> Iterator[Services]:
    """The services for the configuration ``--config`` names, their clients closed when the command is done."""
    config = load_config(args.config)
    factory = ClientFactory()
    try:
        yield build_services(config, factory=factory)
    finally:
        factory.close()


def fail(message: str, hint: str | None) -> None:
    """The one-line error and its Tip, on stderr."""
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"Tip: {hint}", file=sys.stderr)


def age(at: object, now: float) -> float | None:
    return round(now - at, 1) if isinstance(at, int | float) else None


def ago(value: object) -> str:
    return f"{value:.0f}s ago" if isinstance(value, int | float) else "never"


def utc(at: object, *, missing: str = "-") -> str:
    """Unix seconds as a UTC date and time; ``missing`` when there is no time."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if isinstance(at, int | float) else missing
