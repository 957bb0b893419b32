"""``dead-letters``: list, replay or purge the events the estuary refused (the logic is ``shared.dead_letters``).

Output never shows a document's contents: a parked event's key, operation, error (without the values a server
quotes in it), attempts and time only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from bson import json_util

from shared.auth.mongo_client import ClientFactory
from shared.cli.common import EXIT_FAILED, EXIT_OK, Command, add_config, positive_int
from shared.clock import SystemClock
from shared.config_loader import load_config
from shared.dead_letters import ParkedEvent, ReplayResult, replay, without_values
from shared.replicate import Replicator
from shared.telemetry import ReplicationMetrics

_DEFAULT_LIST_LIMIT = 20
_KEY_WIDTH, _ERROR_WIDTH = 40, 70
_HEADERS = ("REF", "OPERATION", "DOCUMENT KEY", "ERROR", "ATTEMPTS", "PARKED AT")


def _configure(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--stream", metavar="NAME", help="only this stream (default: every stream)")
    actions = parser.add_subparsers(title="actions", dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="how many are parked, and the newest of each stream")
    listing.add_argument(
        "--limit", type=positive_int, default=_DEFAULT_LIST_LIMIT, metavar="N", help="newest N per stream (default 20)"
    )
    replaying = actions.add_parser(
        "replay", help="write the current source state of parked documents; delete what the estuary accepts"
    )
    replaying.add_argument("--limit", type=positive_int, metavar="N", help="at most N per stream (default: all)")
    purging = actions.add_parser("purge", help="delete parked events (only with --yes)")
    purging.add_argument("--yes", action="store_true", help="really delete; without it, say how many would go")
    for action in (listing, replaying, purging):
        # Also accepted after the action; SUPPRESS keeps a --json given before it.
        action.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")


def execute(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    factory = ClientFactory()
    try:
        replicator = Replicator(config, factory=factory, clock=SystemClock(), metrics=ReplicationMetrics())
        return _ACTIONS[args.action](replicator, args)
    finally:
        factory.close()


def _selected(replicator: Replicator, only: str | None, parked: Mapping[str, int]) -> list[str]:
    """The configured streams, then those with dead letters but no configuration; or just ``only``."""
    configured = [s.name for s in replicator.config.streams]
    if only is None:
        return configured + sorted(set(parked) - set(configured))
    if only not in parked:
        replicator.stream(only)  # an unknown name is a usage error
    return [only]


# ---------------------------------------------------------------------------------------------- list


def _list(replicator: Replicator, args: argparse.Namespace) -> int:
    dead = replicator.dead_letters
    parked = dead.streams()
    configured = {s.name for s in replicator.config.streams}
    report = [
        (name, name in configured, parked.get(name, 0), dead.newest(name, args.limit) if parked.get(name) else [])
        for name in _selected(replicator, args.stream, parked)
    ]
    if args.json:
        rows = [
            {"stream": name, "configured": known, "parked": n, "newest": [_parked_dict(p) for p in newest]}
            for name, known, n, newest in report
        ]
        print(json.dumps(rows, indent=2))
    else:
        print("\n\n".join(_render_listing(*entry) for entry in report))
    return EXIT_OK


def _parked_dict(p: ParkedEvent) -> dict[str, Any]:
    return {
        "ref": p.ref,
        "operation": p.operation,
        "document_key": json.loads(_key_json(p.document_key)),
        "error": {"code": p.error_code, "message": without_values(p.error_message)},
        "attempts": p.attempts,
        "parked_at": p.parked_at,
    }


def _render_listing(stream: str, configured: bool, parked: int, newest: list[ParkedEvent]) -> str:
    note = "" if configured else " (stream no longer configured: list or purge only)"
    if not parked:
        return f"{stream}: nothing parked{note}"
    shown = f", the newest {len(newest)}" if len(newest) < parked else ""
    rows = [
        (
            p.ref,
            p.operation,
            _cut(_key_json(p.document_key), _KEY_WIDTH),
            _cut(f"{p.error_code} {without_values(p.error_message)}".strip(), _ERROR_WIDTH),
            str(p.attempts),
            _utc(p.parked_at),
        )
        for p in newest
    ]
    return f"{stream}: {parked} parked{note}{shown}:\n" + _table(_HEADERS, rows, indent="    ")


# ---------------------------------------------------------------------------------------------- replay


def _replay(replicator: Replicator, args: argparse.Namespace) -> int:
    dead = replicator.dead_letters
    parked = dead.streams()
    configured = {s.name for s in replicator.config.streams}
    if args.stream is not None:
        replicator.stream(args.stream)  # replaying needs the stream's source and estuary
    results: list[ReplayResult] = []
    unconfigured: list[str] = []
    for name in _selected(replicator, args.stream, parked):
        if name not in configured:
            unconfigured.append(name)
        elif not parked.get(name):
            results.append(ReplayResult(name))
        else:
            stream = replicator.stream(name)
            results.append(
                replay(
                    stream,
                    dead_letters=dead,
                    checkpoints=replicator.checkpoints,
                    source=replicator.collection(stream.source),
                    estuary=replicator.collection(stream.estuary),
                    owner=_owner(),
                    clock=replicator.clock,
                    limit=args.limit,
                )
            )
    if args.json:
        rows = [asdict(r) for r in results]
        rows += [{"stream": n, "outcome": "not_configured", "remaining": parked[n]} for n in unconfigured]
        print(json.dumps(rows, indent=2))
    else:
        _print_replay(results, unconfigured, parked)
    ok = not unconfigured and all(r.outcome == "done" and not r.still_refused for r in results)
    return EXIT_OK if ok else EXIT_FAILED


def _print_replay(results: list[ReplayResult], unconfigured: list[str], parked: Mapping[str, int]) -> None:
    for r in results:
        if r.outcome in ("lease_held", "pipeline"):
            print(f"{r.stream}: {r.detail}", file=sys.stderr)
            continue
        if not (r.replayed or r.source_gone or r.still_refused or r.remaining):
            print(f"{r.stream}: nothing parked")
            continue
        line = (
            f"{r.stream}: {r.replayed} replayed, {r.source_gone} gone from the source (deleted from the estuary), "
            f"{r.still_refused} still refused; {r.remaining} left parked"
        )
        if r.outcome == "lease_expiring":
            line += "; stopped before the stream's lease ran out: run replay again"
        print(line)
    for name in unconfigured:
        print(
            f"{name}: {parked[name]} parked, but the stream is no longer configured: list or purge them",
            file=sys.stderr,
        )
    if any(r.still_refused for r in results):
        print(
            "Tip: 'dead-letters list' shows why the estuary refuses them; fix that (unique index, validator, "
            "document size) and replay again",
            file=sys.stderr,
        )


def _owner() -> str:
    """The lease owner of a replay: ``status`` shows it while the replay holds the stream."""
    return f"dead-letters-replay@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------- purge


def _purge(replicator: Replicator, args: argparse.Namespace) -> int:
    dead = replicator.dead_letters
    parked = dead.streams()
    names = [n for n in _selected(replicator, args.stream, parked) if parked.get(n)]
    deleted = {name: dead.purge(name) for name in names} if args.yes else {}
    if args.json:
        rows = [{"stream": n, "parked": parked[n], "deleted": deleted.get(n, 0)} for n in names]
        print(json.dumps(rows, indent=2))
    elif not names:
        print("nothing parked")
    elif args.yes:
        for name in names:
            print(f"{name}: {deleted[name]} dead letter(s) deleted")
    else:
        for name in names:
            print(f"{name}: {parked[name]} dead letter(s) would be deleted")
        total = sum(parked[n] for n in names)
        print(f"nothing deleted: pass --yes to delete these {total} dead letter(s)", file=sys.stderr)
    return EXIT_FAILED if names and not args.yes else EXIT_OK


# ---------------------------------------------------------------------------------------------- helpers


def _key_json(key: Mapping[str, Any]) -> str:
    return json_util.dumps(key, json_options=json_util.RELAXED_JSON_OPTIONS)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _utc(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at is not None else "-"


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], *, indent: str) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        indent + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    )


_ACTIONS: dict[str, Callable[[Replicator, argparse.Namespace], int]] = {
    "list": _list,
    "replay": _replay,
    "purge": _purge,
}

COMMANDS = (Command("dead-letters", "list, replay or purge the events the estuary refused", _configure, execute),)
