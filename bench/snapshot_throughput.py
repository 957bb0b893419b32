"""Snapshot (initial sync) throughput: the replicator's copy against a raw ``find`` + ``insert_many`` copy.

Two nx-27017 servers (source; estuary plus checkpoints). Each run loads N documents into a fresh source
database and copies them into a fresh estuary database, alternating the two kinds (ABAB...) because a 2-core
machine is noisy:

* baseline: ``find().sort(_id)`` in batches and one unordered ``insert_many`` per batch; nothing else;
* replicator: passes of a stream with ``initial_sync: true`` until the copy is done: the hand-off capture,
  the id-type check, fenced progress saves after every batch, the range reconciliation (``delete_many`` of
  estuary documents the source does not have) and metrics included.

The figure is documents per second until the estuary holds all N documents (for the replicator: the moment
the batch that completed N was counted, which is after the estuary and the checkpoint acknowledged it; the
pass's streaming tail is not counted). Every estuary is compared with its source. Peak RSS per copy is reported.
Target (the initial-sync issue): replicator >= 0.9 x baseline. Run:
``.venv/bin/python -m bench.snapshot_throughput [--documents 20000] [--runs 3] [--batch-size 500] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.collection import Collection

from bench.common import Doc, PeakRss, Progress, differences, machine
from localdev.standins.nx import NxServer
from shared.auth.mongo_client import ClientFactory
from shared.config import ReplicatorConfig
from shared.services import build_services
from shared.telemetry import ReplicationMetrics

TARGET_RATIO = 0.9


def load(collection: Collection[Doc], n: int) -> None:
    for start in range(0, n, 1000):
        collection.insert_many(
            [
                {"_id": f"doc-{i:08d}", "qty": i % 50, "tags": ["a", "b"], "note": "x" * 80, "seq": i}
                for i in range(start, min(n, start + 1000))
            ]
        )


def copy_baseline(source: Collection[Doc], estuary: Collection[Doc], batch: int) -> float:
    started = time.perf_counter()
    pending: list[Doc] = []
    for doc in source.find({}, sort=[("_id", 1)], batch_size=batch):
        pending.append(doc)
        if len(pending) == batch:
            estuary.insert_many(pending, ordered=False)
            pending = []
    if pending:
        estuary.insert_many(pending, ordered=False)
    return time.perf_counter() - started


def copy_replicator(factory: ClientFactory, source_uri: str, target_uri: str, name: str, n: int, batch: int) -> float:
    config = ReplicatorConfig.model_validate(
        {
            "checkpoints": {"connection_uri": target_uri, "database": f"{name}-checkpoints"},
            "streams": [
                {
                    "name": "bench",
                    "source": {"connection_uri": source_uri, "database": name, "collection": "docs"},
                    "estuary": {"connection_uri": target_uri, "database": f"{name}-estuary", "collection": "docs"},
                    "initial_sync": True,
                    "batch_size": batch,
                    "idle_timeout": 0.5,
                    "poll_interval": 0.1,
                }
            ],
        }
    )
    stop = threading.Event()
    metrics = ReplicationMetrics()
    progress = Progress(n, stop)  # counts documents_copied; reaching N ends the pass (no streaming tail)
    metrics.documents_copied = progress
    replicator = build_services(config, factory=factory, metrics=metrics).replicator
    started = time.perf_counter()
    while progress.reached_at is None:
        replicator.run_pass("bench", stop=stop)
    return progress.reached_at - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rss = PeakRss()
    rates: dict[str, list[float]] = {"baseline": [], "replicator": []}
    peaks: dict[str, float] = {"baseline": 0.0, "replicator": 0.0}
    with tempfile.TemporaryDirectory() as tmp, NxServer(Path(tmp) / "src") as src, NxServer(Path(tmp) / "dst") as dst:
        source: MongoClient[Doc] = MongoClient(src.uri)
        target: MongoClient[Doc] = MongoClient(dst.uri)
        factory = ClientFactory()
        try:
            for run in range(args.runs):
                for kind in ("baseline", "replicator"):
                    name = f"{kind}-{run}"
                    load(source[name].docs, args.documents)
                    rss.reset()
                    if kind == "baseline":
                        seconds = copy_baseline(source[name].docs, target[f"{name}-estuary"].docs, args.batch_size)
                    else:
                        seconds = copy_replicator(factory, src.uri, dst.uri, name, args.documents, args.batch_size)
                    peaks[kind] = max(peaks[kind], rss.peak_mib())
                    if differences(source[name].docs, target[f"{name}-estuary"].docs):
                        print(f"{kind} run {run}: the estuary differs from the source")
                        return 1
                    rates[kind].append(args.documents / seconds)
        finally:
            factory.close()
            source.close()
            target.close()
    medians = {kind: statistics.median(values) for kind, values in rates.items()}
    ratio = medians["replicator"] / medians["baseline"]
    results = {
        "machine": machine(),
        "documents": args.documents,
        "batch_size": args.batch_size,
        "runs": args.runs,
        "docs_per_s": {kind: [round(r) for r in values] for kind, values in rates.items()},
        "median_docs_per_s": {kind: round(m) for kind, m in medians.items()},
        "ratio": round(ratio, 3),
        "target_met": ratio >= TARGET_RATIO,
        "peak_rss_mib": {kind: round(v, 1) for kind, v in peaks.items()},
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"snapshot throughput on {results['machine']}: {args.documents} documents, batch {args.batch_size}")
    for kind, values in rates.items():
        runs = ", ".join(str(round(r)) for r in values)
        print(f"  {kind:<10} median {medians[kind]:>6.0f} docs/s  (runs: {runs})  peak RSS {peaks[kind]:.1f} MiB")
    print(f"  ratio {ratio:.3f} (target >= {TARGET_RATIO}: {'yes' if ratio >= TARGET_RATIO else 'NO'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
