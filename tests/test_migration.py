"""The migration guide's central claim (examples/configs/azure/MIGRATION.md), shown on the local stand-ins.

A stream's position lives in its checkpoint document, keyed by the stream's name, and is a change-stream
resume token: it does not depend on how the replicator authenticates. So switching source, estuary and
checkpoints from connection strings to ``auth_method: entra`` (and back, to roll back) keeps every stream
where it was: nothing replayed from the start, nothing skipped.

The same nx-27017 server is reached two ways: directly with a plain connection string
(``LocalStack.plain_endpoint``), and through the OIDC-enforcing proxy with managed-identity tokens
(``LocalStack.entra_endpoint``), the way one DocumentDB cluster accepts both native users and Entra ID users.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from localdev.standins.stack import PRINCIPAL_ID, LocalStack
from shared.auth.mongo_client import ClientFactory
from shared.config import ReplicatorConfig
from shared.services import CHECKPOINTS_COLLECTION, build_services
from tests.conftest import Metrics

STREAM = "orders"
TIMING = {"poll_interval": 0.1, "idle_timeout": 0.6, "time_budget": 30, "lease_duration": 10}


def stream_config(endpoint: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """One stream over the same databases and collections, every endpoint built by ``endpoint``."""
    return {
        "checkpoints": endpoint("replicator"),
        "streams": [
            {
                "name": STREAM,
                "source": endpoint("shop", "orders"),
                "estuary": endpoint("replica", "orders"),
                **TIMING,
            }
        ],
    }


def connection_string_config(stack: LocalStack) -> dict[str, Any]:
    """Before: every endpoint with a plain connection string (what existing deployments have)."""
    return stream_config(stack.plain_endpoint)


def entra_config(stack: LocalStack) -> dict[str, Any]:
    """After: every endpoint with ``auth_method: entra`` through the proxy."""
    return stream_config(stack.entra_endpoint)


class Deployment:
    """One configuration "deployed": its own clients and token providers, as a freshly started Function App."""

    def __init__(self, data: dict[str, Any], metrics: Metrics) -> None:
        self.config = ReplicatorConfig.model_validate(data)
        self.factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 5000})
        self.services = build_services(self.config, factory=self.factory, metrics=metrics.replication)

    def drain(self) -> int:
        """Passes until one reads nothing; the number of events read."""
        events = 0
        for _ in range(10):
            result = self.services.replicator.run_pass(STREAM)
            assert result.outcome == "idle", result
            events += result.events
            if result.events == 0:
                return events
        raise AssertionError("the stream did not go idle")

    def close(self) -> None:
        self.factory.close()


@pytest.fixture
def direct(stack: LocalStack) -> Iterator[dict[str, Any]]:
    """The server's databases without any proxy: the application's own view, and the checkpoint document."""
    factory = ClientFactory()
    client = factory.client(ReplicatorConfig.model_validate(connection_string_config(stack)).checkpoints)
    yield {
        "source": client.shop.orders,
        "estuary": client.replica.orders,
        "checkpoints": client.replicator[CHECKPOINTS_COLLECTION],
    }
    factory.close()


def write(collection: Any, prefix: str, n: int) -> int:
    """``n`` inserts, a third of them updated, a fifth deleted: the number of change events caused."""
    collection.insert_many([{"_id": f"{prefix}{i:03}", "n": i} for i in range(n)])
    updated = range(0, n, 3)
    for i in updated:
        collection.update_one({"_id": f"{prefix}{i:03}"}, {"$set": {"n": -i}})
    deleted = range(1, n, 5)
    for i in deleted:
        collection.delete_one({"_id": f"{prefix}{i:03}"})
    return n + len(updated) + len(deleted)


def converged(direct: dict[str, Any]) -> bool:
    return sorted(direct["source"].find(), key=str) == sorted(direct["estuary"].find(), key=str)


def test_switching_every_endpoint_to_entra_should_keep_the_streams_position(stack, direct, metrics):
    # 1. Running with connection strings: the stream starts, replicates, and saves its position.
    before = Deployment(connection_string_config(stack), metrics)
    try:
        assert before.drain() == 0  # the first pass saves where the stream starts
        first_writes = write(direct["source"], "a", 30)
        assert before.drain() == first_writes
    finally:
        before.close()
    assert converged(direct)
    saved = direct["checkpoints"].find_one({"_id": STREAM})
    assert saved is not None
    assert saved["counters"]["events"] == first_writes
    assert stack.proxy.auth_events == []  # so far nothing went through the Entra proxy
    assert stack.stub.request_count == 0

    # 2. The switch window: the application keeps writing while the new configuration is deployed.
    during_switch = write(direct["source"], "b", 20)

    # 3. The same stream, every endpoint now with auth_method: entra.
    after = Deployment(entra_config(stack), metrics)
    try:
        resumed_from = after.services.checkpoints.read(STREAM)
        assert resumed_from is not None
        assert resumed_from.resume_token == saved["resume_token"]  # the Entra-connected store sees the same token
        assert after.drain() == during_switch  # exactly the writes made since: nothing replayed, nothing skipped
        later = write(direct["source"], "c", 10)
        assert after.drain() == later
    finally:
        after.close()

    assert converged(direct)
    switched = direct["checkpoints"].find_one({"_id": STREAM})
    assert switched is not None
    assert direct["checkpoints"].count_documents({}) == 1  # still the one document, keyed by the stream's name
    assert switched["lease"]["epoch"] > saved["lease"]["epoch"]  # the fence carried on from where it was
    assert switched["resume_token"] != saved["resume_token"]  # and moved on from there
    assert switched["counters"]["events"] == first_writes + during_switch + later
    assert switched["status"] == "idle"
    assert not switched.get("gaps")  # no gap was recorded
    # ...and the passes really authenticated with Entra ID: the proxy accepted the identity's tokens.
    assert stack.proxy.auth_events
    assert all(e.ok and e.principal == PRINCIPAL_ID for e in stack.proxy.auth_events)
    assert stack.stub.request_count == 1  # one identity, one scope: one token for all three endpoints


def test_rolling_back_to_connection_strings_should_keep_the_position_too(stack, direct, metrics):
    entra = Deployment(entra_config(stack), metrics)
    try:
        assert entra.drain() == 0
        first = write(direct["source"], "a", 15)
        assert entra.drain() == first
    finally:
        entra.close()

    meanwhile = write(direct["source"], "b", 15)
    rolled_back = Deployment(connection_string_config(stack), metrics)
    try:
        assert rolled_back.drain() == meanwhile
    finally:
        rolled_back.close()

    assert converged(direct)
    checkpoint = direct["checkpoints"].find_one({"_id": STREAM})
    assert checkpoint is not None
    assert checkpoint["counters"]["events"] == first + meanwhile
    assert not checkpoint.get("gaps")
