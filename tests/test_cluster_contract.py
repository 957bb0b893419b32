"""What the replicator relies on from a cluster, checked through the shared client factory.

Runs on a local nx-27017 by default. Set ``REPLICATOR_TEST_MONGODB_URI`` (and, for Entra,
``REPLICATOR_TEST_AUTH_METHOD=entra``, ``REPLICATOR_TEST_TENANT_ID``, optionally ``REPLICATOR_TEST_CLIENT_ID``)
to run the same tests against a real MongoDB or Azure DocumentDB cluster; they use the database
``REPLICATOR_TEST_DATABASE`` (default ``replicator_test``) and drop what they create.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo.collection import Collection

from localdev.standins.nx import NxServer
from shared.auth.mongo_client import ClientFactory
from shared.clock import SystemClock
from shared.config import MongoConfig, ReplicatorConfig
from shared.diagnostics import run_test_auth

LIVE_URI = os.environ.get("REPLICATOR_TEST_MONGODB_URI")


def live_block() -> dict[str, Any]:
    block: dict[str, Any] = {
        "connection_uri": LIVE_URI,
        "database": os.environ.get("REPLICATOR_TEST_DATABASE", "replicator_test"),
        "auth_method": os.environ.get("REPLICATOR_TEST_AUTH_METHOD", "connection_string"),
    }
    for name in ("tenant_id", "client_id"):
        if value := os.environ.get(f"REPLICATOR_TEST_{name.upper()}"):
            block[name] = value
    return block


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A config block for the cluster under test: the live one when given, else a fresh nx-27017."""
    if LIVE_URI:
        yield live_block()
        return
    with NxServer(Path(tmp_path_factory.mktemp("nx"))) as server:
        yield {"connection_uri": server.uri, "database": "replicator_test"}


@pytest.fixture
def factory() -> Iterator[ClientFactory]:
    made = ClientFactory(client_options={"serverSelectionTimeoutMS": 10_000})
    yield made
    made.close()


@pytest.fixture
def collection(cluster: dict[str, Any], factory: ClientFactory) -> Iterator[Collection[dict[str, Any]]]:
    config = MongoConfig.model_validate({**cluster, "collection": f"contract_{uuid.uuid4().hex[:8]}"})
    coll = factory.client(config)[config.database or ""][config.collection or ""]
    yield coll
    coll.drop()


def test_test_auth_should_pass_against_the_cluster(cluster, factory):
    config = ReplicatorConfig.model_validate(
        {
            "checkpoints": cluster,
            "streams": [
                {
                    "name": "contract",
                    "source": {**cluster, "collection": "a"},
                    "estuary": {**cluster, "collection": "b"},
                }
            ],
        }
    )
    report = run_test_auth(config, factory, clock=SystemClock())
    assert report.ok, report.to_dict()


def test_writes_should_be_acknowledged_and_read_back_by_id(collection):
    collection.insert_many([{"_id": f"k{i}", "v": i} for i in range(5)])
    collection.replace_one({"_id": "k1"}, {"_id": "k1", "v": 10}, upsert=True)
    collection.delete_one({"_id": "k2"})
    assert {d["_id"]: d["v"] for d in collection.find()} == {"k0": 0, "k1": 10, "k3": 3, "k4": 4}


def test_change_stream_should_report_inserts_updates_and_deletes_in_order(collection):
    collection.insert_one({"_id": "seed"})
    with collection.watch(full_document="updateLookup") as stream:
        collection.insert_one({"_id": "a", "v": 1})
        collection.update_one({"_id": "a"}, {"$set": {"v": 2}})
        collection.delete_one({"_id": "a"})
        events = [stream.next() for _ in range(3)]
    assert [(e["operationType"], e["documentKey"]["_id"]) for e in events] == [
        ("insert", "a"),
        ("update", "a"),
        ("delete", "a"),
    ]
    assert events[1]["fullDocument"] == {"_id": "a", "v": 2}
    assert all("_data" in e["_id"] for e in events)  # a resume token the replicator can checkpoint
