"""The estuary writer on its own: collapsing, skipping, transient versus per-document failures."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import bson
import pytest
from bson.raw_bson import RawBSONDocument
from mockupdb import MockupDB, OpMsg
from pymongo import MongoClient

from shared.clock import SystemClock
from shared.config import TransformConfig
from shared.dead_letters import DeadLetters
from shared.errors import TransientError
from shared.estuary import EstuaryWriter, write_unordered
from tests.conftest import Harness


def raw(doc: dict[str, Any]) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(doc))


def change(token: int, kind: str, _id: str, document: dict[str, Any] | None = None) -> RawBSONDocument:
    event: dict[str, Any] = {"_id": {"_data": f"t{token}"}, "operationType": kind, "documentKey": {"_id": _id}}
    if document is not None:
        event["fullDocument"] = {"_id": _id, **document}
    return raw(event)


def writer_for(harness: Harness, **kwargs: Any) -> EstuaryWriter:
    return EstuaryWriter(
        partial(write_unordered, harness.estuary),
        DeadLetters(harness.state.dead_letters, clock=SystemClock()),
        stream="orders",
        max_attempts=3,
        **kwargs,
    )


def test_events_on_one_id_should_collapse_to_the_last(harness):
    result = writer_for(harness).apply(
        [
            change(1, "insert", "a", {"v": 1}),
            change(2, "update", "a", {"v": 2}),
            change(3, "insert", "b", {"v": 1}),
            change(4, "delete", "b"),
            change(5, "update", "a", {"v": 3}),
        ]
    )
    assert result.collapsed == 3
    assert dict(result.applied) == {"update": 1, "delete": 1}
    assert list(harness.estuary.find()) == [{"_id": "a", "v": 3}]


def test_an_update_without_post_image_should_be_skipped_not_applied(harness):
    result = writer_for(harness).apply([change(1, "update", "gone")])
    assert result.skipped == 1
    assert harness.estuary.count_documents({}) == 0


def test_applying_a_batch_twice_should_leave_the_same_estuary(harness):
    batch = [change(1, "insert", "a", {"v": 1}), change(2, "insert", "b", {"v": 2}), change(3, "delete", "a")]
    writer = writer_for(harness)
    writer.apply(batch)
    first = list(harness.estuary.find())
    writer.apply(batch)
    assert list(harness.estuary.find()) == first == [{"_id": "b", "v": 2}]


def test_transform_should_apply_to_raw_documents(harness):
    writer = writer_for(harness, transform=TransformConfig(rename={"v": "value"}, drop=("pii",)))
    writer.apply([change(1, "insert", "a", {"v": 1, "pii": "x"})])
    assert harness.estuary.find_one() == {"_id": "a", "value": 1}


@pytest.fixture
def throttling_estuary() -> Iterator[MockupDB]:
    server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    server.run()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "reply",
    [
        {"n": 0, "nModified": 0, "writeErrors": [{"index": 0, "code": 16500, "errmsg": "Request rate is large"}]},
        {
            "n": 1,
            "nModified": 0,
            "upserted": [{"index": 0, "_id": "a"}],
            "writeConcernError": {"code": 64, "errmsg": "waiting for replication timed out"},
        },
    ],
    ids=["throttled", "write-concern"],
)
def test_transient_write_failures_should_fail_the_batch_and_park_nothing(harness, throttling_estuary, reply):
    throttling_estuary.autoresponds(OpMsg("update", "orders"), **reply)
    client: MongoClient[dict[str, Any]] = MongoClient(throttling_estuary.uri, directConnection=True, retryWrites=False)
    try:
        writer = EstuaryWriter(
            partial(write_unordered, client.db.orders),
            DeadLetters(harness.state.dead_letters, clock=SystemClock()),
            stream="orders",
            max_attempts=3,
        )
        with pytest.raises(TransientError):
            writer.apply([change(1, "insert", "a", {"v": 1})])
    finally:
        client.close()
    assert harness.state.dead_letters.count_documents({}) == 0
