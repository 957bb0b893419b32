"""Scoped-stream benchmark: discovery and scheduling of 1,000 collections, one worker serving 100, and events/s of
many quiet collections against one busy collection, on nx-27017.

Three measurements, each repeated ``--runs`` times (figures are ranges and medians, never the best run):

* **tick**: a database of ``--collections`` collections (one document each, each with a checkpoint as if it had
  run) in one scoped stream; the time of one timer tick (``schedule``: list the collections, read their checkpoints,
  plan the groups, build the messages) and the number of queue messages it writes (``collections_per_pass`` = 50);
* **worker**: one process serving ``--served`` of those collections (an ``include`` pattern) through group passes,
  ``collection_concurrency`` at a time, after ``--served-events`` new events in each: peak RSS during the passes,
  the TCP connections the process holds to the server afterwards (``psutil``), and its threads; every endpoint is on
  one server with one identity, so the replicator holds one client (its pool) for all of them;
* **spread vs busy**: the same number of events (``--events``) written either to one collection (a single-collection
  stream drained by ``run_pass``) or spread over ``--served`` collections (a scoped stream drained by group passes);
  events/s until the estuary acknowledged all of them. The kinds alternate (ABAB...) on a noisy 2-core machine.

Every estuary is compared with its source afterwards; a difference exits 1.
Run: ``.venv/bin/python -m bench.scoped_streams [--collections 1000] [--served 100] [--runs 3] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from pymongo import MongoClient

from bench.common import PeakRss, differences, machine
from localdev.standins.nx import NxServer
from shared.auth.mongo_client import ClientFactory
from shared.config import ReplicatorConfig
from shared.operations import schedule
from shared.services import Services, build_services
from shared.telemetry import ReplicationMetrics
from shared.work_queue import parse_pass_request

Doc = dict[str, Any]


def config(uri: str, source_db: str, **stream: Any) -> ReplicatorConfig:
    scoped = "collection" not in stream.get("source", {})
    return ReplicatorConfig.model_validate(
        {
            "checkpoints": {"connection_uri": uri, "database": f"{source_db}_rep"},
            "streams": [
                {
                    "name": "bench",
                    "source": {"connection_uri": uri, "database": source_db, **stream.pop("source", {})},
                    "estuary": {"connection_uri": uri, "database": f"{source_db}_dst", **stream.pop("estuary", {})},
                    "poll_interval": 0.2,
                    "idle_timeout": 0.5 if not scoped else 30,
                    "lease_duration": 30,
                    "batch_size": 500,
                    "initial_sync": True,
                    **stream,
                }
            ],
        }
    )


def names(n: int) -> list[str]:
    return [f"c{i:04d}" for i in range(n)]


def tick_once(services: Services) -> tuple[float, int]:
    started = time.perf_counter()
    messages = schedule_messages(services)
    return time.perf_counter() - started, len(messages)


def drain_scoped(services: Services, expected: int) -> None:
    """Passes over every member, tick after tick (one at least), until the estuary acknowledged ``expected`` events."""
    done = 0
    while True:
        for message in schedule_messages(services):
            request = parse_pass_request(message)
            done += sum(r.events for r in services.replicator.run_requested(request.stream, request.collections))
        if done >= expected:
            return


def schedule_messages(services: Services) -> list[str]:
    return schedule(
        services.config,
        checkpoints=services.checkpoints,
        discovery=services.discovery,
        metrics=services.metrics,
        correlation_id="bench",
        now=time.time(),
    )


def connections_to(port: int) -> int:
    return sum(1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port)


def measure_ticks(server: NxServer, client: MongoClient[Doc], collections: int, runs: int) -> dict[str, Any]:
    database = client["tick_src"]
    for name in names(collections):
        database[name].insert_one({"_id": 0})
    factory = ClientFactory()
    try:
        services = build_services(config(server.uri, "tick_src"), factory=factory, metrics=ReplicationMetrics())
        for name in names(collections):  # as if every collection had run: the tick reads each one's checkpoint
            held = services.checkpoints.acquire(f"bench/{name}", "bench", 60.0)
            if held is not None:
                services.checkpoints.release(held.lease)
        figures = [tick_once(services) for _ in range(runs)]
    finally:
        factory.close()
    seconds = [s for s, _ in figures]
    return {
        "collections": collections,
        "tick_s": [round(s, 3) for s in seconds],
        "tick_median_s": round(statistics.median(seconds), 3),
        "messages_per_tick": sorted({n for _, n in figures}),
    }


def measure_worker(server: NxServer, client: MongoClient[Doc], served: int, events: int) -> dict[str, Any]:
    database = client["worker_src"]
    members = names(served)
    for name in members:
        database[name].insert_one({"_id": "first"})
    factory = ClientFactory()
    rss = PeakRss()
    try:
        services = build_services(config(server.uri, "worker_src"), factory=factory, metrics=ReplicationMetrics())
        drain_scoped(services, 0)  # first passes: every collection saves where it starts
        for name in members:
            database[name].insert_many([{"_id": f"e{i}", "v": i} for i in range(events)])
        rss.reset()
        started = time.perf_counter()
        drain_scoped(services, served * events)
        seconds = time.perf_counter() - started
        result = {
            "collections": served,
            "events": served * events,
            "seconds": round(seconds, 2),
            "peak_rss_mib": round(rss.peak_mib(), 1),
            "connections": connections_to(server.port),
            "threads": threading.active_count(),
        }
        bad = sum(differences(database[n], client["worker_src_dst"][n]) for n in members)
    finally:
        factory.close()
    if bad:
        raise SystemExit(f"worker: {bad} document(s) differ between source and estuary")
    return result


def measure_spread_vs_busy(
    server: NxServer, client: MongoClient[Doc], served: int, events: int, runs: int
) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"busy": [], "spread": []}
    for run in range(runs):
        for kind in ("busy", "spread"):
            source_db = f"{kind}{run}_src"
            database = client[source_db]
            members = ["busy"] if kind == "busy" else names(served)
            for name in members:
                database[name].insert_one({"_id": "first"})
            stream = {"source": {"collection": "busy"}, "estuary": {"collection": "busy"}} if kind == "busy" else {}
            factory = ClientFactory()
            try:
                services = build_services(
                    config(server.uri, source_db, **stream), factory=factory, metrics=ReplicationMetrics()
                )
                drain_scoped(services, 0)  # start positions
                per = events // len(members)
                for name in members:
                    database[name].insert_many([{"_id": f"e{i}", "v": i} for i in range(per)])
                started = time.perf_counter()
                drain_scoped(services, per * len(members))
                rates[kind].append(per * len(members) / (time.perf_counter() - started))
                bad = sum(differences(database[n], client[f"{source_db}_dst"][n]) for n in members)
            finally:
                factory.close()
            if bad:
                raise SystemExit(f"{kind} run {run}: {bad} document(s) differ between source and estuary")
    return {
        kind: {"events_per_s": [round(r) for r in values], "median": round(statistics.median(values))}
        for kind, values in rates.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", type=int, default=1000)
    parser.add_argument("--served", type=int, default=100)
    parser.add_argument("--served-events", type=int, default=20, help="new events in each served collection")
    parser.add_argument("--events", type=int, default=10_000, help="events of the spread-vs-busy comparison")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("shared").setLevel(logging.WARNING)  # the passes' progress lines would bury the figures
    with tempfile.TemporaryDirectory() as tmp, NxServer(Path(tmp) / "nx") as server:
        client: MongoClient[Doc] = MongoClient(server.uri)
        try:
            results: dict[str, Any] = {
                "machine": machine(),
                "tick": measure_ticks(server, client, args.collections, args.runs),
                "worker": measure_worker(server, client, args.served, args.served_events),
                "spread_vs_busy": measure_spread_vs_busy(server, client, args.served, args.events, args.runs),
            }
        finally:
            client.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    tick: dict[str, Any] = results["tick"]
    worker: dict[str, Any] = results["worker"]
    rates: dict[str, Any] = results["spread_vs_busy"]
    print(f"machine: {results['machine']}")
    print(
        f"tick, {tick['collections']} collections: {min(tick['tick_s'])}-{max(tick['tick_s'])} s "
        f"(median {tick['tick_median_s']} s), {tick['messages_per_tick']} queue message(s) per tick"
    )
    print(
        f"worker serving {worker['collections']} collections: {worker['events']} events in {worker['seconds']} s, "
        f"peak RSS {worker['peak_rss_mib']} MiB, {worker['connections']} connection(s) to the server, "
        f"{worker['threads']} thread(s)"
    )
    for kind, figures in rates.items():
        low, high = min(figures["events_per_s"]), max(figures["events_per_s"])
        print(f"{kind}: {low}-{high} events/s (median {figures['median']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
