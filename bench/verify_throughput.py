"""Verify throughput: the full comparison (``verify_stream``, every document) against a raw scan of both collections.

Two nx-27017 servers run as child processes: a source and an estuary. N documents (string ids, JSON-native fields)
are written once to both; verification only reads, so every run reads the same data. Then, alternating the two
kinds (ABAB...) because a 2-core machine is noisy:

* raw scan: ``find().sort(_id)`` of the source, then of the estuary, each read to the end as ``RawBSONDocument``
  in batches of ``--batch-size``; nothing else;
* verify: ``verify_stream`` comparing every document (``VerifyOptions()``: both sides read in ``_id`` order and
  merge-joined, the counts taken from that scan, any re-check included; ``recheck_delay`` 0, the same batch
  size), through the same raw collections.

The figure is N / seconds (documents per side per second) for each kind, median (min-max) over ``--runs``, and the
ratio of the medians. One untimed run of each kind comes first (cold caches). Target (the "Never diverge" issue):
verify >= 0.8 x raw scan. ``--differences K`` plants K differences in the estuary (deleted, added and modified in
turn) and checks that every verify run reports exactly those (exit 1 otherwise); ``--transform`` verifies through
a field mapping (the estuary then holds the mapped documents); ``--profile`` runs one verify under cProfile and
prints where the time goes. Run: ``.venv/bin/python -m bench.verify_throughput [--documents 20000] [--runs 5]
[--batch-size 500] [--differences K] [--transform] [--profile] [--json]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.collection import Collection

from bench.common import Doc, PeakRss, machine, order_document
from localdev.standins.nx import NxServer
from shared.auth.mongo_client import ClientFactory
from shared.clock import SystemClock
from shared.config import ReplicatorConfig, StreamConfig
from shared.verify import StreamVerification, VerifyOptions, verify_stream

TARGET_RATIO = 0.8
KINDS = ("raw scan", "verify")
TRANSFORM = {"rename": {"customer": "client"}, "drop": ["note"]}
Raw = Collection[RawBSONDocument]


class BenchError(RuntimeError):
    """The benchmark could not measure what it meant to (verify found other differences than those planted)."""


def document(i: int, rng: random.Random) -> Doc:
    return order_document(f"doc-{i:08d}", i, rng)


def mapped(doc: Doc, transform: dict[str, Any] | None) -> Doc:
    if transform is None:
        return doc
    return {transform["rename"].get(k, k): v for k, v in doc.items() if k not in transform["drop"]}


def load(source: Collection[Doc], estuary: Collection[Doc], n: int, transform: dict[str, Any] | None) -> None:
    rng = random.Random(n)
    for start in range(0, n, 1000):
        docs = [document(i, rng) for i in range(start, min(n, start + 1000))]
        source.insert_many(docs)
        estuary.insert_many([mapped(d, transform) for d in docs])


def plant(plain: Collection[Doc], n: int, k: int) -> dict[str, set[str]]:
    """K differences in the estuary, spread over the collection: deleted, added, modified in turn."""
    planted: dict[str, set[str]] = {"missing": set(), "extra": set(), "differing": set()}
    for j, i in enumerate(sorted(random.Random(k).sample(range(n), k))):
        kind, at = ("missing", "extra", "differing")[j % 3], f"doc-{i:08d}"
        if kind == "missing":
            plain.delete_one({"_id": at})
        elif kind == "extra":
            at = f"{at}-extra"
            plain.insert_one({"_id": at, "seq": -1})
        else:
            plain.update_one({"_id": at}, {"$set": {"qty": -1}})
        planted[kind].add(f'"{at}"')
    return planted


def raw_scan(source: Raw, estuary: Raw, batch: int) -> float:
    started = time.perf_counter()
    for collection in (source, estuary):
        for _ in collection.find({}, sort=[("_id", 1)], batch_size=batch):
            pass
    return time.perf_counter() - started


def verify(stream: StreamConfig, source: Raw, estuary: Raw, batch: int) -> tuple[float, StreamVerification]:
    options = VerifyOptions(recheck_delay=0, batch_size=batch)
    started = time.perf_counter()
    report = verify_stream(stream, source, estuary, options=options, clock=SystemClock())
    return time.perf_counter() - started, report


def check(report: StreamVerification, planted: dict[str, set[str]]) -> None:
    """The report names exactly the planted differences (totals; every example listed is a planted one)."""
    if report.error is not None or report.mode != "all" or report.recovered:
        raise BenchError(f"verify: mode {report.mode}, error {report.error}, recovered {report.recovered}")
    for kind, found in report.discrepancies().items():
        if found.total != len(planted[kind]) or not set(found.examples) <= planted[kind]:
            raise BenchError(f"verify: {kind} {found.total} {found.examples}, planted {sorted(planted[kind])}")


def stream_config(source_uri: str, estuary_uri: str, transform: dict[str, Any] | None) -> StreamConfig:
    config = ReplicatorConfig.model_validate(
        {
            "checkpoints": {"connection_uri": estuary_uri, "database": "bench-checkpoints"},
            "streams": [
                {
                    "name": "bench",
                    "source": {"connection_uri": source_uri, "database": "bench", "collection": "docs"},
                    "estuary": {"connection_uri": estuary_uri, "database": "bench-estuary", "collection": "docs"},
                    **({"transform": transform} if transform else {}),
                }
            ],
        }
    )
    return config.streams[0]


def profile(stream: StreamConfig, source: Raw, estuary: Raw, batch: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    verify(stream, source, estuary, batch)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20_000, help="documents on each side (default 20000)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each kind, alternating (default 5)")
    parser.add_argument("--batch-size", type=int, default=VerifyOptions().batch_size, help="cursor batch size")
    parser.add_argument("--differences", type=int, default=0, metavar="K", help="plant K differences and check them")
    parser.add_argument("--transform", action="store_true", help="verify through a field mapping")
    parser.add_argument("--profile", action="store_true", help="one cProfile'd verify at the end")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.documents < 1 or args.runs < 1 or not 0 <= args.differences <= args.documents:
        parser.error("--documents and --runs must be at least 1, --differences from 0 to --documents")
    transform = TRANSFORM if args.transform else None
    rss = PeakRss()
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    peaks = dict.fromkeys(KINDS, 0.0)
    profiled = ""
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp, ExitStack() as stack:
        src = stack.enter_context(NxServer(Path(tmp) / "source"))
        dst = stack.enter_context(NxServer(Path(tmp) / "estuary"))
        factory = ClientFactory()
        stack.callback(factory.close)
        stream = stream_config(src.uri, dst.uri, transform)
        source, estuary = factory.collection(stream.source), factory.collection(stream.estuary)
        plain_source: MongoClient[Doc] = stack.enter_context(MongoClient(src.uri))
        plain_estuary: MongoClient[Doc] = stack.enter_context(MongoClient(dst.uri))
        load(plain_source.bench.docs, plain_estuary["bench-estuary"].docs, args.documents, transform)
        planted = plant(plain_estuary["bench-estuary"].docs, args.documents, args.differences)
        try:
            for run in range(args.runs + 1):  # run 0: untimed warm-up of each kind
                for kind in KINDS:
                    rss.reset()
                    if kind == "raw scan":
                        seconds = raw_scan(source, estuary, args.batch_size)
                    else:
                        seconds, report = verify(stream, source, estuary, args.batch_size)
                        check(report, planted)
                    if run:
                        rates[kind].append(args.documents / seconds)
                        peaks[kind] = max(peaks[kind], rss.peak_mib())
            if args.profile:
                profiled = profile(stream, source, estuary, args.batch_size)
        except BenchError as exc:
            print(f"error: {exc}")
            return 1
    medians = {kind: statistics.median(values) for kind, values in rates.items()}
    ratio = medians["verify"] / medians["raw scan"]
    results = {
        "machine": machine(),
        "documents": args.documents,
        "batch_size": args.batch_size,
        "runs": args.runs,
        "transform": transform is not None,
        "differences": {kind: len(ids) for kind, ids in planted.items()},
        "docs_per_s": {kind: [round(r) for r in values] for kind, values in rates.items()},
        "median_docs_per_s": {kind: round(m) for kind, m in medians.items()},
        "min_max_docs_per_s": {kind: [round(min(v)), round(max(v))] for kind, v in rates.items()},
        "ratio": round(ratio, 3),
        "target_met": ratio >= TARGET_RATIO,
        "peak_rss_mib": {kind: round(v, 1) for kind, v in peaks.items()},
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(
            f"verify throughput on {results['machine']}: {args.documents} documents per side, batch {args.batch_size}"
        )
        print(f"  differences planted and found: {results['differences']}; transform: {results['transform']}")
        for kind, values in rates.items():
            spread = f"{min(values):.0f}-{max(values):.0f}"
            print(f"  {kind:<9} median {medians[kind]:>6.0f} docs/s ({spread})  peak RSS {peaks[kind]:.1f} MiB")
        print(f"  ratio {ratio:.3f} (target >= {TARGET_RATIO}: {'yes' if ratio >= TARGET_RATIO else 'NO'})")
    if profiled:
        print(profiled)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
