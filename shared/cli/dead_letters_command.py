"""``dead-letters``: list, replay or purge the events the estuary refused (``shared.dead_letters`` is the store,
``shared.replicate.replay`` the replay).

Output never shows a document's contents: a parked event's key, operation, error (without the values a server
quotes in it), attempts and time only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from bson import json_util

from shared import scope
from shared.cli.common import EXIT_FAILED, EXIT_OK, Command, add_collection, add_config, positive_int, services, utc
from shared.config import ReplicatorConfig
from shared.dead_letters import DeadLetters, ParkedEvent, without_values
from shared.errors import ConfigError
from shared.replicate import ReplayResult, replay
from shared.services import Services

_DEFAULT_LIST_LIMIT = 20
_KEY_WIDTH, _ERROR_WIDTH = 40, 70
_HEADERS = ("REF", "OPERATION", "DOCUMENT KEY", "ERROR", "ATTEMPTS", "PARKED AT")


def _configure(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--stream", metavar="NAME", help="only this stream (default: every stream)")
    add_collection(parser)
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
    if args.collection is not None:
        if args.stream is None:
            raise ConfigError(["--collection needs --stream: the scoped stream the collection belongs to"])
        args.stream = scope.unit_name(args.stream, args.collection)  # a collection's dead letters are its unit's
    with services(args) as built:
        if args.action == "list":
            return _list(built.config, built.dead_letters, args)
        if args.action == "purge":
            return _purge(built.config, built.dead_letters, args)
        return _replay(built, args)


def _selected(config: ReplicatorConfig, only: str | None, parked: Mapping[str, int]) -> list[str]:
    """The configured single-collection streams, then every name with dead letters (a scoped stream's are its
    collections'); or just ``only``, which may be a scoped stream (all its collections) or one collection."""
    singles = [s.name for s in config.streams if s.scope == "collection"]
    if only is None:
        return singles + sorted(set(parked) - set(singles))
    if only not in parked:
        stream = config.stream(only)  # an unknown name is a usage error
        if stream.scope != "collection":
            return sorted(name for name in parked if scope.split_unit(name)[0] == only) or [only]
    return [only]


def _configured(config: ReplicatorConfig, name: str) -> bool:
    """Whether ``name`` is a configured stream, or a collection one of the scoped streams still covers."""
    try:
        config.stream(name)
    except ConfigError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- list


def _list(config: ReplicatorConfig, dead: DeadLetters, args: argparse.Namespace) -> int:
    parked = dead.streams()
    report = [
        (
            name,
            _configured(config, name),
            parked.get(name, 0),
            dead.newest(name, args.limit) if parked.get(name) else [],
        )
        for name in _selected(config, args.stream, parked)
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
            utc(p.parked_at),
        )
        for p in newest
    ]
    return f"{stream}: {parked} parked{note}{shown}:\n" + _table(_HEADERS, rows, indent="    ")


# ---------------------------------------------------------------------------------------------- replay


def _replay(built: Services, args: argparse.Namespace) -> int:
    config, dead = built.config, built.dead_letters
    parked = dead.streams()
    if args.stream is not None:
        config.stream(args.stream)  # replaying needs the stream's source and estuary
    results: list[ReplayResult] = []
    unconfigured: list[str] = []
    for name in _selected(config, args.stream, parked):
        if not _configured(config, name):
            unconfigured.append(name)
        elif not parked.get(name):
            results.append(ReplayResult(name))
        else:
            stream = config.stream(name)
            results.append(
                replay(
                    stream,
                    dead_letters=dead,
                    checkpoints=built.checkpoints,
                    source=built.clients.collection(stream.source),
                    estuary=built.clients.collection(stream.estuary),
                    clock=built.clock,
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


# ---------------------------------------------------------------------------------------------- purge


def _purge(config: ReplicatorConfig, dead: DeadLetters, args: argparse.Namespace) -> int:
    parked = dead.streams()
    names = [n for n in _selected(config, args.stream, parked) if parked.get(n)]
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


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], *, indent: str) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        indent + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    )


COMMANDS = (Command("dead-letters", "list, replay or purge the events the estuary refused", _configure, execute),)
