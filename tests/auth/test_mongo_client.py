"""The one client factory: sharing, Microsoft's DocumentDB options, the OIDC wiring, the connection gauge."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from mockupdb import MockupDB

from shared.auth.mongo_client import ClientFactory, default_factory
from shared.config import MongoConfig
from tests.conftest import CLIENT_ID, TENANT, FakeClock, FakeTokenSource, Metrics

DOCUMENTDB = "mongodb://c1.mongocluster.cosmos.azure.com:10260/"


class CountingSources:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.created: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> FakeTokenSource:
        self.created.append(kwargs)
        return FakeTokenSource(self.clock)


@pytest.fixture
def sources(clock: FakeClock) -> CountingSources:
    return CountingSources(clock)


@pytest.fixture
def factory(clock: FakeClock, metrics: Metrics, sources: CountingSources) -> Iterator[ClientFactory]:
    made = ClientFactory(
        clock=clock, metrics=metrics.auth, environ={}, source_factory=sources, client_options={"connect": False}
    )
    yield made
    made.close()


def mongo(uri: str = DOCUMENTDB, **fields: Any) -> MongoConfig:
    return MongoConfig(**{"connection_uri": uri, "database": "shop", "collection": "orders", **fields})


def entra(uri: str = DOCUMENTDB, **fields: Any) -> MongoConfig:
    return mongo(uri, auth_method="entra", tenant_id=TENANT, **fields)


def test_factory_should_share_one_client_between_endpoints_on_the_same_cluster_and_identity(factory):
    assert factory.client(entra(database="a")) is factory.client(entra(database="b", collection="c"))


def test_factory_should_create_separate_clients_when_identity_or_auth_method_differs(factory):
    clients = {id(factory.client(c)) for c in (entra(), entra(client_id=CLIENT_ID), mongo())}
    assert len(clients) == 3


def test_factory_should_share_one_token_provider_per_identity_and_scope(factory, sources):
    first = factory.token_provider(entra())
    assert factory.token_provider(entra(uri="mongodb://other.mongocluster.cosmos.azure.com/")) is first
    assert factory.token_provider(entra(client_id=CLIENT_ID)) is not first
    assert [s["client_id"] for s in sources.created] == [None, CLIENT_ID]
    assert sources.created[0]["timeout"] == 30.0


def test_factory_should_apply_documentdb_recommended_options_when_the_uri_is_silent(factory):
    options = factory.client(mongo()).options
    assert options.retry_writes is False
    assert options.pool_options.max_idle_time_seconds == 120
    assert options.pool_options._ssl_context is not None  # tls on
    assert options.pool_options.metadata["application"]["name"] == "cosmos-mongo-replicator"


def test_factory_should_bound_socket_reads_so_a_dead_connection_cannot_hang_a_pass(factory):
    assert factory.client(mongo("mongodb://127.0.0.1:27017/")).options.pool_options.socket_timeout == 120


def test_factory_should_never_override_what_the_uri_says(factory):
    uri = f"{DOCUMENTDB}?retryWrites=true&maxIdleTimeMS=5000&appName=mine&socketTimeoutMS=7000"
    options = factory.client(mongo(uri)).options
    assert options.pool_options.socket_timeout == 7
    assert options.retry_writes is True
    assert options.pool_options.max_idle_time_seconds == 5
    assert options.pool_options.metadata["application"]["name"] == "mine"


def test_factory_should_leave_other_hosts_alone_when_they_are_not_documentdb(factory):
    options = factory.client(mongo("mongodb://127.0.0.1:27017/")).options
    assert options.retry_writes is True  # pymongo's default
    assert options.pool_options._ssl_context is None


def test_factory_should_wire_mongodb_oidc_with_our_callback_for_entra_endpoints(factory):
    credentials = factory.client(entra()).options.pool_options._credentials
    assert credentials.mechanism == "MONGODB-OIDC"
    assert type(credentials.mechanism_properties.callback).__name__ == "EntraOIDCCallback"
    assert factory.client(mongo()).options.pool_options._credentials is None


def test_factory_should_refuse_a_token_provider_for_connection_string_endpoints(factory):
    with pytest.raises(ValueError, match="only for auth_method 'entra'"):
        factory.token_provider(mongo())


def test_connection_gauge_should_follow_open_connections_by_auth_method(clock, metrics):
    server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    server.run()
    server.autoresponds("ping")
    factory = ClientFactory(clock=clock, metrics=metrics.auth, environ={}, client_options={"directConnection": True})
    try:
        factory.client(mongo(server.uri)).admin.command("ping")
        assert metrics.value("replicator_mongo_active_connections", auth_method="connection_string") == 1
    finally:
        factory.close()
        server.stop()
    assert metrics.value("replicator_mongo_active_connections", auth_method="connection_string") == 0


def test_default_factory_should_be_one_per_process():
    assert default_factory() is default_factory()
