"""Passes end to end on nx-27017: convergence, crashes, fencing, restarts, refusals, idle checkpoints."""

from __future__ import annotations

import threading
import time
from typing import Any

import bson
import pytest

from localdev.standins.nx import NxServer
from localdev.standins.stack import LocalStack
from shared.auth.mongo_client import ClientFactory
from shared.clock import SystemClock
from shared.config import ReplicatorConfig
from shared.errors import ConfigError
from shared.lease import Lease
from shared.position import CheckpointStore
from shared.replicate import Replicator
from shared.services import build_services
from tests.conftest import Harness, Metrics, stack_config, wait_until


def start_position(harness: Harness, replicator: Replicator | None = None) -> Replicator:
    """A first pass saves where the stream starts (a stream with no saved position starts at 'now')."""
    replicator = replicator or harness.replicator()
    assert replicator.run_pass("orders").outcome == "idle"
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.resume_token is not None
    return replicator


def mixed_changes(collection: Any, n: int = 60) -> None:
    collection.insert_many([{"_id": f"d{i:03}", "v": i, "tags": ["a", "b"]} for i in range(n)])
    for i in range(0, n, 3):
        collection.update_one({"_id": f"d{i:03}"}, {"$set": {"v": -i}, "$push": {"tags": "u"}})
    for i in range(0, n, 7):
        collection.replace_one({"_id": f"d{i:03}"}, {"_id": f"d{i:03}", "replaced": True})
    for i in range(0, n, 5):
        collection.delete_one({"_id": f"d{i:03}"})
    collection.insert_one({"_id": "d000", "v": "reborn"})  # delete then insert again on one _id


def test_mixed_inserts_updates_replaces_and_deletes_should_converge(harness):
    replicator = start_position(harness)
    mixed_changes(harness.source)
    result = replicator.run_pass("orders")
    assert result.outcome == "idle"
    assert result.events == 60 + 20 + 9 + 12 + 1
    assert harness.converged()
    assert harness.estuary.count_documents({}) == 60 - 12 + 1
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.status == "idle"
    assert checkpoint.counters["events"] == result.events
    assert harness.metrics.value("replicator_events_read_total", stream="orders", operation="delete") == 12


def test_a_second_pass_should_apply_nothing_twice_and_keep_converging(harness):
    replicator = start_position(harness)
    mixed_changes(harness.source)
    replicator.run_pass("orders")
    harness.source.update_one({"_id": "d001"}, {"$set": {"late": True}})
    result = replicator.run_pass("orders")
    assert result.events == 1
    assert harness.converged()


def test_idle_passes_should_still_save_the_position(harness):
    replicator = start_position(harness)
    before = harness.checkpoints.read("orders")
    time.sleep(0.05)
    replicator.run_pass("orders")  # no events at all
    after = harness.checkpoints.read("orders")
    assert before is not None
    assert after is not None
    assert (after.updated_at or 0) > (before.updated_at or 0)  # the idle token was written: no aging out
    assert harness.metrics.value("replicator_checkpoint_saves_total", stream="orders", kind="idle") >= 1


class CrashingStore(CheckpointStore):
    """Dies once right after the estuary acknowledged a batch, before the checkpoint moves."""

    crashed = False

    def save(self, lease: Lease, **kwargs: Any) -> Lease:
        if kwargs.get("counters") and not self.crashed:
            self.crashed = True
            raise RuntimeError("process died between the estuary write and the checkpoint")
        return super().save(lease, **kwargs)


def test_a_crash_between_the_estuary_write_and_the_checkpoint_should_replay_harmlessly(harness):
    built = harness.services()
    crashing = CrashingStore(harness.state.checkpoints, clock=SystemClock())
    replicator = start_position(
        harness,
        Replicator(
            built.config,
            checkpoints=crashing,
            dead_letters=built.dead_letters,
            collections=harness.factory,
            discovery=built.discovery,
            clock=built.clock,
            metrics=built.metrics,
        ),
    )
    mixed_changes(harness.source)
    with pytest.raises(RuntimeError, match="between the estuary write"):
        replicator.run_pass("orders")
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.status == "retrying"
    assert "process died" in (checkpoint.last_error or {}).get("message", "")
    replayed = replicator.run_pass("orders")
    assert replayed.events == 102  # the whole batch again: the checkpoint never moved
    assert harness.converged()


def test_a_second_worker_should_end_quietly_while_the_first_holds_the_lease(harness):
    start_position(harness)
    other = harness.replicator()
    store = harness.checkpoints
    acquired = store.acquire("orders", "worker-a", 30)
    assert acquired is not None
    assert other.run_pass("orders").outcome == "lease_held"
    store.release(acquired[0])
    assert other.run_pass("orders").outcome == "idle"


def test_a_stale_workers_late_checkpoint_should_be_refused_and_stop_it(harness):
    start_position(harness)
    config = harness.config(idle_timeout=5)
    slow = harness.replicator(config)
    results: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: results.setdefault("a", slow.run_pass("orders")), daemon=True)
    worker.start()
    wait_until(lambda: getattr(harness.checkpoints.read("orders"), "status", None) == "running")
    harness.state.checkpoints.update_one({"_id": "orders"}, {"$set": {"lease.expires_at": 0.0}})  # lease runs out
    harness.source.insert_one({"_id": "x1"})
    taken_over = harness.replicator().run_pass("orders")  # a second worker takes the stream over
    worker.join(30)
    assert not worker.is_alive()
    assert taken_over.outcome == "idle"
    assert taken_over.events == 1
    assert results["a"].outcome == "lease_lost"  # its next fenced write failed: it stopped
    assert harness.converged()


def test_a_document_the_estuary_refuses_should_be_dead_lettered_and_the_stream_should_continue(harness):
    replicator = start_position(harness)
    harness.estuary.create_index("email", unique=True)
    harness.source.insert_many([{"_id": "a", "email": "x@y"}, {"_id": "b", "email": "x@y"}, {"_id": "c", "email": "z"}])
    result = replicator.run_pass("orders")
    assert result.dead_lettered == 1
    assert result.applied == 2
    parked = list(harness.state.dead_letters.find())
    assert len(parked) == 1
    assert bson.decode(parked[0]["document_key"]) == {"_id": "b"}
    assert parked[0]["document_key_text"] == '{"_id": "b"}'
    assert parked[0]["error"]["code"] == 11000
    assert parked[0]["attempts"] == 3
    assert bson.decode(parked[0]["event"])["fullDocument"] == {"_id": "b", "email": "x@y"}
    harness.source.insert_one({"_id": "d", "email": "w"})  # the stream goes on
    assert replicator.run_pass("orders").applied == 1
    assert sorted(d["_id"] for d in harness.estuary.find()) == ["a", "c", "d"]
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.counters["dead_lettered"] == 1


def test_field_mapping_should_rename_and_drop_before_the_write(harness):
    config = harness.config(transform={"rename": {"v": "value"}, "drop": ["secret"]})
    replicator = start_position(harness, harness.replicator(config))
    harness.source.insert_one({"_id": "a", "v": 1, "secret": "s", "keep": True})
    replicator.run_pass("orders")
    assert harness.estuary.find_one({"_id": "a"}) == {"_id": "a", "value": 1, "keep": True}


def test_a_pipeline_should_filter_what_is_replicated(harness):
    config = harness.config(pipeline=[{"$match": {"operationType": {"$in": ["insert", "update"]}}}])
    replicator = start_position(harness, harness.replicator(config))
    harness.source.insert_many([{"_id": "a"}, {"_id": "b"}])
    harness.source.delete_one({"_id": "a"})
    replicator.run_pass("orders")
    assert sorted(d["_id"] for d in harness.estuary.find()) == ["a", "b"]  # the delete was filtered out


def test_the_source_restarting_mid_pass_should_reopen_from_the_position(tmp_path, metrics: Metrics):
    with NxServer(tmp_path / "src") as source, NxServer(tmp_path / "dst") as target:
        config = ReplicatorConfig.model_validate(
            {
                "checkpoints": {"connection_uri": target.uri, "database": "rep"},
                "streams": [
                    {
                        "name": "orders",
                        "source": {"connection_uri": source.uri, "database": "shop", "collection": "orders"},
                        "estuary": {"connection_uri": target.uri, "database": "shop", "collection": "orders"},
                        "poll_interval": 0.1,
                        "idle_timeout": 3,
                        "time_budget": 60,
                    }
                ],
            }
        )
        factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 15000})
        replicator = build_services(config, factory=factory, metrics=metrics.replication).replicator
        try:
            assert replicator.run_pass("orders").outcome == "idle"
            src = factory.client(config.streams[0].source).shop.orders
            dst = factory.client(config.streams[0].estuary).shop.orders
            results: list[Any] = []
            worker = threading.Thread(target=lambda: results.append(replicator.run_pass("orders")), daemon=True)
            src.insert_many([{"_id": f"before{i}"} for i in range(20)])
            worker.start()
            wait_until(lambda: dst.count_documents({}) == 20)
            source.restart()
            src.insert_many([{"_id": f"after{i}"} for i in range(20)])
            worker.join(60)
            assert not worker.is_alive()
            assert results[0].outcome == "idle"
            assert sorted(d["_id"] for d in dst.find()) == sorted(d["_id"] for d in src.find())
            assert dst.count_documents({}) == 40
        finally:
            factory.close()


def test_entra_a_forced_391_in_the_middle_of_a_stream_should_lose_nothing(stack: LocalStack, metrics: Metrics):
    data = stack_config(stack, poll_interval=0.1, idle_timeout=3, time_budget=60)
    config = ReplicatorConfig.model_validate(data)
    factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 5000})
    replicator = build_services(config, factory=factory, metrics=metrics.replication).replicator
    try:
        assert replicator.run_pass("orders").outcome == "idle"
        source = factory.client(config.streams[0].source).shop.orders
        estuary = factory.client(config.streams[0].estuary).replica.orders
        source.insert_many([{"_id": f"a{i}"} for i in range(30)])
        stack.proxy.inject_reauth(1, commands={"getMore"})
        worker = threading.Thread(target=replicator.run_pass, args=("orders",), daemon=True)
        worker.start()
        wait_until(lambda: estuary.count_documents({}) >= 30)
        source.insert_many([{"_id": f"b{i}"} for i in range(30)])
        worker.join(60)
        assert not worker.is_alive()
        assert stack.proxy.reauth_sent == 1
        assert stack.stub.request_count == 2  # a fresh token after the 391, not the refused one
        assert sorted(d["_id"] for d in estuary.find()) == sorted(d["_id"] for d in source.find())
        assert estuary.count_documents({}) == 60
    finally:
        factory.close()


def test_an_unknown_stream_name_should_be_a_config_error(harness):
    with pytest.raises(ConfigError, match="no stream named 'nope'"):
        harness.replicator().run_pass("nope")
