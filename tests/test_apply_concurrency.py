"""Parallel apply by key (``apply_concurrency``): groups of disjoint documents written at once, refusals and dead
letters per document as before, a failure in one group failing the batch only once every group ended, no thread left
after a pass, and transactions (on the faithful server, a replica set) each checking the fence.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import bson
import pytest
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from localdev.standins.faithful import FaithfulServer
from shared.auth.mongo_client import ClientFactory
from shared.clock import SystemClock
from shared.config import ReplicatorConfig
from shared.dead_letters import DeadLetters
from shared.errors import TransientError
from shared.estuary import ApplyLanes, EstuaryWriter, Refusal, WriteOp, write_unordered
from shared.fence import FENCES_COLLECTION
from shared.services import build_services
from tests.conftest import Harness, Metrics
from tests.test_overlap import our_threads, read_threads


def insert(token: int, _id: str, **fields: Any) -> RawBSONDocument:
    event = {
        "_id": {"_data": f"t{token}"},
        "operationType": "insert",
        "documentKey": {"_id": _id},
        "fullDocument": {"_id": _id, **fields},
    }
    return RawBSONDocument(bson.encode(event))


def keys(ops: Sequence[WriteOp]) -> set[str]:
    return {op._filter["_id"] for op in ops}  # type: ignore[union-attr]


@pytest.fixture
def lanes() -> Iterator[ApplyLanes]:
    made = ApplyLanes(3, name="apply-test")
    yield made
    made.close()


def writer_for(harness: Harness, write: Any) -> EstuaryWriter:
    dead_letters = DeadLetters(harness.state.dead_letters, clock=SystemClock())
    return EstuaryWriter(write, dead_letters, stream="orders", max_attempts=3)


def test_a_batchs_groups_should_be_written_at_once_each_document_in_exactly_one(harness, lanes):
    together = threading.Barrier(3, timeout=10)  # breaks unless three groups are being written at the same time
    groups: list[set[str]] = []
    threads: set[str] = set()

    def write(ops: Sequence[WriteOp]) -> dict[int, Refusal]:
        groups.append(keys(ops))
        threads.add(threading.current_thread().name)
        together.wait()
        return write_unordered(harness.estuary, ops)

    events = [insert(i, f"d{i:03d}", v=i) for i in range(90)]
    result = writer_for(harness, write).apply(events, lanes=lanes)
    assert result.applied["insert"] == 90
    assert len(groups) == 3
    assert len(threads) == 3
    assert sorted(k for group in groups for k in group) == [f"d{i:03d}" for i in range(90)]  # disjoint, complete
    assert harness.estuary.count_documents({}) == 90


def test_a_refused_document_should_be_retried_and_parked_on_its_own_while_the_other_groups_are_written(harness, lanes):
    harness.estuary.create_index("email", unique=True)
    harness.estuary.insert_one({"_id": "taken", "email": "x@y"})
    attempts: dict[str, int] = {}

    def write(ops: Sequence[WriteOp]) -> dict[int, Refusal]:
        for key in keys(ops):
            attempts[key] = attempts.get(key, 0) + 1
        return write_unordered(harness.estuary, ops)

    events = [insert(i, f"d{i:03d}", email=f"{i}@y") for i in range(30)] + [insert(99, "dup", email="x@y")]
    result = writer_for(harness, write).apply(events, lanes=lanes)
    assert (result.applied["insert"], result.dead_lettered) == (30, 1)
    assert attempts["dup"] == 3  # max_attempts, for the refused document only
    assert {attempts[f"d{i:03d}"] for i in range(30)} == {1}
    parked = DeadLetters(harness.state.dead_letters, clock=SystemClock()).newest("orders", 10)
    assert [(p.document_key["_id"], p.attempts) for p in parked] == [("dup", 3)]
    assert harness.estuary.count_documents({}) == 31


def test_a_transient_failure_in_one_group_should_fail_the_batch_once_every_group_ended_and_park_nothing(harness, lanes):
    harness.estuary.create_index("email", unique=True)
    harness.estuary.insert_one({"_id": "taken", "email": "x@y"})
    running = 0
    lock = threading.Lock()

    def write(ops: Sequence[WriteOp]) -> dict[int, Refusal]:
        nonlocal running
        if "boom" in keys(ops):
            raise TransientError("estuary write failed: throttled")
        with lock:
            running += 1
        time.sleep(0.3)  # still writing when the failing group gives up
        try:
            return write_unordered(harness.estuary, ops)
        finally:
            with lock:
                running -= 1

    events = [insert(i, f"d{i:03d}", email=f"{i}@y") for i in range(30)]
    events += [insert(98, "dup", email="x@y"), insert(99, "boom", email="b@y")]
    with pytest.raises(TransientError, match="throttled"):
        writer_for(harness, write).apply(events, lanes=lanes)
    assert running == 0  # no write of the batch still running when the batch is retried
    assert harness.state.dead_letters.count_documents({}) == 0  # nothing parked before every group succeeded


def test_a_pass_with_apply_concurrency_should_converge_and_leave_no_thread(harness):
    replicator = harness.replicator(harness.config(apply_concurrency=4, batch_size=50))
    assert replicator.run_pass("orders").outcome == "idle"  # the start position
    harness.source.insert_many([{"_id": f"d{i:03d}", "v": i} for i in range(300)])
    harness.source.update_many({"v": {"$lt": 100}}, {"$set": {"updated": True}})
    harness.source.delete_many({"v": {"$gte": 250}})
    threads = our_threads()
    result = replicator.run_pass("orders")
    assert result.events == 450
    assert harness.converged()
    assert our_threads() == threads
    assert read_threads() == []


def test_concurrent_transactions_of_a_pass_should_each_check_the_fence_and_converge():
    with FaithfulServer() as server, MongoClient[Any](server.uri) as client:
        endpoint = {"connection_uri": server.uri, "collection": "orders"}
        config = ReplicatorConfig.model_validate(
            {
                "checkpoints": {"connection_uri": server.uri, "database": "rep"},
                "streams": [
                    {
                        "name": "orders",
                        "source": {**endpoint, "database": "shop"},
                        "estuary": {**endpoint, "database": "replica"},
                        "poll_interval": 0.1,
                        "idle_timeout": 0.5,
                        "batch_size": 200,
                        "apply_concurrency": 4,
                    }
                ],
            }
        )
        factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 5000})
        replicator = build_services(config, factory=factory, metrics=Metrics().replication).replicator
        try:
            assert replicator.run_pass("orders").outcome == "idle"
            client.shop.orders.insert_many([{"_id": f"d{i:03d}", "v": i} for i in range(400)])
            server_commands = len(server.commands)
            assert replicator.run_pass("orders").events == 400
        finally:
            factory.close()
        assert sorted(client.replica.orders.find(), key=str) == sorted(client.shop.orders.find(), key=str)
        # Two batches of 200 events, each in four groups: eight transactions, each first updating a lane of the fence.
        assert server.commands[server_commands:].count("commitTransaction") == 8
        checked = client.replica[FENCES_COLLECTION].count_documents({"stream": "orders", "written_at": {"$exists": 1}})
        assert checked >= 1
