"""``run`` and ``status``: replicate from the command line, and see what every stream did."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import NamedTuple

from pymongo.errors import PyMongoError

from shared import scope
from shared.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Command,
    add_collection,
    add_config,
    age,
    ago,
    seconds,
    services,
    utc,
)
from shared.cli.reset_command import rewind_line
from shared.config import StreamConfig
from shared.errors import ConfigError
from shared.mongo_errors import explain
from shared.operations import token_health
from shared.position import Checkpoint, CopyProgress
from shared.replicate import PassResult, Replicator
from shared.services import Services
from shared.telemetry import correlation

# ---------------------------------------------------------------------------------------------- run

_FAILED_OUTCOMES = frozenset({"stopped", "failed"})
_RETRY_PAUSE = 5.0  # seconds before a stream's next pass after one that raised
_LEASE_HELD_PAUSE = 2.0  # seconds before asking again for a stream another worker holds
_QUIET_OUTCOMES = frozenset({"idle", "lease_held", "budget"})  # a scoped stream's collection that had nothing to do


def _configure_run(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--once", action="store_true", help="one pass per stream, then exit")
    parser.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")
    parser.add_argument(
        "--discover-every",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="how often a scoped stream's collections are listed again (new ones start, dropped ones stop; 30)",
    )


def execute_run(args: argparse.Namespace) -> int:
    with services(args) as built:
        names = args.stream or [s.name for s in built.config.streams if s.enabled]
        for name in names:
            built.config.stream(name)  # unknown names are a usage error before anything starts
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        failures: list[str] = []
        report = _print_json_line if args.json else _print_pass
        workers = [
            threading.Thread(target=_run_stream, args=(built.replicator, n, stop, args.once, failures, report), name=n)
            for n in names
            if not _per_collection(built.config.stream(n))
        ]
        workers += [
            threading.Thread(
                target=_run_scoped,
                args=(built, built.config.stream(n), stop, args.once, failures, report, args.discover_every),
                name=n,
            )
            for n in names
            if _per_collection(built.config.stream(n))
        ]
        for worker in workers:
            worker.start()
        try:
            while any(w.is_alive() for w in workers):
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("stopping: finishing the current batches...", file=sys.stderr)
            stop.set()
            for worker in workers:
                worker.join()
    return EXIT_FAILED if failures else EXIT_OK


def _run_stream(
    replicator: Replicator,
    name: str,
    stop: threading.Event,
    once: bool,
    failures: list[str],
    report: Callable[[PassResult], None],
) -> None:
    while not stop.is_set():
        with correlation():
            try:
                result = replicator.run_pass(name, stop=stop)
            except Exception as exc:  # noqa: BLE001 (the pass recorded it; a long run must outlive any pass)
                message, hint = explain(exc)
                print(f"{name}: pass failed: {message}" + (f"\nTip: {hint}" if hint else ""), file=sys.stderr)
                if once:
                    failures.append(name)
                    return
                stop.wait(_RETRY_PAUSE)
                continue
        report(result)
        if result.outcome in _FAILED_OUTCOMES:
            failures.append(name)
            return
        if once:
            return
        if result.outcome == "lease_held":
            stop.wait(_LEASE_HELD_PAUSE)  # another worker has it; look again later instead of spinning


def _per_collection(stream: StreamConfig) -> bool:
    """A scoped stream whose collections run as passes of their own (not one change stream for all)."""
    return stream.scope != "collection" and stream.cursor == "per_collection"


def _run_scoped(
    built: Services,
    stream: StreamConfig,
    stop: threading.Event,
    once: bool,
    failures: list[str],
    report: Callable[[PassResult], None],
    discover_every: float,
) -> None:
    """Rounds over a scoped stream's collections (each until caught up), listing them again every
    ``discover_every`` seconds; only collections that did something are reported, unless ``once``."""
    members: list[str] = []
    surveyed_at = float("-inf")
    while not stop.is_set():
        with correlation():
            if time.monotonic() - surveyed_at >= discover_every:
                try:
                    members = built.discovery.survey(stream).active
                except Exception as exc:  # noqa: BLE001 (a long run outlives an unreachable source)
                    message, hint = explain(exc)
                    tip = f"\nTip: {hint}" if hint else ""
                    print(f"{stream.name}: could not list its collections: {message}{tip}", file=sys.stderr)
                    if once:
                        failures.append(stream.name)
                        return
                    stop.wait(_RETRY_PAUSE)
                    continue
                surveyed_at = time.monotonic()
            results = built.replicator.run_collections(stream.name, members, stop=stop)
        for result in results:
            if once or result.events or result.copied or result.outcome not in _QUIET_OUTCOMES:
                report(result)
            if result.outcome in _FAILED_OUTCOMES or (once and result.outcome == "error"):
                failures.append(result.stream)
        if once:
            return
        if not members:
            stop.wait(min(discover_every, _LEASE_HELD_PAUSE))


def _print_pass(result: PassResult) -> None:
    lag = f"{result.lag_seconds:.1f}s" if result.lag_seconds is not None else "-"
    rate = result.events / result.seconds if result.seconds else 0.0
    line = (
        f"{result.stream}: {result.outcome:<11} {result.events} events ({rate:.0f}/s), {result.applied} applied, "
        f"{result.dead_lettered} dead-lettered, lag {lag}, {result.seconds:.1f}s"
    )
    print(line + (f" - {result.detail}" if result.detail else ""), flush=True)


def _print_json_line(result: PassResult) -> None:
    print(json.dumps(asdict(result)), flush=True)


# ---------------------------------------------------------------------------------------------- status


class _Row(NamedTuple):
    """One line of ``status``: a stream, or one collection of a scoped stream, and its checkpoint."""

    stream: StreamConfig
    collection: str | None
    checkpoint: Checkpoint | None

    @property
    def name(self) -> str:
        return self.stream.name if self.collection is None else scope.unit_name(self.stream.name, self.collection)


def _configure_status(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--stream", metavar="NAME", help="only this stream (default: every stream)")
    add_collection(parser)


def execute_status(args: argparse.Namespace) -> int:
    if args.collection is not None and args.stream is None:
        raise ConfigError(["--collection needs --stream: the scoped stream the collection belongs to"])
    notes: list[str] = []
    with services(args) as built:
        streams = [built.config.stream(args.stream)] if args.stream else list(built.config.streams)
        rows = [row for stream in streams for row in _rows(built, stream, args.collection, notes)]
    now = time.time()
    if args.json:
        print(json.dumps([_status_dict(row, now) for row in rows], indent=2, default=str))
    else:
        print("\n\n".join([*(_render_status(row, now) for row in rows), *notes]))
    return EXIT_FAILED if any(r.checkpoint and r.checkpoint.status in _FAILED_OUTCOMES for r in rows) else EXIT_OK


def _rows(built: Services, stream: StreamConfig, collection: str | None, notes: list[str]) -> list[_Row]:
    """The stream's row; for a scoped stream, a row per collection it covers now or ever replicated."""
    if not _per_collection(stream):
        return [_Row(stream, None, built.checkpoints.read(stream.name))]
    if collection is not None:
        unit = built.config.stream(scope.unit_name(stream.name, collection))  # refuses one the stream cannot cover
        return [_Row(stream, collection, built.checkpoints.read(unit.name))]
    try:
        survey = built.discovery.survey(stream, mark=False)
    except PyMongoError as exc:
        notes.append(
            f"{stream.name}: could not list the source's collections ({explain(exc)[0]}); shown: those with a "
            "checkpoint"
        )
        units = {scope.split_unit(cp.stream)[1] or "": cp for cp in built.checkpoints.units(stream.name)}
        return [_Row(stream, member, cp) for member, cp in sorted(units.items())]
    notes += [f"{stream.name}/{member}: matches but is not replicated: {why}" for member, why in survey.refused.items()]
    members = sorted({*survey.members, *survey.checkpoints})
    if not members:
        notes.append(f"{stream.name}: no collection of the source matches (include / exclude)")
    return [_Row(stream, member, survey.checkpoints.get(member)) for member in members]


def _status_dict(row: _Row, now: float) -> dict[str, object]:
    stream, cp = row.stream, row.checkpoint
    named = {"stream": stream.name, **({"collection": row.collection} if row.collection is not None else {})}
    if cp is None:
        return {**named, "status": "never run"}
    health = token_health(cp, change_log_mb=stream.change_log_mb, now=now)
    return {
        **named,
        "status": cp.status,
        "phase": cp.phase,
        "copy": _copy_progress(cp, now) if cp.phase == "copying" else None,
        "token": {"age_s": health.age_s, "log_window_s": health.window_s, "level": health.level},
        "checkpoint_age_s": age(cp.updated_at, now),
        "last_event_age_s": age(cp.last_event_at, now),
        "has_resume_token": cp.resume_token is not None,
        "counters": cp.counters,
        "last_error": cp.last_error,
        "gaps": cp.gaps,
        "last_rewind": cp.last_rewind,
        "lease_owner": cp.lease_owner if (cp.lease_expires_at or 0) > now else None,
    }


def _copy_progress(cp: Checkpoint, now: float) -> dict[str, object]:
    """How far a copy is, and when it should end at its rate so far (an estimate: the total is estimated too)."""
    progress = cp.snapshot or CopyProgress(reason="")
    copied, total, started = progress.copied, progress.total_estimate, progress.started_at
    rate = copied / (now - started) if started is not None and now > started and copied else None
    remaining = max(0, total - copied) if total is not None else None
    return {
        "reason": progress.reason or None,
        "copied": copied,
        "total_estimate": total,
        "docs_per_s": round(rate, 1) if rate else None,
        "eta_s": round(remaining / rate) if rate and remaining is not None else None,
    }


def _render_status(row: _Row, now: float) -> str:
    stream, cp, name = row.stream, row.checkpoint, row.name
    if cp is None:
        return f"{name}: never run"
    data = _status_dict(row, now)
    counters = ", ".join(f"{k} {v}" for k, v in sorted(cp.counters.items())) or "none yet"
    lines = [
        f"{name}: {cp.status}" + (f" (pass running on {data['lease_owner']})" if data["lease_owner"] else ""),
        f"    checkpoint {ago(data['checkpoint_age_s'])}; last applied event {ago(data['last_event_age_s'])}",
        f"    counters   {counters}",
    ]
    if cp.phase == "copying":
        copy = _copy_progress(cp, now)
        total = copy["total_estimate"]
        of = f" of ~{total}" if isinstance(total, int) else ""
        rate = f", {copy['docs_per_s']} docs/s, about {copy['eta_s']} s left" if copy["eta_s"] is not None else ""
        lines.append(f"    COPYING    {copy['copied']}{of} documents ({copy['reason']}){rate}")
    health = token_health(cp, change_log_mb=stream.change_log_mb, now=now)
    if health.level in ("warning", "critical"):
        lines.append(
            f"    TOKEN {health.level.upper()}: saved {health.age_s:.0f} s ago; the change log holds about "
            f"{health.window_s:.0f} s at the recent rate"
        )
    if cp.last_error:
        lines.append(f"    last error {cp.last_error.get('message')} ({ago(age(cp.last_error.get('at'), now))})")
    for gap in cp.gaps[-3:]:
        lines.append(
            f"    GAP        events from {utc(gap.get('from'), missing='the start')} to "
            f"{utc(gap.get('to'), missing='the start')} were not "
            f"replicated: {gap.get('reason')}"
        )
    if (rewound := rewind_line(cp.last_rewind, now)) is not None:
        lines.append(rewound)
    return "\n".join(lines)


COMMANDS = (
    Command("run", "replicate: passes for every enabled stream until Ctrl-C", _configure_run, execute_run),
    Command("status", "each stream's checkpoint: position, lag, counters, errors", _configure_status, execute_status),
)
