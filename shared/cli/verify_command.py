"""``verify``: compare a stream's source and estuary, every document by ``_id`` (or a sample: a quick check).

Only a comparison of every document can say "in sync"; ``--sample N`` says what it was (no difference in N sampled
documents, not a full comparison), in the text and in the JSON (``complete``, ``verdict``).
"""

from __future__ import annotations

import argparse
import json

from pymongo.errors import PyMongoError

from shared.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Command,
    add_collection,
    add_config,
    one_stream,
    positive_int,
    services,
)
from shared.config import StreamConfig
from shared.errors import ConfigError, ReplicatorError
from shared.mongo_errors import explain
from shared.services import Services
from shared.verify import Discrepancies, StreamVerification, VerifyOptions, verify_stream

_KIND_LINES = {
    "missing": "in the source, not in the estuary",
    "extra": "in the estuary, not in the source",
    "differing": "in both, estuary copy differs",
}


def _configure_verify(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument(
        "--stream", action="append", metavar="NAME", help="only this stream (repeatable; default: every enabled one)"
    )
    add_collection(parser)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--sample",
        type=positive_int,
        metavar="N",
        help="a quick check instead: counts and N random _ids of each side; not a comparison of every document, "
        "so it never reports 'in sync' (exit 0 when the sample shows no difference)",
    )
    scope.add_argument(
        "--all",
        action="store_true",
        help="compare every document (the default, so this flag changes nothing; kept for existing scripts)",
    )
    parser.add_argument(
        "--recheck-delay",
        type=_non_negative_seconds,
        default=2.0,
        metavar="SECONDS",
        help="read every _id found wrong again after this long, and report only those still wrong (2)",
    )


def _streams(built: Services, args: argparse.Namespace) -> list[StreamConfig]:
    """The streams to compare; a scoped stream's are the collections it covers now, or the one ``--collection``
    names. Unknown names are a usage error before anything is read."""
    if args.collection is not None:
        if not args.stream or len(args.stream) != 1:
            raise ConfigError(["--collection needs exactly one --stream: the scoped stream it belongs to"])
        return [one_stream(built.config, args.stream[0], args.collection)]
    names: list[str] = args.stream or [s.name for s in built.config.streams if s.enabled]
    if not names:
        raise ConfigError(["streams: none is enabled; name one with --stream"], source=args.config)
    streams = [built.config.stream(name) for name in names]
    return [
        unit
        for stream in streams
        for unit in (
            [stream]
            if stream.scope == "collection"
            else [stream.member(m) for m in built.discovery.survey(stream, mark=False).members]
        )
    ]


def execute_verify(args: argparse.Namespace) -> int:
    if args.sample is None:  # the default (with or without --all): every document, both sides in _id order
        options = VerifyOptions(mode="all", recheck_delay=args.recheck_delay)
    else:
        options = VerifyOptions(mode="sample", sample=args.sample, recheck_delay=args.recheck_delay)
    with services(args) as built:
        streams = _streams(built, args)
        reports = []
        for stream in streams:
            try:
                source, estuary = built.clients.collection(stream.source), built.clients.collection(stream.estuary)
                reports.append(verify_stream(stream, source, estuary, options=options, clock=built.clock))
            except (PyMongoError, ReplicatorError) as exc:
                message, hint = explain(exc)
                error = message + (f" (Tip: {hint})" if hint else "")
                reports.append(StreamVerification(stream.name, options.mode, error=error))
    ok = all(r.ok for r in reports)
    if args.json:
        summary = {"ok": ok, "complete": all(r.complete for r in reports), "verdict": verdict(reports)}
        print(json.dumps({**summary, "streams": [r.to_dict() for r in reports]}, indent=2, ensure_ascii=False))
    else:
        print(render_verification(reports))
    return EXIT_OK if ok else EXIT_FAILED


def render_verification(reports: list[StreamVerification]) -> str:
    """The human form: one block per stream, then a verdict line."""
    return "\n\n".join([*(_render_stream(r) for r in reports), verdict(reports)])


def verdict(reports: list[StreamVerification]) -> str:
    """The final verdict: "in sync" only when every document of every stream was compared."""
    errors = sum(r.error is not None for r in reports)
    differ = sum(not r.ok for r in reports) - errors
    parts = [f"{differ} of {len(reports)} stream(s) OUT OF SYNC"] if differ else []
    parts += [f"{errors} of {len(reports)} stream(s) could not be verified"] if errors else []
    sampled = sum(not r.complete for r in reports)
    if parts or not sampled:
        return "; ".join(parts) or f"all {len(reports)} stream(s) in sync"
    full = f"{len(reports) - sampled} stream(s) in sync; " if sampled < len(reports) else ""
    return (
        f"{full}no difference in the sampled documents of {sampled} stream(s); not a full comparison "
        "(verify without --sample compares every document)"
    )


def _render_stream(r: StreamVerification) -> str:
    if r.error is not None:
        return f"[FAIL] {r.stream}: could not verify: {r.error}"
    if r.mode == "all":
        how = "every document, in _id order"
    else:
        method = "$sample" if r.sample_method == "$sample" else "a scan of the _ids ($sample refused)"
        how = f"{r.sampled} random _id(s) of both sides, by {method}"
    lines = [
        f"[{'ok' if r.ok else 'FAIL'}] {r.stream}: {r.verdict} ({how})",
        f"    counts     source {r.source_count}, estuary {r.estuary_count}{_count_verdict(r)}",
        f"    compared   {r.checked} _id(s), byte for byte in the estuary form",
    ]
    for kind, found in r.discrepancies().items():
        lines.append(f"    {kind:<10} {found.total} {_KIND_LINES[kind]}{_examples(found)}")
    if r.rechecked or r.unrechecked:
        still = r.rechecked - r.recovered
        lines.append(
            f"    rechecked  {r.rechecked} after {r.recheck_delay:g}s: {r.recovered} recovered (written meanwhile), "
            f"{still} still wrong" + (f"; {r.unrechecked} more reported without a recheck" if r.unrechecked else "")
        )
    lines.append(f"    took       {r.seconds:.1f}s")
    return "\n".join(lines)


def _count_verdict(r: StreamVerification) -> str:
    if r.source_count is None or r.estuary_count is None or r.source_count == r.estuary_count:
        return ""
    bigger, difference = ("source", r.source_count - r.estuary_count)
    if difference < 0:
        bigger, difference = "estuary", -difference
    return f": the {bigger} has {difference} more"


def _examples(found: Discrepancies) -> str:
    if not found.examples:
        return ""
    more = found.total - len(found.examples)
    return ": " + ", ".join(found.examples) + (f" and {more} more" if more else "")


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to 3600, not {text!r}")
    return value


COMMANDS = (
    Command(
        "verify",
        "compare each stream's source and estuary: every document by _id (--sample N: a quick check only)",
        _configure_verify,
        execute_verify,
    ),
)
