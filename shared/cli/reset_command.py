"""``reset``: the operator's override, restarting a stream (or one collection of a scoped stream) from now, at a point
in time, or by a new copy; and the ``status`` line of a stream's last rewind."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any

from bson import Timestamp

from shared.cli.common import EXIT_OK, Command, add_collection, add_config, age, ago, one_stream, services, utc
from shared.replicate import reset_stream
from shared.replicate.reset import gap_reason_at, reset_stream_at
from shared.replicate.routing import watched
from shared.streams import describe_time

if TYPE_CHECKING:
    from collections.abc import Mapping

# Timestamp(1800000000, 1), 1800000000.1, 1800000000:1 (seconds since the epoch, and the order within that second)
_CLUSTER_TIME = re.compile(r"(?:timestamp\(\s*(\d+)\s*,\s*(\d+)\s*\)|(\d+)[.:](\d+))", re.IGNORECASE)
_FORMS = (
    "give an ISO 8601 time such as 2027-01-15T08:00:00Z (without a zone it is read as UTC) or a cluster timestamp "
    "such as Timestamp(1800000000, 1), 1800000000.1 or 1800000000:1"
)


def cluster_time(text: str) -> Timestamp:
    """An argparse type: an ISO 8601 time (naive: UTC) or a cluster timestamp, in the past, as a cluster time."""
    if match := _CLUSTER_TIME.fullmatch(text.strip()):
        seconds, inc = (int(group) for group in match.groups() if group is not None)
    else:
        try:
            when = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a time: {_FORMS}") from None
        when = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
        seconds, inc = math.floor(when.timestamp()), 0
    if not (0 < seconds < 2**32 and 0 <= inc < 2**32):
        raise argparse.ArgumentTypeError(f"{text!r} is outside the range of a cluster time: {_FORMS}")
    if seconds > time.time():
        raise argparse.ArgumentTypeError(
            f"{text!r} ({utc(seconds)}) is in the future: give a time in the past, such as the incident's start"
        )
    return Timestamp(seconds, inc)


def rewind_line(rewind: Mapping[str, Any] | None, now: float) -> str | None:
    """The ``status`` line of a stream's last rewind (``Checkpoint.last_rewind``); ``None`` when it never rewound."""
    if not rewind:
        return None
    to = rewind.get("to") or {}
    by = "on_history_lost: rewind" if rewind.get("by") == "on_history_lost" else "an operator (reset --at)"
    why = f" after: {rewind['reason']}" if rewind.get("by") == "on_history_lost" and rewind.get("reason") else ""
    return (
        f"    REWOUND    to {utc(to.get('t'))} (cluster time {to.get('t')}.{to.get('i')}) "
        f"{ago(age(rewind.get('at'), now))} by {by}, applying the events since again{why}"
    )


def _configure_reset(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--stream", required=True, metavar="NAME", help="the stream to reset")
    add_collection(parser)
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument(
        "--from",
        dest="start",
        choices=("now", "resnapshot"),
        help="now: continue from now, recording the skipped span as a gap; resnapshot: copy the collection again",
    )
    start.add_argument(
        "--at",
        type=cluster_time,
        metavar="TIME",
        help="restart at this time, applying the events since again (the source must keep change history that far "
        "back): ISO 8601 such as 2027-01-15T08:00:00Z (without a zone: UTC), or a cluster timestamp such as "
        "Timestamp(1800000000, 1), 1800000000.1 or 1800000000:1",
    )


def execute_reset(args: argparse.Namespace) -> int:
    at: Timestamp | None = args.at
    with services(args) as built:
        stream = one_stream(built.config, args.stream, args.collection)
        if at is None:
            checkpoint = reset_stream(stream, args.start, checkpoints=built.checkpoints)
        else:
            source = watched(stream, built.clients)  # a single change stream's database or cluster too
            checkpoint = reset_stream_at(stream, at, checkpoints=built.checkpoints, source=source, clock=built.clock)
    if args.json:
        report: dict[str, Any] = {"stream": stream.name, "from": args.start or "time"}
        if at is not None:
            report["at"] = {"t": at.time, "i": at.inc, "utc": utc(at.time)}
        print(json.dumps({**report, "status": checkpoint.status, "phase": checkpoint.phase}))
    elif at is not None:
        last = checkpoint.gaps[-1] if checkpoint.gaps else {}
        skipped = (
            f" (events from {utc(last.get('from'))} to {utc(last.get('to'))} were never applied: a recorded gap)"
            if str(last.get("reason", "")).startswith(gap_reason_at(at))
            else ""
        )
        print(f"{stream.name}: the next pass starts at {describe_time(at)}, applying the events since again{skipped}")
    elif args.start == "resnapshot":
        print(f"{stream.name}: the next pass copies the collection again, then streams from the point it captures")
    else:
        gap = " (the skipped span is recorded as a gap)" if checkpoint.gaps else ""
        print(f"{stream.name}: the next pass starts from now{gap}")
    return EXIT_OK


COMMANDS = (
    Command(
        "reset",
        "restart a stream from now, at a point in time (--at), or copy it again (resnapshot)",
        _configure_reset,
        execute_reset,
    ),
)
