"""The estuary fence on nx-27017: claims, stale writers refused where the write lands, refusals inside transactions,
deadline bounds, and every write path (streaming, copy, replay) going through it.

nx-27017 reports a standalone server but runs transactions (it rolls them back on abort, without isolating them from
other sessions), so ``fencing: transaction`` is tested here explicitly and ``auto`` picks the deadline mode.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne

from localdev.standins.faithful import FaithfulServer
from shared.clock import SystemClock
from shared.errors import TransientError
from shared.fence import (
    FENCES_COLLECTION,
    LANES,
    TXN_MAX_BYTES,
    TXN_MAX_OPS,
    EstuaryFence,
    FenceLostError,
    transaction_chunks,
)
from shared.lease import HeldLease, Lease
from shared.position import CheckpointStore
from shared.raw_bson import raw_document
from shared.replicate import Replicator
from tests.conftest import FakeClock, Harness, replay_stream


def fence_for(
    harness: Harness, epoch: int, *, mode: str = "transaction", clock: Any = None, expires_in: float = 30.0
) -> EstuaryFence:
    clock = clock or SystemClock()
    lease = Lease("orders", f"worker-{epoch}", epoch, clock.time() + expires_in)
    estuary = harness.factory.collection(harness.config().stream("orders").estuary)
    held = HeldLease(lease, clock=clock)
    return EstuaryFence(estuary, stream="orders", held=held, mode=mode, write_timeout=5.0, clock=clock)  # type: ignore[arg-type]


def fence_document(harness: Harness) -> dict[str, Any] | None:
    return harness.estuary.database[FENCES_COLLECTION].find_one({"_id": "orders"})


def ids(harness: Harness) -> list[Any]:
    return sorted(d["_id"] for d in harness.estuary.find())


def test_a_claim_should_raise_the_fence_to_the_leases_epoch(harness):
    fence_for(harness, 3).claim()
    fence = fence_document(harness)
    assert fence is not None
    assert (fence["epoch"], fence["owner"]) == (3, "worker-3")
    fence_for(harness, 4).claim()
    assert (fence_document(harness) or {})["epoch"] == 4


def test_a_claim_with_an_earlier_epoch_should_be_refused(harness):
    fence_for(harness, 5).claim()
    with pytest.raises(FenceLostError, match="refused lease epoch 4") as refused:
        fence_for(harness, 4).claim()
    assert (fence_document(harness) or {})["epoch"] == 5
    # How to recover when the checkpoint was recreated: the hint's deletion removes every lane, then a claim succeeds.
    assert "deleteMany({$or: [{_id: 'orders'}, {stream: 'orders'}]})" in (refused.value.hint or "")
    harness.estuary.database[FENCES_COLLECTION].delete_many({"$or": [{"_id": "orders"}, {"stream": "orders"}]})
    fence_for(harness, 4).claim()
    assert (fence_document(harness) or {})["epoch"] == 4


def test_a_claim_should_raise_every_lane_whatever_the_workers_concurrency(harness):
    fence_for(harness, 1).claim()
    fence_for(harness, 3).claim()
    lanes = list(harness.estuary.database[FENCES_COLLECTION].find({"stream": "orders"}))
    assert len({lane["_id"] for lane in lanes}) == LANES
    assert "orders" in {lane["_id"] for lane in lanes}  # lane 0: the one fence document of earlier versions
    assert {(lane["epoch"], lane["owner"]) for lane in lanes} == {(3, "worker-3")}


def test_concurrent_transactions_of_one_worker_should_all_write_and_of_a_stale_worker_none(run_threads):
    """On the faithful server (a replica set): nx-27017 cannot hold transactions of several sessions open at once."""
    clock = SystemClock()
    with FaithfulServer() as server, MongoClient[Any](server.uri) as client:
        estuary = client["shop"]["orders"]

        def fence(epoch: int) -> EstuaryFence:
            held = HeldLease(Lease("orders", f"worker-{epoch}", epoch, clock.time() + 30), clock=clock)
            return EstuaryFence(estuary, stream="orders", held=held, mode="auto", write_timeout=5.0, clock=clock)

        worker = fence(1)
        written = run_threads(6, lambda: worker.write([InsertOne({"_id": uuid.uuid4().hex})]))
        assert written == [{}] * 6
        assert worker.transactions is True
        fence(2).claim()
        refused = run_threads(6, lambda: worker.write([InsertOne({"_id": uuid.uuid4().hex})]))
        assert all(isinstance(outcome, FenceLostError) for outcome in refused), refused
        assert estuary.count_documents({}) == 6


@pytest.mark.parametrize("mode", ["transaction", "auto"])
def test_a_stale_writer_should_write_nothing_once_a_later_lease_claimed_the_stream(harness, mode):
    stale = fence_for(harness, 1, mode=mode)
    stale.write([InsertOne({"_id": "before"})])  # claims epoch 1
    fence_for(harness, 2).claim()  # another worker takes the stream over
    if mode == "transaction":
        with pytest.raises(FenceLostError, match="claimed by a later lease"):
            stale.write([InsertOne({"_id": "late"}), DeleteOne({"_id": "before"})])
        assert ids(harness) == ["before"]  # the transaction aborted: neither write landed
    else:  # nx-27017 is a standalone: auto fences by deadline, which cannot see the claim (docs say so)
        assert stale.transactions is False
        stale.write([InsertOne({"_id": "late"})])
        assert ids(harness) == ["before", "late"]


def test_a_refused_document_inside_a_transaction_should_be_set_aside_and_the_rest_written(harness):
    harness.estuary.create_index("email", unique=True)
    harness.estuary.insert_one({"_id": "taken", "email": "x@y"})
    fence = fence_for(harness, 1)
    refused = fence.write(
        [
            InsertOne({"_id": "a", "email": "a@y"}),
            InsertOne({"_id": "b", "email": "x@y"}),  # refused by the unique index: aborts its transaction
            ReplaceOne({"_id": "c"}, {"_id": "c", "email": "c@y"}, upsert=True),
        ]
    )
    assert list(refused) == [1]
    assert refused[1].code == 11000
    assert ids(harness) == ["a", "c", "taken"]


def test_a_write_should_not_start_once_the_lease_has_run_out_by_the_workers_clock(harness):
    clock = FakeClock()
    fence = fence_for(harness, 1, clock=clock, expires_in=10.0)
    fence.write([InsertOne({"_id": "in-time"})])
    clock.advance(9.5)  # less than the margin left
    with pytest.raises(FenceLostError, match="lease ran out before the write could start"):
        fence.write([InsertOne({"_id": "too-late"})])
    assert ids(harness) == ["in-time"]


def test_auto_should_fence_a_standalone_estuary_by_deadline_and_say_so(harness, caplog):
    fence = fence_for(harness, 1, mode="auto")
    with caplog.at_level("INFO", logger="shared"):
        fence.claim()
    assert fence.transactions is False
    assert "estuary writes fenced by a deadline within the lease" in caplog.text


def test_transactions_should_hold_at_most_their_share_of_writes_and_bytes():
    small = [InsertOne({"_id": i}) for i in range(2 * TXN_MAX_OPS + 5)]
    assert [len(chunk) for chunk in transaction_chunks(small)] == [TXN_MAX_OPS, TXN_MAX_OPS, 5]
    big = [InsertOne({"_id": i, "pad": b"x" * (TXN_MAX_BYTES // 3)}) for i in range(7)]
    chunks = transaction_chunks(big)
    assert [i for chunk in chunks for i in chunk] == list(range(7))  # every write once, in order
    assert all(len(chunk) <= 3 for chunk in chunks)


def test_a_transient_failure_to_claim_should_be_transient(harness, nx_server):
    estuary = {
        "connection_uri": "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200",
        "database": "x",
        "collection": "y",
    }
    config = harness.config(estuary=estuary)
    clock = SystemClock()
    held = HeldLease(Lease("orders", "w", 1, clock.time() + 30), clock=clock)
    fence = EstuaryFence(
        harness.factory.collection(config.stream("orders").estuary),
        stream="orders",
        held=held,
        mode="auto",
        write_timeout=5.0,
        clock=clock,
    )
    with pytest.raises(TransientError, match="could not claim the estuary fence"):
        fence.claim()


# ---------------------------------------------------------------------------------------------- every write path


def test_a_pass_should_claim_the_fence_with_its_lease_and_write_through_it(harness):
    replicator = harness.replicator(harness.config(fencing="transaction"))
    replicator.run_pass("orders")  # saves the start position; nothing to write, so no claim
    assert fence_document(harness) is None
    harness.source.insert_many([{"_id": f"d{i}"} for i in range(5)])
    replicator.run_pass("orders")
    fence = fence_document(harness)
    checkpoint = harness.checkpoints.read("orders")
    assert fence is not None
    assert checkpoint is not None
    assert fence["owner"].startswith("pass@")
    assert fence["epoch"] == 2  # the second pass's lease
    assert "written_at" in fence  # each transaction checked the fence
    assert ids(harness) == [f"d{i}" for i in range(5)]


def test_a_copy_by_a_worker_that_lost_the_stream_should_be_refused(harness):
    harness.source.insert_many([{"_id": f"c{i:03}"} for i in range(30)])
    config = harness.config(initial_sync=True, fencing="transaction", batch_size=10)
    services = harness.services(config)
    results: dict[str, Any] = {}
    taken = threading.Event()

    class Overtaken(CheckpointStore):
        """After the first copied batch, another worker takes the stream and claims the estuary."""

        def save_copy_progress(self, lease: Lease, **kwargs: Any) -> Lease:
            renewed = super().save_copy_progress(lease, **kwargs)
            if not taken.is_set():
                taken.set()
                fence_for(harness, lease.epoch + 1).claim()
            return renewed

    replicator = Replicator(
        config,
        checkpoints=Overtaken(harness.state.checkpoints, clock=SystemClock()),
        dead_letters=services.dead_letters,
        collections=harness.factory,
        discovery=services.discovery,
        clock=SystemClock(),
        metrics=services.metrics,
    )
    results["pass"] = replicator.run_pass("orders")
    assert results["pass"].outcome == "lease_lost"
    assert ids(harness) == [f"c{i:03}" for i in range(10)]  # the first batch only: the second was refused


def test_a_replay_should_claim_the_fence_so_an_earlier_pass_can_no_longer_write(harness):
    harness.replicator().run_pass("orders")  # the stream's first lease: epoch 1
    stale = fence_for(harness, 1)  # a pass of that lease that wrote, then stalled
    stale.claim()
    services = harness.services(harness.config(fencing="transaction"))
    harness.source.insert_one({"_id": "p"})
    services.dead_letters.park(
        "orders",
        _event("p"),
        code=11000,
        message="refused",
        attempts=3,
    )
    result = replay_stream(services)
    assert (result.outcome, result.replayed) == ("done", 1)
    assert (fence_document(harness) or {})["owner"].startswith("dead-letters-replay@")
    with pytest.raises(FenceLostError):
        stale.write([InsertOne({"_id": "late"})])


def _event(key: str) -> Any:
    return raw_document(
        {
            "_id": {"_data": f"t-{key}"},
            "operationType": "insert",
            "documentKey": {"_id": key},
            "fullDocument": {"_id": key},
        }
    )
