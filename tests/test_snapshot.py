"""The snapshot copier on its own, on nx-27017: batches in ``_id`` order, resuming, reconciling, refusals."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import bson
import pytest
from bson.raw_bson import RawBSONDocument
from mockupdb import MockupDB, OpMsg
from pymongo.collection import Collection

from shared.auth.mongo_client import ClientFactory
from shared.clock import SystemClock
from shared.config import MongoConfig, TransformConfig
from shared.dead_letters import DeadLetters
from shared.errors import TransientError
from shared.estuary import write_unordered
from shared.snapshot import CopyBatch, MixedIdTypesError, SnapshotCopier
from tests.conftest import Harness


def raw_collections(harness: Harness) -> tuple[Collection[RawBSONDocument], Collection[RawBSONDocument]]:
    """Source and estuary as a pass gets them: raw BSON through the client factory."""
    stream = harness.config().stream("orders")
    return harness.factory.collection(stream.source), harness.factory.collection(stream.estuary)


def copier_for(
    harness: Harness,
    batch_size: int = 10,
    *,
    estuary: Collection[Any] | None = None,
    transform: TransformConfig | None = None,
) -> SnapshotCopier:
    source, raw_estuary = raw_collections(harness)
    return SnapshotCopier(
        source,
        raw_estuary if estuary is None else estuary,
        DeadLetters(harness.state.dead_letters, clock=SystemClock()),
        write=partial(write_unordered, raw_estuary if estuary is None else estuary),
        stream="orders",
        transform=transform,
        batch_size=batch_size,
    )


def estuary_ids(harness: Harness) -> list[Any]:
    return sorted(doc["_id"] for doc in harness.estuary.find({}, {"_id": 1}))


def test_the_copy_should_go_in_id_order_in_batches_and_mark_the_last_one_done(harness):
    documents = [{"_id": f"p{i:03}", "v": i, "tags": ["a", str(i)]} for i in range(25)]
    harness.source.insert_many(list(reversed(documents)))  # inserted backwards: the copy still goes in _id order
    source, _ = raw_collections(harness)
    sizes = {doc["_id"]: len(doc.raw) for doc in source.find()}
    batches = list(copier_for(harness, batch_size=10).batches(None))
    assert [(b.copied, b.last_id, b.done) for b in batches] == [
        (10, "p009", False),
        (10, "p019", False),
        (5, "p024", True),
    ]
    assert [b.bytes for b in batches] == [
        sum(sizes[f"p{i:03}"] for i in range(10)),
        sum(sizes[f"p{i:03}"] for i in range(10, 20)),
        sum(sizes[f"p{i:03}"] for i in range(20, 25)),
    ]
    assert sorted(harness.estuary.find(), key=lambda d: d["_id"]) == documents


def test_a_source_that_fills_the_last_batch_exactly_should_end_with_an_empty_done_batch(harness):
    harness.source.insert_many([{"_id": f"p{i:03}"} for i in range(20)])
    batches = list(copier_for(harness, batch_size=10).batches(None))
    assert [(b.copied, b.last_id, b.done) for b in batches] == [
        (10, "p009", False),
        (10, "p019", False),
        (0, None, True),  # the copy learns it is done from an empty read
    ]
    assert harness.estuary.count_documents({}) == 20


def test_the_copy_should_resume_after_the_last_acknowledged_id(harness):
    harness.source.insert_many([{"_id": f"p{i:03}"} for i in range(25)])
    copier = copier_for(harness, batch_size=10)
    first_pass = copier.batches(None)
    first = next(first_pass)
    first_pass.close()  # the pass ran out of time after one batch
    assert first.last_id == "p009"
    harness.estuary.delete_many({})  # so the estuary shows what the resumed copy alone wrote
    resumed = list(copier.batches(first.last_id))
    assert sum(b.copied for b in resumed) == 15
    assert resumed[-1].done
    assert estuary_ids(harness) == [f"p{i:03}" for i in range(10, 25)]


@pytest.fixture
def with_extras(harness: Harness) -> Harness:
    """A source with every other id, and an estuary with documents the source lacks: before the first id, between
    ids of the first and of the second batch (of two), and after the last."""
    harness.source.insert_many([{"_id": f"s{i:02}", "v": i} for i in (1, 3, 5, 7, 9)])
    harness.estuary.insert_many([{"_id": f"s{i:02}", "stale": True} for i in (0, 2, 6, 10)])
    return harness


def test_reconcile_should_delete_what_the_source_lacks_batch_by_batch_and_past_the_end_when_done(with_extras):
    harness = with_extras
    copies = copier_for(harness, batch_size=2).batches(None)
    first = next(copies)
    assert (first.last_id, first.removed) == ("s03", 2)  # s00 and s02: up to the batch's last id
    assert estuary_ids(harness) == ["s01", "s03", "s06", "s10"]
    second = next(copies)
    assert (second.last_id, second.removed) == ("s07", 1)  # s06
    assert estuary_ids(harness) == ["s01", "s03", "s05", "s07", "s10"]
    last = next(copies)
    assert (last.last_id, last.done, last.removed) == ("s09", True, 1)  # s10, past the end
    assert harness.converged()


def test_without_reconcile_the_copy_should_leave_what_the_source_lacks(with_extras):
    harness = with_extras
    copier = copier_for(harness, batch_size=2)
    copier.reconcile = False
    assert [b.removed for b in copier.batches(None)] == [0, 0, 0]
    assert estuary_ids(harness) == [f"s{i:02}" for i in (0, 1, 2, 3, 5, 6, 7, 9, 10)]


def test_documents_the_estuary_has_should_be_replaced_by_byte_identical_copies(harness):
    harness.source.insert_many(
        [
            {"_id": "a", "z": 1, "a": {"y": [1, "x", {"k": None}], "b": True}, "m": 1.5},
            {"_id": "b", "nested": {"deep": {"deeper": ["s"]}}, "n": -3},
            {"_id": "c", "text": "ünïcödé"},
        ]
    )
    harness.estuary.insert_many([{"_id": "a", "old": True}, {"_id": "c", "old": True, "extra": [1, 2]}])
    (batch,) = copier_for(harness).batches(None)
    assert (batch.copied, batch.dead_lettered, batch.removed) == (3, 0, 0)
    source, estuary = raw_collections(harness)
    copies = {doc["_id"]: doc.raw for doc in estuary.find()}
    assert copies == {doc["_id"]: doc.raw for doc in source.find()}  # field order and types as they were
    assert harness.state.dead_letters.count_documents({}) == 0


def test_a_transform_should_shape_the_copies(harness):
    harness.source.insert_many([{"_id": "a", "v": 1, "secret": "s"}, {"_id": "b", "v": 2}])
    harness.estuary.insert_one({"_id": "a", "value": 0, "secret": "stale"})  # replaced, not merged
    list(copier_for(harness, transform=TransformConfig(rename={"v": "value"}, drop=("secret",))).batches(None))
    copies = sorted(harness.estuary.find(), key=lambda d: d["_id"])
    assert copies == [{"_id": "a", "value": 1}, {"_id": "b", "value": 2}]


def test_a_document_the_estuary_refuses_should_be_parked_as_a_snapshot_event_and_the_copy_should_go_on(harness):
    harness.estuary.create_index("email", unique=True)
    harness.source.insert_many(
        [
            {"_id": "a", "email": "x@y"},
            {"_id": "b", "email": "x@y"},  # refused: another document has this email
            {"_id": "c", "email": "z@y"},
            {"_id": "d", "email": "w@y"},
        ]
    )
    batches = list(copier_for(harness, batch_size=2).batches(None))
    assert [(b.copied, b.dead_lettered) for b in batches] == [(2, 1), (2, 0), (0, 0)]
    assert estuary_ids(harness) == ["a", "c", "d"]
    (parked,) = harness.state.dead_letters.find()
    assert parked["stream"] == "orders"
    assert parked["operation"] == "snapshot"
    assert bson.decode(parked["document_key"]) == {"_id": "b"}
    assert parked["error"]["code"] == 11000
    assert parked["attempts"] == 1
    event = bson.decode(parked["event"])
    assert event["operationType"] == "snapshot"
    assert event["fullDocument"] == {"_id": "b", "email": "x@y"}


@pytest.fixture
def throttling_estuary() -> Iterator[Collection[Any]]:
    """An estuary that refuses every insert with Cosmos DB's throttling code."""
    server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    server.autoresponds(
        OpMsg("insert", "orders"), n=0, writeErrors=[{"index": 0, "code": 16500, "errmsg": "Request rate is large"}]
    )
    server.autoresponds("endSessions")
    server.run()
    factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 5000, "retryWrites": False})
    yield factory.collection(
        MongoConfig(connection_uri=f"{server.uri}/?directConnection=true", database="shop", collection="orders")
    )
    factory.close()
    server.stop()


def test_a_throttled_estuary_should_fail_the_batch_as_transient_and_park_nothing(harness, throttling_estuary):
    harness.source.insert_many([{"_id": "a"}, {"_id": "b"}])
    copier = copier_for(harness, estuary=throttling_estuary)
    copier.reconcile = False
    with pytest.raises(TransientError, match="transient reason"):
        next(copier.batches(None))
    assert harness.state.dead_letters.count_documents({}) == 0


def test_check_id_types_should_refuse_a_source_mixing_strings_and_numbers(harness):
    harness.source.insert_many([{"_id": "text"}, {"_id": 42}])
    with pytest.raises(MixedIdTypesError, match="mix BSON types") as refused:
        copier_for(harness).check_id_types()
    assert "initial_sync" in (refused.value.hint or "")


def test_check_id_types_should_refuse_a_source_mixing_numbers_and_booleans(harness):
    harness.source.insert_many([{"_id": 1}, {"_id": 2}, {"_id": True}])  # BSON orders booleans after numbers
    with pytest.raises(MixedIdTypesError, match=r"mix BSON types \(bool, number\)"):
        copier_for(harness).check_id_types()


@pytest.mark.parametrize(
    "ids",
    [["a", "b", "c"], [1, 2.5, 30]],
    ids=["strings", "numbers-of-two-types"],
)
def test_check_id_types_should_accept_ids_of_one_bracket(harness, ids):
    harness.source.insert_many([{"_id": value} for value in ids])
    copier_for(harness).check_id_types()  # ints and doubles compare with each other: one range, nothing skipped


def test_check_id_types_should_accept_an_empty_source(harness):
    copier_for(harness).check_id_types()


def test_estimate_and_estuary_is_empty_should_describe_the_collections(harness):
    harness.source.insert_many([{"_id": f"p{i}"} for i in range(12)])
    copier = copier_for(harness, batch_size=5)
    assert copier.estimate() == 12
    assert copier.estuary_is_empty()
    batch: CopyBatch = next(copier.batches(None))
    assert batch.copied == 5
    assert not copier.estuary_is_empty()
