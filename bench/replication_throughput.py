"""Replication throughput benchmark: the replicator against a raw pymongo loop, end to end on nx-27017.

Two nx-27017 servers run as child processes: a source, and an estuary that also holds the checkpoints. Each
run writes N change events (70 % inserts, 20 % updates, 10 % deletes, interleaved; string ids, JSON-native
fields) to a fresh source database, then measures draining them into a fresh estuary database:

* baseline: the loop a user would write: ``watch(resume_after=token, full_document="updateLookup")`` and one
  unordered ``bulk_write`` of ``ReplaceOne(upsert)`` / ``DeleteOne`` per ``--baseline-batch`` events (1,000),
  single-threaded; no checkpoints, no leases, no retries, no collapsing of events on the same ``_id``;
* replicator: ``Replicator.run_pass`` (lease, fenced checkpoint after every batch, metrics, the next batch read
  while the previous one is written) repeated until the passes' ``events`` add up to N, with ``--batch-size`` and
  ``--apply-concurrency`` (the configuration's defaults unless given).

Both read from a position taken before the writes (the baseline's ``watch().resume_token``; the
replicator's first pass, which saves its start position), so both drain the same backlog. The figure is the
time until the estuary holds all N events; for the replicator, the moment the batch that completed N was
counted on the ``events_read`` instrument, which happens after the estuary and the checkpoint store
acknowledged it. The pass's idle tail (``idle_timeout`` without events, then the pass ends) is reported
apart, not hidden. Every estuary is compared with its source afterwards; any difference exits 1.

Each kind gets its own databases (one SQLite file per database on nx-27017, so change logs never mix and no
second consumer ever has a stream open on a collection), and the kinds alternate (ABAB...) because a 2-core
machine is noisy. Memory: the process's peak RSS during each drain (Linux ``VmHWM``, reset before the
drain; the lifetime peak elsewhere). ``--scale-check`` drains N and 4 x N events of each kind once more under
``tracemalloc`` and compares the Python heap peaks (slower; those rates are not comparable). ``--profile``
drains N events of each kind under cProfile and prints where the client spends its time.

Target (issue 12): replicator >= 1.25 x baseline events/s, with bounded memory.
``--latency MS`` puts a proxy adding MS to every request in front of both servers (``bench/latency.py``): a cluster
that is not on loopback, where reading ahead and concurrent writers hide round trips. ``--fencing transaction``
measures the estuary fence's transactions (each batch a transaction that first updates the stream's fence document);
nx-27017 is a standalone, so the default ``auto`` fences by a deadline there.
Run: ``.venv/bin/python -m bench.replication_throughput [--events 10000] [--runs 5] [--batch-size B]
[--baseline-batch B] [--apply-concurrency C] [--latency MS] [--fencing MODE] [--scale-check] [--profile] [--json]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import sys
import tempfile
import threading
import time
import tracemalloc
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from bench.common import MIB, CpuMeter, Doc, PeakRss, Progress, differences, machine
from bench.latency import LatencyProxy
from bench.replication_report import Drain, Kind, Mode, print_report, profile_breakdown, summarise
from bench.replication_workload import drain_baseline, preload
from localdev.standins.nx import NxServer
from shared.auth.mongo_client import ClientFactory
from shared.config import ReplicatorConfig, StreamConfig
from shared.replicate import Replicator
from shared.services import build_services
from shared.telemetry import ReplicationMetrics


class BenchError(RuntimeError):
    """The benchmark could not measure what it meant to (a pass failed, an estuary differs)."""


class Probe:
    """What watches a drain besides the clock: nothing (timed), cProfile (profile) or tracemalloc (heap)."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.profile = cProfile.Profile() if mode == "profile" else None
        self.heap_peak_mib: float | None = None

    def __enter__(self) -> Probe:
        if self.profile is not None:
            self.profile.enable()
        elif self.mode == "heap":
            tracemalloc.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.profile is not None:
            self.profile.disable()
        elif self.mode == "heap":
            self.heap_peak_mib = round(tracemalloc.get_traced_memory()[1] / MIB, 2)
            tracemalloc.stop()


class Bench:
    """The servers' clients, the replicator's client factory, and one method per kind of drain."""

    def __init__(
        self,
        source: NxServer | LatencyProxy,
        estuary: NxServer | LatencyProxy,
        args: argparse.Namespace,
        *,
        pids: dict[str, int | None],
    ) -> None:
        self.source_uri, self.estuary_uri = source.uri, estuary.uri
        self.pids = pids  # of the two nx-27017 servers, for their CPU time
        self.args = args
        self.source: MongoClient[Doc] = MongoClient(source.uri)
        self.estuary: MongoClient[Doc] = MongoClient(estuary.uri)
        self.factory = ClientFactory()
        self.rss = PeakRss()
        self.profiles: dict[str, dict[str, float]] = {}
        self._runs = 0

    def close(self) -> None:
        self.source.close()
        self.estuary.close()
        self.factory.close()

    def drain(self, kind: Kind, n: int, mode: Mode = "timed", *, run: int = 0, batch_size: int | None = None) -> Drain:
        """Preload N events into a fresh source database and drain them into a fresh estuary database (the replicator
        with ``batch_size`` events per batch: the configuration's default when ``None``)."""
        self._runs += 1
        name = f"{kind}-{self._runs}"  # databases: name (source), name-estuary, name-checkpoints
        source, estuary = self.source[name].events, self.estuary[f"{name}-estuary"].events
        probe = Probe(mode)
        if kind == "baseline":
            drain = self._baseline(name, run, n, source, estuary, probe)
        else:
            drain = self._replicator(name, run, n, source, probe, batch_size)
        drain.rss_peak_mib, drain.heap_peak_mib = round(self.rss.peak_mib(), 1), probe.heap_peak_mib
        if probe.profile is not None:
            self.profiles[kind] = profile_breakdown(probe.profile)
        diff = differences(source, estuary)
        if diff:
            raise BenchError(f"{kind} drain {self._runs}: the estuary differs from its source in {diff} document(s)")
        return drain

    def _baseline(
        self, name: str, run: int, n: int, source: Collection[Doc], estuary: Collection[Doc], probe: Probe
    ) -> Drain:
        with source.watch(full_document="updateLookup") as stream:
            token = stream.resume_token
        if token is None:
            raise BenchError("the source returned no resume token for a new change stream")
        rate = preload(source, n, seed=n)  # the same workload for every drain of N events
        rss_start = self._settle()
        cpu = CpuMeter(self.pids)
        with probe:
            cpu.start()
            seconds = drain_baseline(source, estuary, token, n, self.args.baseline_batch)
            cpu.stop()
        return Drain(
            "baseline",
            run,
            probe.mode,
            n,
            seconds,
            n / seconds,
            rss_start_mib=rss_start,
            preload_events_per_s=rate,
            cpu_seconds=cpu.used,
        )

    def _replicator(
        self, name: str, run: int, n: int, source: Collection[Doc], probe: Probe, batch_size: int | None
    ) -> Drain:
        # A first pass with a tiny idle timeout saves the stream's start position before anything is written.
        self._new_replicator(name, idle_timeout=0.01, metrics=ReplicationMetrics(), batch_size=batch_size).run_pass(
            name
        )
        rate = preload(source, n, seed=n)  # the same workload for every drain of N events
        stop = threading.Event() if probe.mode == "profile" else None
        metrics = ReplicationMetrics()
        cpu = CpuMeter(self.pids)
        metrics.events_read = progress = Progress(n, stop, on_reached=cpu.stop)
        replicator = self._new_replicator(
            name, idle_timeout=self.args.idle_timeout, metrics=metrics, batch_size=batch_size
        )
        rss_start = self._settle()
        with probe:
            cpu.start()
            started, events, passes = time.perf_counter(), 0, 0
            while events < n:
                result = replicator.run_pass(name, stop=stop)
                passes += 1
                events += result.events
                if result.outcome not in ("idle", "budget", "interrupted") or (result.events == 0 and events < n):
                    raise BenchError(f"pass {passes} ended '{result.outcome}' after {events} of {n} events")
            ended = time.perf_counter()
        seconds = (progress.reached_at or ended) - started
        return Drain(
            "replicator",
            run,
            probe.mode,
            n,
            seconds,
            n / seconds,
            tail_seconds=ended - started - seconds,
            passes=passes,
            rss_start_mib=rss_start,
            preload_events_per_s=rate,
            cpu_seconds=cpu.used,
            batch_size=batch_size or _default("batch_size"),
        )

    def _new_replicator(
        self, name: str, *, idle_timeout: float, metrics: ReplicationMetrics, batch_size: int | None
    ) -> Replicator:
        # Given only when asked for: the configuration's defaults otherwise (and code before apply_concurrency runs).
        tuning = {"batch_size": batch_size, "apply_concurrency": self.args.apply_concurrency}
        config = ReplicatorConfig.model_validate(
            {
                # One checkpoint database per stream: on nx-27017 a findAndModify with upsert and an {_id, $or}
                # filter (the lease acquire) can update another stream's document, so streams never share one.
                "checkpoints": {"connection_uri": self.estuary_uri, "database": f"{name}-checkpoints"},
                "streams": [
                    {
                        "name": name,
                        "source": {"connection_uri": self.source_uri, "database": name, "collection": "events"},
                        "estuary": {
                            "connection_uri": self.estuary_uri,
                            "database": f"{name}-estuary",
                            "collection": "events",
                        },
                        **{key: value for key, value in tuning.items() if value is not None},
                        "poll_interval": self.args.poll_interval,
                        "idle_timeout": idle_timeout,
                        "fencing": self.args.fencing,
                    }
                ],
            }
        )
        return build_services(config, factory=self.factory, metrics=metrics).replicator

    def _settle(self) -> float:
        """Let the servers finish the preload's aftermath, then open the memory window; returns RSS now."""
        time.sleep(self.args.settle)
        self.rss.reset()
        return round(self.rss.current_mib(), 1)


def scale_check(bench: Bench, n: int) -> dict[str, Any]:
    """Heap peaks while draining N and 4 x N events: bounded if 4 x N needs at most 1.5 x (+1 MiB)."""
    drains = [bench.drain(kind, events, "heap") for events in (n, 4 * n) for kind in ("baseline", "replicator")]
    peaks = {(d.kind, d.events): d.heap_peak_mib or 0.0 for d in drains}
    bounded = all(peaks[(kind, 4 * n)] <= 1.5 * peaks[(kind, n)] + 1.0 for kind in ("baseline", "replicator"))
    return {"drains": [asdict(d) for d in drains], "bounded": bounded}


def _default(setting: str) -> Any:
    """A stream setting's default (``None`` in code that predates it: measuring an earlier commit)."""
    field = StreamConfig.model_fields.get(setting)
    return None if field is None else field.default


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="change events per drain (default 10000)")
    parser.add_argument("--runs", type=int, default=5, help="timed drains of each kind, alternating (default 5)")
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        help="replicator events per batch; several: a replicator drain of each in every run (the configuration's)",
    )
    parser.add_argument("--apply-concurrency", type=int, help="replicator apply_concurrency (the configuration's)")
    parser.add_argument("--baseline-batch", type=int, default=1000, help="raw loop events per write (default 1000)")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="replicator poll interval, s (default 0.1)")
    parser.add_argument("--idle-timeout", type=float, default=1.0, help="replicator idle timeout, s (default 1)")
    parser.add_argument(
        "--fencing",
        choices=("auto", "transaction", "deadline"),
        default="auto",
        help="how the estuary fences the replicator's writes (nx-27017 is a standalone: auto means deadline)",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="ms added to every request (a proxy; default 0)")
    parser.add_argument("--settle", type=float, default=0.5, help="pause after preloading, s (default 0.5)")
    parser.add_argument("--scale-check", action="store_true", help="heap peaks while draining N and 4 x N events")
    parser.add_argument("--profile", action="store_true", help="one cProfile'd drain of each kind")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.events < 1 or args.runs < 1:
        parser.error("--events and --runs must be at least 1")

    results: dict[str, Any] = {
        "machine": machine(),
        "events": args.events,
        "batch_size": args.batch_size or [_default("batch_size")],
        "apply_concurrency": args.apply_concurrency or _default("apply_concurrency"),
        "baseline_batch": args.baseline_batch,
        "runs": args.runs,
        "fencing": args.fencing,
        "latency_ms": args.latency,
    }
    with tempfile.TemporaryDirectory(prefix="bench-replication-") as tmp, ExitStack() as stack:
        servers: list[NxServer | LatencyProxy] = []
        pids: dict[str, int | None] = {}
        for name in ("source", "estuary"):
            server: NxServer | LatencyProxy = stack.enter_context(NxServer(Path(tmp) / name))
            pids[name] = server.pid
            if args.latency:  # both kinds of drain pay it on every command
                upstream = (server.host, server.port)
                server = stack.enter_context(
                    LatencyProxy(Path(tmp) / f"{name}-path", upstream=upstream, delay=args.latency / 1000)
                )
            servers.append(server)
        source, estuary = servers
        bench = Bench(source, estuary, args, pids=pids)
        stack.callback(bench.close)
        try:
            sizes: list[int | None] = args.batch_size or [None]
            plan: list[tuple[Kind, int | None]] = [("baseline", None), *(("replicator", size) for size in sizes)]
            drains = [
                bench.drain(kind, args.events, run=run, batch_size=size)
                for run in range(1, args.runs + 1)
                for kind, size in plan
            ]
            results["drains"] = [asdict(d) for d in drains]
            results["summary"] = {
                str(size or _default("batch_size")): summarise(
                    [d for d in drains if d.kind == "baseline" or d.batch_size == (size or _default("batch_size"))]
                )
                for size in sizes
            }
            if args.scale_check:
                results["scale_check"] = scale_check(bench, args.events)
            if args.profile:
                for kind, size in plan[:2]:
                    bench.drain(kind, args.events, "profile", batch_size=size)
                results["profile"] = bench.profiles
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
