"""Scoped streams on nx-27017: discovery, a pass over a group of collections, drops, returns, failures kept apart.

nx-27017 lists databases and collections like MongoDB; a database- or cluster-level ``watch()`` returns nothing on it,
so these tests run the default per-collection mode. Every test names its databases after itself, and a cluster scope
is narrowed to them with ``include`` (the session's server holds other tests' databases too).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from shared.config import ReplicatorConfig
from shared.operations import schedule
from shared.replicate.members import run_members
from shared.replicate.outcome import PassResult
from shared.work_queue import parse_pass_request
from tests.conftest import FakeClock, Harness


def scoped_config(harness: Harness, **overrides: Any) -> ReplicatorConfig:
    stream = {
        "name": "shop",
        "source": {"connection_uri": harness.uri, "database": f"{harness.prefix}_src"},
        "estuary": {"connection_uri": harness.uri, "database": f"{harness.prefix}_dst"},
        "poll_interval": 0.1,
        "idle_timeout": 5,
        "time_budget": 30,
        "lease_duration": 10,
        **overrides,
    }
    checkpoints = {"connection_uri": harness.uri, "database": f"{harness.prefix}_rep"}
    return ReplicatorConfig.model_validate({"checkpoints": checkpoints, "streams": [stream]})


def tick(services: Any) -> list[Any]:
    messages = schedule(
        services.config,
        checkpoints=services.checkpoints,
        discovery=services.discovery,
        metrics=services.metrics,
        correlation_id="tick",
        now=0.0,
    )
    return [parse_pass_request(m) for m in messages]


def run_tick(services: Any) -> list[PassResult]:
    return [
        r for request in tick(services) for r in services.replicator.run_requested(request.stream, request.collections)
    ]


def test_a_tick_should_group_the_matching_collections_and_a_pass_should_replicate_each(harness: Harness):
    source = harness.source.database
    for name in ("orders_eu", "orders_us", "customers", "orders_tmp"):
        source[name].insert_one({"_id": 1, "name": name})
    config = scoped_config(harness, include=["orders*", "customers"], exclude=["*_tmp"], collections_per_pass=2)
    services = harness.services(config)
    requests = tick(services)
    assert [(r.stream, r.collections) for r in requests] == [
        ("shop", ("customers", "orders_eu")),
        ("shop", ("orders_us",)),
    ]
    run_tick(services)  # first passes: each collection starts from now (no initial_sync)
    for name in ("orders_eu", "orders_us", "customers", "orders_tmp"):
        source[name].insert_one({"_id": 2, "name": name})
    results = run_tick(services)
    assert sorted((r.stream, r.events) for r in results) == [
        ("shop/customers", 1),
        ("shop/orders_eu", 1),
        ("shop/orders_us", 1),
    ]
    estuary = harness.estuary.database
    assert sorted(estuary.list_collection_names()) == ["customers", "orders_eu", "orders_us", "replicator_fences"]
    assert estuary["orders_eu"].find_one({"_id": 2}) == {"_id": 2, "name": "orders_eu"}
    checkpoint = services.checkpoints.read("shop/orders_eu")
    assert checkpoint is not None
    assert checkpoint.counters.get("applied") == 1


def test_a_new_collection_should_be_copied_and_a_dropped_one_marked_and_left_out(harness: Harness):
    source = harness.source.database
    source["a"].insert_many([{"_id": i} for i in range(5)])
    services = harness.services(scoped_config(harness, initial_sync=True))
    run_tick(services)
    assert harness.estuary.database["a"].count_documents({}) == 5

    source["b"].insert_many([{"_id": i, "late": True} for i in range(3)])  # created after the first tick
    source["a"].drop()
    results = run_tick(services)
    assert [r.stream for r in results] == ["shop/b"]
    assert harness.estuary.database["b"].count_documents({"late": True}) == 3
    dropped = services.checkpoints.read("shop/a")
    assert dropped is not None
    assert dropped.status == "dropped"
    assert "no longer exists" in (dropped.last_error or {}).get("message", "")
    assert harness.estuary.database["a"].count_documents({}) == 5  # the estuary collection is kept

    source["a"].insert_one({"_id": "again"})  # recreated: a new collection, copied again
    run_tick(services)
    returned = services.checkpoints.read("shop/a")
    assert returned is not None
    assert returned.status == "idle"
    assert harness.estuary.database["a"].find_one({"_id": "again"}) is not None


def test_an_idle_collections_pass_should_save_its_position_so_it_keeps_up_with_the_change_log(harness: Harness):
    harness.source.database["quiet"].insert_one({"_id": 0})
    services = harness.services(scoped_config(harness))
    run_tick(services)
    first = services.checkpoints.read("shop/quiet")
    assert first is not None
    assert first.token_saved_at is not None
    (result,) = run_tick(services)  # nothing happened: one empty poll, and the pass ends
    assert (result.outcome, result.events) == ("idle", 0)
    again = services.checkpoints.read("shop/quiet")
    assert again is not None
    assert (again.token_saved_at or 0) > first.token_saved_at  # the post-batch token was saved, not left to age
    assert services.metrics is harness.metrics.replication
    assert harness.metrics.value("replicator_checkpoint_saves_total", stream="shop/quiet", kind="idle") >= 2


def test_one_collection_whose_pass_fails_should_not_stop_the_others(harness: Harness):
    source = harness.source.database
    for name in ("good1", "bad", "good2"):
        source[name].insert_one({"_id": 0})
    services = harness.services(scoped_config(harness))
    run_tick(services)
    # A damaged checkpoint (a copy position that is not a number): that collection is failed, the others go on.
    harness.state.checkpoints.update_one(
        {"_id": "shop/bad"}, {"$set": {"phase": "copying", "snapshot": {"copied": "not a number"}}}
    )
    for name in ("good1", "bad", "good2"):
        source[name].insert_one({"_id": 1})
    results = {r.stream: r for r in run_tick(services)}
    assert (results["shop/good1"].events, results["shop/good2"].events) == (1, 1)
    assert "shop/bad" not in results
    (bad,) = [cp for cp in services.checkpoints.units("shop") if cp.stream == "shop/bad"]
    assert bad.status == "failed"
    assert "cannot be read (ValueError" in (bad.last_error or {})["message"]
    with pytest.raises(ValueError, match="not a number"):  # asked for directly, its pass says what is wrong
        services.replicator.run_pass("shop/bad")


def test_a_cluster_scope_should_keep_database_names_behind_its_prefix(harness: Harness):
    other = harness.source.database.client[f"{harness.prefix}_more"]
    harness.source.insert_one({"_id": 1})
    other["things"].insert_one({"_id": 1})
    config = ReplicatorConfig.model_validate(
        {
            "checkpoints": {"connection_uri": harness.uri, "database": f"{harness.prefix}_rep"},
            "streams": [
                {
                    "name": "everything",
                    "source": {"connection_uri": harness.uri},
                    "estuary": {"connection_uri": harness.uri},
                    "estuary_database_prefix": "copy_",
                    "include": [f"{harness.prefix}_*.*"],
                    "exclude": [f"{harness.prefix}_rep.*"],
                    "initial_sync": True,
                    "poll_interval": 0.1,
                    "lease_duration": 10,
                }
            ],
        }
    )
    services = harness.services(config)
    (request,) = tick(services)
    assert request.collections == (f"{harness.prefix}_more.things", f"{harness.prefix}_src.orders")
    run_tick(services)
    client = harness.source.database.client
    assert client[f"copy_{harness.prefix}_src"]["orders"].find_one({"_id": 1}) == {"_id": 1}
    assert client[f"copy_{harness.prefix}_more"]["things"].find_one({"_id": 1}) == {"_id": 1}
    (again,) = tick(services)  # the copies are never sources themselves
    assert again.collections == request.collections


def test_the_checkpoint_store_and_single_stream_estuaries_on_the_source_should_never_be_members(harness: Harness):
    database = harness.source.database
    database["orders"].insert_one({"_id": 1})
    database["mirror"].insert_one({"_id": 1})
    config = ReplicatorConfig.model_validate(
        {
            "checkpoints": {"connection_uri": harness.uri, "database": f"{harness.prefix}_src"},
            "streams": [
                {
                    "name": "shop",
                    "source": {"connection_uri": harness.uri, "database": f"{harness.prefix}_src"},
                    "estuary": {"connection_uri": harness.uri, "database": f"{harness.prefix}_dst"},
                },
                {
                    "name": "mirror",
                    "source": {"connection_uri": harness.uri, "database": "elsewhere", "collection": "x"},
                    "estuary": {
                        "connection_uri": harness.uri,
                        "database": f"{harness.prefix}_src",
                        "collection": "mirror",
                    },
                },
            ],
        }
    )
    services = harness.services(config)
    services.checkpoints.acquire("warm-up", "test", 1.0)  # creates the checkpoints collection in the source database
    survey = services.discovery.survey(config.stream("shop"))
    assert survey.members == ["orders"]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_run_members_should_keep_going_past_a_raising_collection_and_honour_the_budget(concurrency):
    config = ReplicatorConfig.model_validate(
        {
            "checkpoints": {"connection_uri": "mongodb://x", "database": "r"},
            "streams": [
                {
                    "name": "shop",
                    "source": {"connection_uri": "mongodb://x", "database": "s"},
                    "estuary": {"connection_uri": "mongodb://y", "database": "d"},
                    "collection_concurrency": concurrency,
                    "time_budget": 10,
                }
            ],
        }
    )
    clock = FakeClock()
    seen: list[tuple[str, float]] = []
    lock = threading.Lock()

    def run_pass(unit: str, *, stop: threading.Event, drain: bool, budget: float) -> PassResult:
        assert drain
        with lock:
            seen.append((unit, budget))
            if unit == "shop/b":
                raise RuntimeError("boom")
            clock.advance(4)  # each collection takes 4 s of a 10 s budget
        return PassResult(unit, "idle", events=1)

    results = run_members(
        run_pass, config.stream("shop"), ["a", "b", "c", "d", "e"], stop=threading.Event(), clock=clock
    )
    outcomes = {r.stream: r.outcome for r in results}
    assert outcomes["shop/b"] == "error"
    assert [r.stream for r in results] == [f"shop/{m}" for m in "abcde"]  # member order, whatever finished first
    assert "budget" in outcomes.values()  # the last ones found no time left, and say so
    assert all(budget <= 10 for _, budget in seen)
