"""The checkpoint store on its own, on nx-27017: leases and their epochs, fenced writes, counters, gaps, copies.

Most tests run the store on a ``FakeClock``: a lease expires when the test moves time, never by sleeping.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.position import (
    Checkpoint,
    CheckpointStore,
    CopyProgress,
    Held,
    Lease,
    LeaseLostError,
    hold_lease,
    owner_id,
)
from tests.conftest import FakeClock, Harness

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def store(harness: Harness, clock: FakeClock) -> CheckpointStore:
    """The harness's checkpoint collection, on the fake clock."""
    return CheckpointStore(harness.state.checkpoints, clock=clock)


def take(store: CheckpointStore, owner: str, duration: float = 10, stream: str = "orders") -> Held:
    held = store.acquire(stream, owner, duration)
    assert held is not None, f"{owner} could not take the lease of {stream}"
    return held


def stored(harness: Harness, stream: str = "orders") -> dict[str, Any]:
    doc = harness.state.checkpoints.find_one({"_id": stream})
    assert doc is not None
    return doc


def test_checkpoint_writes_should_be_fenced_by_the_lease_epoch(harness):
    store = harness.checkpoints
    first = store.acquire("orders", "a", 0.01)
    assert first is not None
    time.sleep(0.05)
    second = store.acquire("orders", "b", 30)
    assert second is not None
    assert second[0].epoch == first[0].epoch + 1
    with pytest.raises(LeaseLostError, match="taken over"):
        store.save(first[0], duration=30, resume_token={"_data": "stale"})
    store.save(second[0], duration=30, resume_token={"_data": "fresh"})
    checkpoint = store.read("orders")
    assert checkpoint is not None
    assert checkpoint.resume_token == {"_data": "fresh"}


def test_streams_sharing_the_checkpoint_collection_should_keep_separate_leases(harness):
    store = harness.checkpoints
    first = store.acquire("orders", "a", 10)
    assert first is not None
    store.release(first[0])  # "orders" now has an expired lease
    second = store.acquire("customers", "b", 10)
    assert second is not None
    assert second[0].stream == "customers"
    orders, customers = store.read("orders"), store.read("customers")
    assert orders is not None
    assert customers is not None
    assert orders.lease_owner == "a"  # untouched by the other stream's acquire
    assert customers.lease_owner == "b"


# ---------------------------------------------------------------------------------------------- leases


def test_acquire_should_create_the_checkpoint_of_a_new_stream_with_the_first_epoch(store, clock):
    assert store.read("orders") is None
    held = take(store, "a", 10)
    assert held.lease == Lease("orders", "a", 1, clock.now + 10)
    assert held.checkpoint.status == "new"
    assert held.checkpoint.resume_token is None
    assert held.checkpoint.lease_owner == "a"


def test_acquire_should_be_refused_while_the_lease_is_live_and_granted_with_the_next_epoch_once_it_expires(
    store, clock
):
    first = take(store, "a", 10)
    assert store.acquire("orders", "b", 10) is None
    clock.advance(10)  # expires_at itself still counts as held
    assert store.acquire("orders", "b", 10) is None
    clock.advance(0.5)
    second = take(store, "b", 10)
    assert second.lease.epoch == first.lease.epoch + 1
    assert second.lease.expires_at == clock.now + 10
    checkpoint = store.read("orders")
    assert checkpoint is not None
    assert checkpoint.lease_owner == "b"


def test_acquire_should_be_granted_at_once_after_a_release_and_hand_over_the_saved_checkpoint(store):
    first = take(store, "a", 30)
    store.save(first.lease, duration=30, resume_token={"_data": "t9"}, last_event_at=123.5, counters={"events": 9})
    store.release(first.lease)
    second = take(store, "b", 30)  # no time passed
    assert second.lease.epoch == first.lease.epoch + 1
    assert second.checkpoint.resume_token == {"_data": "t9"}
    assert second.checkpoint.last_event_at == 123.5
    assert second.checkpoint.counters == {"events": 9}
    assert second.checkpoint.status == "running"


def test_release_should_not_free_a_lease_that_was_taken_over(store, clock):
    first = take(store, "a", 10)
    clock.advance(11)
    take(store, "b", 10)
    store.release(first.lease)  # the stale holder gives back what it no longer has: not an error, no effect
    assert store.acquire("orders", "c", 10) is None


FENCED: dict[str, Callable[[CheckpointStore, Lease], object]] = {
    "save": lambda s, lease: s.save(lease, duration=30, resume_token={"_data": "stale"}, counters={"events": 1}),
    "set_status": lambda s, lease: s.set_status(lease, "failed", error={"message": "stale"}),
    "begin_snapshot": lambda s, lease: s.begin_snapshot(lease, reason="stale"),
    "start_copy": lambda s, lease: s.start_copy(
        lease, handoff_token={"_data": "stale"}, total_estimate=1, estuary_was_empty=True
    ),
    "save_copy_progress": lambda s, lease: s.save_copy_progress(lease, last_id="zzz", copied=5, duration=30),
    "finish_copy": lambda s, lease: s.finish_copy(lease, handoff_token={"_data": "stale"}),
    "record_gap": lambda s, lease: s.record_gap(lease, since=1.0, reason="stale"),
}


@pytest.mark.parametrize("write", sorted(FENCED))
def test_every_fenced_write_should_raise_lease_lost_after_a_takeover_and_change_nothing(harness, store, clock, write):
    stale = take(store, "a", 10).lease
    store.save(stale, duration=10, resume_token={"_data": "t1"}, counters={"events": 1})
    clock.advance(11)
    fresh = take(store, "b", 10).lease
    store.begin_snapshot(fresh, reason="operator reset")  # a copy under way, for the copy writes to spoil
    before = stored(harness)
    clock.advance(1)
    with pytest.raises(LeaseLostError, match=f"epoch {stale.epoch} was taken over"):
        FENCED[write](store, stale)
    assert stored(harness) == before


def test_save_should_add_the_counters_and_keep_what_it_is_not_given(store, clock):
    lease = take(store, "a", 30).lease
    lease = store.save(
        lease,
        duration=30,
        resume_token={"_data": "t1"},
        last_event_at=100.0,
        counters={"events": 3, "applied": 2, "skipped": 0},
    )
    clock.advance(2)
    store.save(lease, duration=30, resume_token={"_data": "t2"}, counters={"events": 4}, status="idle")
    checkpoint = store.read("orders")
    assert checkpoint is not None
    assert checkpoint.counters == {"events": 7, "applied": 2}  # a zero is not written
    assert checkpoint.resume_token == {"_data": "t2"}
    assert checkpoint.last_event_at == 100.0  # not given the second time: kept
    assert checkpoint.status == "idle"
    assert checkpoint.token_saved_at == checkpoint.updated_at == clock.now


def test_save_should_renew_the_lease_and_return_the_later_expiry(store, clock):
    held = take(store, "a", 10)
    clock.advance(8)
    renewed = store.save(held.lease, duration=10, resume_token={"_data": "t1"})
    assert renewed == Lease("orders", "a", held.lease.epoch, clock.now + 10)
    assert renewed.expires_at > held.lease.expires_at
    clock.advance(5)  # past the first expiry, before the renewed one
    assert store.acquire("orders", "b", 10) is None
    checkpoint = store.read("orders")
    assert checkpoint is not None
    assert checkpoint.lease_expires_at == renewed.expires_at


def test_set_status_should_record_an_error_with_its_time_and_clear_it_without_moving_the_token(store, clock):
    lease = take(store, "a", 30).lease
    store.save(lease, duration=30, resume_token={"_data": "t1"})
    store.set_status(lease, "retrying", error={"message": "boom", "type": "TransientError"})
    checkpoint = store.read("orders")
    assert checkpoint is not None
    assert checkpoint.status == "retrying"
    assert checkpoint.last_error == {"message": "boom", "type": "TransientError", "at": clock.now}
    store.set_status(lease, "idle", clear_error=True, extra={"source_bytes_per_s": 12.5})
    checkpoint = store.read("orders")
    assert checkpoint is not None
    assert checkpoint.status == "idle"
    assert checkpoint.last_error is None
    assert checkpoint.source_bytes_per_s == 12.5
    assert checkpoint.resume_token == {"_data": "t1"}


# ---------------------------------------------------------------------------------------------- gaps


def test_record_gap_should_append_to_the_stored_gaps_across_leases_and_forget_the_token(store, clock):
    first = take(store, "a", 30).lease
    store.save(first, duration=30, resume_token={"_data": "t1"}, start_after=True)
    store.record_gap(first, since=100.0, reason="one")
    store.release(first)
    second = take(store, "b", 30).lease  # another worker, another Lease: it never saw the first gap
    clock.advance(5)
    store.record_gap(second, since=200.0, reason="two")
    checkpoint = store.read("orders")
    assert checkpoint is not None
    assert [gap["reason"] for gap in checkpoint.gaps] == ["one", "two"]
    assert checkpoint.gaps[1] == {"from": 200.0, "to": clock.now, "reason": "two", "recorded_at": clock.now}
    assert checkpoint.counters["gaps"] == 2
    assert checkpoint.resume_token is None
    assert checkpoint.start_after is False
    assert checkpoint.token_saved_at is None


def test_record_gap_should_keep_only_the_newest_hundred(harness, store):
    lease = take(store, "a", 30).lease
    old = [{"from": float(i), "to": float(i), "reason": f"old {i}", "recorded_at": float(i)} for i in range(100)]
    harness.state.checkpoints.update_one({"_id": "orders"}, {"$set": {"gaps": old}})
    store.record_gap(lease, since=None, reason="new")
    checkpoint = store.read("orders")
    assert checkpoint is not None
    assert len(checkpoint.gaps) == 100
    assert checkpoint.gaps[0]["reason"] == "old 1"  # the oldest one went
    assert checkpoint.gaps[-1]["reason"] == "new"
    assert checkpoint.gaps[-1]["from"] is None


# ---------------------------------------------------------------------------------------------- copies


def test_a_copys_progress_should_be_recorded_from_request_to_hand_off(store, clock):
    lease = take(store, "a", 30).lease
    requested = store.begin_snapshot(lease, reason="initial_sync")
    assert requested == CopyProgress(reason="initial_sync", requested_at=clock.now)
    clock.advance(1)
    started_at = clock.now
    store.start_copy(lease, handoff_token={"_data": "h1"}, total_estimate=250, estuary_was_empty=True)
    clock.advance(1)
    renewed = store.save_copy_progress(lease, last_id="p099", copied=100, duration=30)
    assert renewed.expires_at == clock.now + 30
    store.save_copy_progress(renewed, last_id="p199", copied=100, duration=30)
    copying = store.read("orders")
    assert copying is not None
    assert copying.phase == "copying"
    assert copying.snapshot == CopyProgress(
        reason="initial_sync",
        requested_at=requested.requested_at,
        handoff_token={"_data": "h1"},
        last_id="p199",
        copied=200,
        total_estimate=250,
        estuary_was_empty=True,
        started_at=started_at,
    )
    clock.advance(1)
    store.finish_copy(renewed, handoff_token={"_data": "h1"})
    done = store.read("orders")
    assert done is not None
    assert done.phase == "streaming"
    assert done.resume_token == {"_data": "h1"}
    assert done.start_after is False
    assert done.snapshot is not None
    assert done.snapshot.finished_at == clock.now
    assert done.counters == {"snapshots": 1, "copied": 200}


# ---------------------------------------------------------------------------------------------- documents


def test_a_version_1_document_should_be_read_field_by_field():
    doc = json.loads((FIXTURES / "checkpoint_v1.json").read_text())
    assert Checkpoint.from_document(doc) == Checkpoint(
        stream="orders",
        resume_token={"_data": "8263A1B2C3000000012B022C0100296E5A1004"},
        start_after=False,
        last_event_at=1795000299.25,
        updated_at=1795000300.5,
        status="idle",
        last_error={"message": "estuary write failed: AutoReconnect", "type": "TransientError", "at": 1795000100.0},
        counters={"events": 1200, "applied": 1100, "skipped": 90, "dead_lettered": 10, "gaps": 1},
        gaps=[
            {
                "from": 1794990000.0,
                "to": 1794990600.0,
                "reason": "the saved resume token can no longer be resumed",
                "recorded_at": 1794990600.0,
            }
        ],
        lease_owner="a1b2c3d4e5f6:4242:9f8e7d6c",
        lease_expires_at=0.0,
        phase="streaming",  # v1 documents before copies existed have no phase
        snapshot=None,
        token_saved_at=1795000300.5,  # nor token_saved_at: the last update stands for it
        source_bytes_per_s=None,
    )


def test_a_document_with_a_snapshot_should_give_typed_copy_progress():
    doc = {
        "_id": "orders",
        "schema": 1,
        "phase": "copying",
        "snapshot": {
            "reason": "resnapshot after: the saved resume token can no longer be resumed",
            "requested_at": 1795000000.0,
            "handoff_token": {"_data": "h1"},
            "last_id": "p00042",
            "copied": 43.0,  # a number a JSON-backed server hands back as a double
            "total_estimate": 3000,
            "estuary_was_empty": 1,
            "started_at": 1795000001.0,
        },
    }
    checkpoint = Checkpoint.from_document(doc)
    assert checkpoint.phase == "copying"
    assert checkpoint.snapshot == CopyProgress(
        reason="resnapshot after: the saved resume token can no longer be resumed",
        requested_at=1795000000.0,
        handoff_token={"_data": "h1"},
        last_id="p00042",
        copied=43,
        total_estimate=3000,
        estuary_was_empty=True,
        started_at=1795000001.0,
        finished_at=None,
    )
    assert type(checkpoint.snapshot.copied) is int
    assert type(checkpoint.snapshot.estuary_was_empty) is bool


def test_copy_progress_should_default_what_a_document_lacks():
    assert CopyProgress.from_document({"reason": None}) == CopyProgress(reason="")


# ---------------------------------------------------------------------------------------------- hold_lease


def test_hold_lease_should_yield_none_and_leave_the_lease_alone_when_another_worker_holds_it(store):
    take(store, "other", 30)
    with hold_lease(store, "orders", duration=30, role="replay") as held:
        assert held is None
    checkpoint = store.read("orders")
    assert checkpoint is not None
    assert checkpoint.lease_owner == "other"
    assert store.acquire("orders", "third", 30) is None  # still held: nothing was released


def test_hold_lease_should_hold_under_an_owner_named_by_its_role_and_release_on_exit(store):
    with hold_lease(store, "orders", duration=30, role="reset") as held:
        assert held is not None
        assert held.lease.owner.startswith("reset@")
        assert store.acquire("orders", "next", 30) is None
    after = take(store, "next", 30)  # at once: no time passed
    assert after.lease.epoch == held.lease.epoch + 1


def test_hold_lease_should_release_when_the_block_raises(store):
    holder: list[Held] = []

    def work_that_fails() -> None:
        with hold_lease(store, "orders", duration=30, role="pass") as held:
            assert held is not None
            holder.append(held)
            raise RuntimeError("in the block")

    with pytest.raises(RuntimeError, match="in the block"):
        work_that_fails()
    assert take(store, "next", 30).lease.epoch == holder[0].lease.epoch + 1  # at once: no time passed


def test_owner_id_should_be_unique_per_call_and_say_who_and_where():
    owners = [owner_id("pass") for _ in range(200)]
    assert len(set(owners)) == 200
    assert all(owner.startswith("pass@") and f":{os.getpid()}:" in owner for owner in owners)
