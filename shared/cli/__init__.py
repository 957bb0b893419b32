"""``python -m shared``: the replicator's command line.

Each command is a ``Command(name, help, configure, execute)`` in a module of this package, registered below.
``main`` is the one place that maps outcomes to exit codes: 0 success, 1 a check or run failed, 2 bad usage or
configuration. Errors print one line plus a ``Tip:`` (server errors through ``mongo_errors.explain``, as
``test-auth`` words them); ``--debug`` shows the traceback of server errors and unexpected ones.
This package is the only code that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pymongo.errors import PyMongoError

from shared.cli import auth_commands, dead_letters_command, replication_commands, reset_command, verify_command
from shared.cli.common import EXIT_FAILED, EXIT_USAGE, Execute, fail
from shared.errors import ConfigError, ReplicatorError
from shared.mongo_errors import explain
from shared.redaction import redact_text
from shared.telemetry import configure_logging

_COMMANDS = (
    *auth_commands.COMMANDS,
    *replication_commands.COMMANDS,
    *reset_command.COMMANDS,
    *verify_command.COMMANDS,
    *dead_letters_command.COMMANDS,
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    configure_logging(level=level, json_lines=args.log_format == "json")
    execute: Execute = args.execute
    try:
        return execute(args)
    except ConfigError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "problems": exc.problems}, indent=2))
        else:
            fail(exc.message, exc.hint)
        return EXIT_USAGE
    except (ReplicatorError, PyMongoError) as exc:  # one explanation of server failures for every command
        if args.debug and isinstance(exc, PyMongoError):
            raise
        fail(*explain(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {redact_text(str(exc))}", file=sys.stderr)
        print("Tip: run again with --debug to see the traceback", file=sys.stderr)
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared", description="MongoDB / Azure DocumentDB change-stream replicator."
    )
    parser.add_argument("--debug", action="store_true", help="debug logs, and tracebacks for unexpected errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="informational logs (token acquisition, ...)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format on stderr")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(execute=command.execute)
    return parser
