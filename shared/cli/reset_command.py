"""``reset``: the operator's override, restarting a stream (or one collection of a scoped stream) from now or by a
new copy."""

from __future__ import annotations

import argparse
import json

from shared.cli.common import EXIT_OK, Command, add_collection, add_config, one_stream, services
from shared.replicate import reset_stream


def _configure_reset(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--stream", required=True, metavar="NAME", help="the stream to reset")
    add_collection(parser)
    parser.add_argument(
        "--from",
        dest="start",
        required=True,
        choices=("now", "resnapshot"),
        help="now: continue from now, recording the skipped span as a gap; resnapshot: copy the collection again",
    )


def execute_reset(args: argparse.Namespace) -> int:
    with services(args) as built:
        stream = one_stream(built.config, args.stream, args.collection)
        checkpoint = reset_stream(stream, args.start, checkpoints=built.checkpoints)
    if args.json:
        print(
            json.dumps(
                {"stream": stream.name, "from": args.start, "status": checkpoint.status, "phase": checkpoint.phase}
            )
        )
    elif args.start == "resnapshot":
        print(f"{stream.name}: the next pass copies the collection again, then streams from the point it captures")
    else:
        gap = " (the skipped span is recorded as a gap)" if checkpoint.gaps else ""
        print(f"{stream.name}: the next pass starts from now{gap}")
    return EXIT_OK


COMMANDS = (
    Command("reset", "restart a stream from now, or copy it again (resnapshot)", _configure_reset, execute_reset),
)
