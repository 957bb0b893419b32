"""Many streams per worker: one process running passes for 100 streams, its memory, connections, threads and clients.

Two nx-27017 servers run as child processes: a source cluster (one database, ``--streams`` collections) and an estuary
cluster that also holds the checkpoints. One configuration names ``--streams`` streams (one per collection); one
process builds the services once (as a Functions worker does) and runs a pass of every stream through a thread pool
of ``--workers`` (a worker serving that many queue messages at once): first the passes that save each stream's start
position, then, after ``--events`` change events were written to every collection, the passes that drain them.

While the draining passes run, a sampler reads every 20 ms the process's established TCP connections to each server
(from /proc, as the kernel sees them) and its threads; the peak RSS is Linux ``VmHWM``, reset before the passes. The
clients are the ``MongoClient`` objects alive besides the benchmark's own two: ``ClientFactory`` keeps one per
cluster and identity, so the expectation is 2 whatever the number of streams. Every estuary collection is compared
with its source afterwards; a difference exits 1.
Run: ``.venv/bin/python -m bench.many_streams [--streams 100] [--events 100] [--workers 8] [--json]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from bench.common import Doc, PeakRss, differences, machine
from localdev.standins.nx import NxServer
from shared.auth.mongo_client import ClientFactory
from shared.config import ReplicatorConfig
from shared.replicate import Replicator
from shared.services import build_services
from shared.telemetry import ReplicationMetrics


def open_connections(port: int) -> int:
    """Established TCP connections of this process to ``port`` (its socket inodes matched in /proc/self/net/tcp*)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            count += fields[3] == "01" and fields[9] in inodes and remote_port == port  # 01: ESTABLISHED
    return count


class Sampler:
    """Peaks of the process's connections to each server and of its threads, sampled on a thread of its own."""

    def __init__(self, ports: dict[str, int]) -> None:
        self._ports = ports
        self.connections = dict.fromkeys(ports, 0)
        self.threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for name, port in self._ports.items():
                self.connections[name] = max(self.connections[name], open_connections(port))
            self.threads = max(self.threads, threading.active_count() - 1)  # not the sampler itself


def streams_config(source: str, estuary: str, n: int) -> ReplicatorConfig:
    def stream(i: int) -> dict[str, Any]:
        return {
            "name": f"s{i:03d}",
            "source": {"connection_uri": source, "database": "shop", "collection": f"c{i:03d}"},
            "estuary": {"connection_uri": estuary, "database": "replica", "collection": f"c{i:03d}"},
            "poll_interval": 0.2,
            "idle_timeout": 0.5,
        }

    return ReplicatorConfig.model_validate(
        {"checkpoints": {"connection_uri": estuary, "database": "replicator"}, "streams": [stream(i) for i in range(n)]}
    )


def run_all(replicator: Replicator, names: list[str], workers: int) -> list[str]:
    """A pass of every stream, ``workers`` at a time; the outcomes."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pass") as pool:
        return [result.outcome for result in pool.map(replicator.run_pass, names)]


def preload(client: MongoClient[Doc], streams: int, events: int) -> None:
    """``events`` change events per collection: inserts, then an update of every fifth document."""
    for i in range(streams):
        collection = client.shop[f"c{i:03d}"]
        inserts = events - events // 5
        collection.insert_many([{"_id": f"d{j:05d}", "v": j, "note": "x" * 100} for j in range(inserts)])
        for j in range(0, inserts, 4)[: events - inserts]:
            collection.update_one({"_id": f"d{j:05d}"}, {"$set": {"v": -j}})


def measure(source: NxServer, estuary: NxServer, args: argparse.Namespace) -> dict[str, Any]:
    config = streams_config(source.uri, estuary.uri, args.streams)
    names = [stream.name for stream in config.streams]
    factory = ClientFactory()
    own: list[MongoClient[Doc]] = [MongoClient(source.uri), MongoClient(estuary.uri)]
    try:
        replicator = build_services(config, factory=factory, metrics=ReplicationMetrics()).replicator
        started = run_all(replicator, names, args.workers)  # each stream's start position
        preload(own[0], args.streams, args.events)
        rss = PeakRss()
        time.sleep(0.5)
        rss.reset()
        rss_start = rss.current_mib()
        with Sampler({"source": source.port, "estuary": estuary.port}) as sampler:
            began = time.perf_counter()
            outcomes = run_all(replicator, names, args.workers)
            seconds = time.perf_counter() - began
        clients = sum(isinstance(o, MongoClient) for o in gc.get_objects()) - len(own)
        unequal = [
            name for i, name in enumerate(names) if differences(own[0].shop[f"c{i:03d}"], own[1].replica[f"c{i:03d}"])
        ]
        return {
            "machine": machine(),
            "streams": args.streams,
            "events_per_stream": args.events,
            "workers": args.workers,
            "first_passes": {o: started.count(o) for o in set(started)},
            "passes": {o: outcomes.count(o) for o in set(outcomes)},
            "seconds": round(seconds, 2),
            "events_per_s": round(args.streams * args.events / seconds),
            "rss_start_mib": round(rss_start, 1),
            "rss_peak_mib": round(rss.peak_mib(), 1),
            "peak_connections": sampler.connections,
            "peak_threads": sampler.threads,
            "clients": clients,
            "estuaries_differing": unequal,
        }
    finally:
        factory.close()
        for client in own:
            client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100, help="streams (collections) in the one config (100)")
    parser.add_argument("--events", type=int, default=100, help="change events written per collection (100)")
    parser.add_argument("--workers", type=int, default=8, help="passes the process runs at once (8)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if min(args.streams, args.events, args.workers) < 1:
        parser.error("--streams, --events and --workers must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-many-") as tmp, ExitStack() as stack:
        source = stack.enter_context(NxServer(Path(tmp) / "source"))
        estuary = stack.enter_context(NxServer(Path(tmp) / "estuary"))
        results = measure(source, estuary, args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"many streams per worker on {results['machine']}")
        print(
            f"  {results['streams']} streams in one configuration, {results['events_per_stream']} events each, "
            f"{results['workers']} passes at a time in one process"
        )
        print(
            f"  draining passes: {results['passes']} in {results['seconds']:.1f}s ({results['events_per_s']} events/s)"
        )
        print(
            f"  peak RSS {results['rss_peak_mib']:.1f} MiB (at the start of the passes {results['rss_start_mib']:.1f})"
        )
        connections = results["peak_connections"]
        print(
            f"  peak open connections: {connections['source']} to the source, {connections['estuary']} to the estuary "
            f"and checkpoints; peak threads {results['peak_threads']}; MongoClients the replicator made: "
            f"{results['clients']} (one per cluster and identity)"
        )
        print(f"  every estuary equals its source: {'yes' if not results['estuaries_differing'] else 'NO'}")
    if results["estuaries_differing"]:
        print(f"error: estuaries differ: {', '.join(results['estuaries_differing'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
