"""Initial sync and resnapshot: a resumable copy with a change-stream hand-off, converging while writes go on."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from localdev.standins.stack import LocalStack
from shared.auth.mongo_client import ClientFactory
from shared.clock import SystemClock
from shared.config import ReplicatorConfig
from shared.services import build_services
from shared.verify import VerifyOptions, verify_stream
from tests.conftest import Harness, Metrics, stack_config, wait_until

ROOT = Path(__file__).resolve().parent.parent


class Writer:
    """Keeps changing the source (updates, inserts, deletes) until stopped, like an application would."""

    def __init__(self, collection: Any, existing: int) -> None:
        self.collection = collection
        self.existing = existing
        self.stop = threading.Event()
        self.writes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            i = rng.randrange(self.existing)
            choice = rng.random()
            if choice < 0.5:
                self.collection.update_one({"_id": f"p{i:05}"}, {"$set": {"v": -i, "w": self.writes}})
            elif choice < 0.8:
                self.collection.insert_one({"_id": f"n{self.writes:05}", "new": True})
            else:
                self.collection.delete_one({"_id": f"p{i:05}"})
            self.writes += 1


def test_initial_sync_should_copy_while_writes_go_on_across_passes_cut_short(harness: Harness):
    harness.source.insert_many([{"_id": f"p{i:05}", "v": i} for i in range(3000)])
    harness.estuary.insert_one({"_id": "stale", "from": "an earlier, abandoned copy"})  # must not survive
    replicator = harness.replicator(harness.config(initial_sync=True, batch_size=100, time_budget=0.2))
    outcomes = []
    with Writer(harness.source, 3000) as writer:
        while True:
            outcomes.append(replicator.run_pass("orders").outcome)
            checkpoint = harness.checkpoints.read("orders")
            assert checkpoint is not None
            if checkpoint.phase == "streaming" and len(outcomes) > 3:
                break
        wait_until(lambda: writer.writes > 200)
    drain = harness.replicator(harness.config(initial_sync=True, batch_size=100))  # a budget that can go idle
    assert drain.run_pass("orders").outcome == "idle"  # replays what was written during and after the copy
    assert outcomes.count("budget") >= 3  # the copy really was cut short and resumed several times
    assert harness.converged()
    stream = harness.config().stream("orders")
    report = verify_stream(
        stream,
        harness.factory.collection(stream.source),
        harness.factory.collection(stream.estuary),
        options=VerifyOptions(mode="all", recheck_delay=0),
        clock=SystemClock(),
    )
    assert report.ok, report.to_dict()
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.snapshot is not None
    assert checkpoint.snapshot.reason == "initial_sync"
    assert checkpoint.snapshot.copied >= 3000 * 0.8
    assert checkpoint.counters["snapshots"] == 1
    assert harness.estuary.find_one({"_id": "stale"}) is None


def test_initial_sync_should_survive_sigkill_in_the_middle_of_the_copy(harness: Harness, tmp_path: Path):
    harness.source.insert_many([{"_id": f"p{i:05}", "v": i} for i in range(6000)])
    config = harness.config(initial_sync=True, batch_size=50, idle_timeout=30).model_dump(mode="json")
    path = tmp_path / "replicator.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "shared", "run", "--config", str(path)]
    runner = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: 0 < harness.estuary.count_documents({}) < 5000)
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        copied = harness.estuary.count_documents({})
        assert copied < 6000  # it died mid-copy
        harness.source.update_many({"v": {"$lt": 100}}, {"$set": {"touched": True}})
        restarted = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(harness.converged, timeout=90)  # after the killed worker's lease ran out
        finally:
            restarted.send_signal(signal.SIGINT)
            restarted.wait(30)
    finally:
        if runner.poll() is None:
            runner.kill()
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.phase == "streaming"
    assert harness.estuary.count_documents({"touched": True}) == 100


def test_resnapshot_should_recover_a_lost_resume_token_without_a_gap(stack: LocalStack, metrics: Metrics):
    data = stack_config(stack, poll_interval=0.1, idle_timeout=0.6, on_history_lost="resnapshot", batch_size=100)
    config = ReplicatorConfig.model_validate(data)
    factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 5000})
    services = build_services(config, factory=factory, metrics=metrics.replication)
    replicator = services.replicator
    try:
        source = factory.client(config.streams[0].source).shop.orders
        estuary = factory.client(config.streams[0].estuary).replica.orders
        assert replicator.run_pass("orders").outcome == "idle"  # position saved
        source.insert_many([{"_id": f"a{i:04}", "v": i} for i in range(500)])
        replicator.run_pass("orders")
        assert estuary.count_documents({}) == 500
        # While nobody reads the stream, the change log moves on: deletes, updates and inserts that would be lost.
        source.delete_many({"v": {"$lt": 50}})
        source.update_many({"v": {"$gte": 400}}, {"$set": {"late": True}})
        source.insert_many([{"_id": f"b{i:04}"} for i in range(250)])
        stack.proxy.inject_error(
            "aggregate",
            286,
            "Resume of change stream was not possible, as the resume point may no longer be in the oplog",
        )
        result = replicator.run_pass("orders")
        assert result.outcome == "idle"
        assert result.copied == 700
        assert sorted(estuary.find(), key=str) == sorted(source.find(), key=str)  # deletes included: no gap
        checkpoint = services.checkpoints.read("orders")
        assert checkpoint is not None
        assert checkpoint.snapshot is not None
        assert checkpoint.snapshot.reason.startswith("resnapshot after: the saved resume token")
        assert checkpoint.gaps == []
        assert checkpoint.last_error is not None
        assert checkpoint.last_error["recovery"] == "resnapshot"
        source.insert_one({"_id": "after"})  # and streaming goes on from the hand-off
        replicator.run_pass("orders")
        assert estuary.find_one({"_id": "after"}) == {"_id": "after"}
    finally:
        factory.close()


def test_a_source_with_mixed_id_types_should_be_refused_loudly(harness: Harness):
    harness.source.insert_many([{"_id": "text"}, {"_id": 42}])
    replicator = harness.replicator(harness.config(initial_sync=True))
    result = replicator.run_pass("orders")
    assert result.outcome == "failed"
    assert "mix BSON types" in (result.detail or "")
    assert harness.estuary.count_documents({}) == 0
