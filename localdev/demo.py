"""The README's "run it locally" command: live replication against embedded stand-ins.

Starts the source cluster (nx-27017 behind the OIDC-enforcing proxy, tokens from the managed identity stub)
and a plain nx-27017 for the estuary and checkpoints; writes ``.local/replicator.yaml``; runs ``validate`` and
``test-auth``; then replicates live while a writer changes the source, with a status line once a second.
After ``--seconds`` or Ctrl-C / SIGTERM the writer stops, the replicator catches up (a second Ctrl-C skips
that), and the estuary is compared with the source. ``--keep`` keeps the stand-ins up until Ctrl-C.
Everything started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from localdev.standins.nx import NxServer
from localdev.standins.stack import LocalStack
from shared.auth.mongo_client import ClientFactory
from shared.cli import main as cli
from shared.config_loader import load_config
from shared.position import CheckpointStore
from shared.replicate import Replicator
from shared.services import build_services

LOCAL_DIR = Path(".local")
STREAM = "orders"
Doc = dict[str, Any]


class Writer(threading.Thread):
    """The application: ~60 % inserts, 30 % updates, 10 % deletes on the source, at a steady rate."""

    def __init__(self, uri: str, rate: float) -> None:
        super().__init__(name="writer", daemon=True)
        self.client: MongoClient[Doc] = MongoClient(uri, serverSelectionTimeoutMS=5000)
        self.rate, self.stop, self.error = rate, threading.Event(), ""
        self.written = 0  # change events caused so far; their times, oldest first, until the estuary has them:
        self.pending: collections.deque[float] = collections.deque()

    def run(self) -> None:
        orders, rng, due = self.client.shop.orders, random.Random(7), time.monotonic()  # noqa: S311 (not a secret)
        live: list[str] = []
        try:
            while not self.stop.is_set():
                roll = rng.random()
                if roll < 0.6 or len(live) < 20:
                    live.append(f"order-{self.written:07d}")
                    doc = {"_id": live[-1], "qty": rng.randrange(1, 9), "status": "new", "at": time.time()}
                    changed = orders.insert_one(doc).acknowledged
                elif roll < 0.9:
                    update = {"$inc": {"qty": 1}, "$set": {"status": "updated"}}
                    changed = orders.update_one({"_id": rng.choice(live)}, update).modified_count == 1
                else:
                    at = rng.randrange(len(live))
                    live[at], live[-1] = live[-1], live[at]
                    changed = orders.delete_one({"_id": live.pop()}).deleted_count == 1
                if changed:
                    self.pending.append(time.time())
                    self.written += 1
                due = max(due + 1 / self.rate, time.monotonic() - 1.0)  # a steady pace, never a burst to catch up
                self.stop.wait(due - time.monotonic())
        except PyMongoError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.client.close()


class Passes(threading.Thread):
    """The replicator's passes, back to back, until ``stop`` (a running pass ends after its current batch)."""

    def __init__(self, replicator: Replicator) -> None:
        super().__init__(name="passes", daemon=True)
        self.replicator, self.stop, self.outcomes = replicator, threading.Event(), collections.Counter[str]()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.outcomes[self.replicator.run_pass(STREAM, stop=self.stop).outcome] += 1
            except Exception as exc:  # noqa: BLE001 (the pass recorded it on the checkpoint; show it, go on)
                print(f"\npass failed: {getattr(exc, 'message', None) or exc}", flush=True)
                self.outcomes["failed"] += 1
                self.stop.wait(2.0)


class Status:
    """The once-a-second status line: refreshed in place on a terminal, one line per update otherwise."""

    def __init__(self, writer: Writer, passes: Passes, checkpoints: CheckpointStore) -> None:
        self.writer, self.passes, self.checkpoints = writer, passes, checkpoints
        self.started = self.last_at = time.monotonic()
        self.last_written = self.last_replicated = self.consumed = 0

    def replicated(self) -> int:
        """Events applied to the estuary, as counted on the stream's checkpoint (what ``status`` shows)."""
        checkpoint = self.checkpoints.read(STREAM)
        return checkpoint.counters.get("events", 0) if checkpoint else 0

    def lag(self, replicated: int) -> float:
        """Age of the oldest write the estuary does not have yet (0 when it has them all)."""
        for _ in range(min(replicated - self.consumed, len(self.writer.pending))):
            self.writer.pending.popleft()
            self.consumed += 1
        return time.time() - self.writer.pending[0] if self.writer.pending else 0.0

    def show(self, phase: str, *, now: bool = False) -> None:
        """Print the line if a second has passed since the last one (or ``now``)."""
        if not now and time.monotonic() - self.last_at < 0.95:
            return
        at, written, replicated = time.monotonic(), self.writer.written, self.replicated()
        elapsed = max(at - self.last_at, 1e-6)
        writes, applied = (written - self.last_written) / elapsed, (replicated - self.last_replicated) / elapsed
        line = (
            f"{at - self.started:4.0f}s {phase:<11} | source {writes:3.0f} writes/s | applied {applied:3.0f} events/s"
            f" | lag {self.lag(replicated):4.2f}s | {replicated}/{written} replicated"
            f" | pass {self.passes.outcomes.total() + (phase != 'stopped')}"
        )
        print(f"\r{line}\033[K" if sys.stdout.isatty() else line, end="" if sys.stdout.isatty() else "\n", flush=True)
        self.last_at, self.last_written, self.last_replicated = at, written, replicated


class Signals:
    """Ctrl-C and SIGTERM set ``stop``; a second one sets ``hurry`` too (skip the catch-up)."""

    def __init__(self) -> None:
        self.stop, self.hurry = threading.Event(), threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda _signum, _frame: (self.hurry if self.stop.is_set() else self.stop).set())


def run(seconds: float, rate: float, keep: bool) -> int:
    for name in ("stack", "estuary"):
        shutil.rmtree(LOCAL_DIR / name, ignore_errors=True)
    signals = Signals()
    with LocalStack(LOCAL_DIR / "stack") as stack, NxServer(LOCAL_DIR / "estuary") as sink:
        os.environ.update(stack.environ())  # what the Functions host sets for an app with a managed identity
        path = write_config(stack, sink)
        print(f"stand-ins up: source nx-27017 {stack.nx.uri} behind the OIDC proxy {stack.proxy.uri},")
        print(f"  identity endpoint {stack.stub.endpoint}; estuary and checkpoints nx-27017 {sink.uri}")
        print(f"configuration written to {path}\n\n$ python -m shared validate --config {path}")
        code = cli(["validate", "--config", str(path)])
        print(f"\n$ python -m shared test-auth --config {path}")
        code = code or cli(["test-auth", "--config", str(path)])
        if code == 0 and not signals.stop.is_set():
            code = replicate(path, stack, sink, seconds, rate, signals)
        print(f"\ntoken requests served by the identity endpoint: {stack.stub.request_count}")
        if keep:
            print("\nstand-ins stay up; in another shell:")
            for name, value in stack.environ().items():
                print(f"  export {name}={value}")
            print(f"  .venv/bin/python -m shared status --config {path}\nCtrl-C to stop.")
            signals.stop.clear()
            signals.stop.wait()
    print("stand-ins stopped")
    return code


def write_config(stack: LocalStack, sink: NxServer) -> Path:
    config = {
        "checkpoints": {"connection_uri": sink.uri, "database": "replicator"},
        "streams": [
            {
                "name": STREAM,
                "source": stack.entra_endpoint("shop", "orders"),
                "estuary": {"connection_uri": sink.uri, "database": "replica", "collection": "orders"},
                "time_budget": "10s",  # short passes, so that a demo shows several back to back
                "idle_timeout": "5s",
                "poll_interval": "200ms",
            }
        ],
    }
    path = LOCAL_DIR / "replicator.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def replicate(path: Path, stack: LocalStack, sink: NxServer, seconds: float, rate: float, signals: Signals) -> int:
    print(f"\nreplicating for {seconds:g}s, Ctrl-C to stop sooner (source {stack.proxy.uri} -> estuary {sink.uri})")
    factory = ClientFactory()
    writer = Writer(stack.nx.uri, rate)  # the application writes to its database directly, not through the proxy
    services = build_services(load_config(path), factory=factory)
    passes = Passes(services.replicator)
    status = Status(writer, passes, services.checkpoints)
    try:
        passes.start()  # the first pass saves where the stream starts; only then may the application write
        ready_by = time.monotonic() + 30.0
        while not signals.stop.wait(0.1) and time.monotonic() < ready_by:
            if (checkpoint := services.checkpoints.read(STREAM)) and checkpoint.resume_token is not None:
                break
        writer.start()
        deadline = time.monotonic() + seconds
        while not signals.stop.wait(0.1) and time.monotonic() < deadline and writer.is_alive():
            status.show("replicating")
        writer.stop.set()
        writer.join(10.0)
        catch_up = time.monotonic() + 15.0
        while status.replicated() < writer.written and time.monotonic() < catch_up and not signals.hurry.wait(0.1):
            status.show("catching up")
        passes.stop.set()
        passes.join(30.0)
        status.show("stopped", now=True)
        replicated = status.replicated()
    finally:
        writer.stop.set()
        passes.stop.set()
        factory.close()
    outcomes = ", ".join(f"{n} {outcome}" for outcome, n in sorted(passes.outcomes.items()))
    print(f"\npasses: {outcomes}; {writer.written} events written, {replicated} replicated")
    if writer.error:
        print(f"the writer stopped: {writer.error}")
    return verify(stack.nx.uri, sink.uri)


def verify(source_uri: str, estuary_uri: str) -> int:
    """Compare every document of the estuary with the source's; 0 when they are equal."""
    try:
        with MongoClient[Doc](source_uri) as source, MongoClient[Doc](estuary_uri) as estuary:
            ours = {doc["_id"]: doc for doc in source.shop.orders.find()}
            theirs = {doc["_id"]: doc for doc in estuary.replica.orders.find()}
    except PyMongoError as exc:
        print(f"estuary == source: could not compare ({type(exc).__name__}: {exc})")
        return 1
    differ = sum(ours.get(key) != theirs.get(key) for key in ours.keys() | theirs.keys())
    if differ:
        print(f"estuary == source: NO, {differ} of {len(ours)} documents differ")
        return 1
    print(f"estuary == source: OK ({len(ours)} documents)")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/run-local.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to replicate (default 30)")
    parser.add_argument("--rate", type=float, default=300.0, help="source writes per second (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the stand-ins running until Ctrl-C")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rate <= 0:
        parser.error("--seconds and --rate must be positive")
    raise SystemExit(run(args.seconds, args.rate, args.keep))


if __name__ == "__main__":
    main()
