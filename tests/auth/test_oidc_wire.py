"""MONGODB-OIDC at the wire level with real pymongo against MongoDB's own mock server (mockupdb).

These pin the contract between pymongo and our callback/provider: what ``saslStart`` carries, and that a
server refusal (391 on a command or a change-stream getMore, 18 during authentication) leads to a *new*
token, never the rejected one.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bson
import pytest
from bson import Timestamp
from mockupdb import CommandBase, MockupDB, OpMsg, going
from pymongo.errors import OperationFailure

from shared.auth.mongo_client import ClientFactory
from shared.config import MongoConfig
from tests.conftest import TENANT, FakeClock, FakeTokenSource, Metrics

REAUTHENTICATION_REQUIRED = 391
AUTHENTICATION_FAILED = 18


@pytest.fixture
def server() -> Iterator[MockupDB]:
    mock = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    mock.run()
    yield mock
    mock.stop()


@pytest.fixture
def wired(server: MockupDB, clock: FakeClock, metrics: Metrics) -> Iterator[tuple[Any, FakeTokenSource]]:
    source = FakeTokenSource(clock)
    factory = ClientFactory(
        clock=clock,
        metrics=metrics.auth,
        environ={},
        source_factory=lambda **_: source,
        client_options={"directConnection": True, "serverSelectionTimeoutMS": 5000},
    )
    config = MongoConfig(
        connection_uri=server.uri, auth_method="entra", tenant_id=TENANT, database="shop", collection="orders"
    )
    yield factory.client(config), source
    factory.close()


def jwt_of(request: Any) -> str:
    assert request["mechanism"] == "MONGODB-OIDC"
    assert request.doc["$db"] == "$external"
    return str(bson.decode(request["payload"])["jwt"])


def accept_sasl(server: MockupDB) -> str:
    request = server.receives(OpMsg("saslStart"))
    token = jwt_of(request)
    request.ok(conversationId=1, done=True, payload=b"")
    return token


def test_sasl_start_should_carry_the_providers_token(server, wired):
    client, source = wired
    with going(client.admin.command, "ping") as result:
        assert accept_sasl(server) == "token-1"
        server.receives(OpMsg("ping")).ok()
    assert result() == {"ok": 1}
    assert source.calls == [False]


def test_speculative_authentication_should_carry_the_providers_token(server, wired):
    client, source = wired
    seen: list[str] = []

    def hello(request: Any) -> Any:
        speculative = request.doc.get("speculativeAuthenticate")
        if not speculative:
            return request.ok(isWritablePrimary=True, maxWireVersion=21, minWireVersion=0)
        seen.append(str(bson.decode(speculative["payload"])["jwt"]))
        return request.ok(
            isWritablePrimary=True,
            maxWireVersion=21,
            minWireVersion=0,
            speculativeAuthenticate={"conversationId": 1, "done": True, "payload": b""},
        )

    server.autoresponds(CommandBase("ismaster"), hello)  # matches hello and the legacy isMaster handshake
    with going(client.shop.orders.find_one) as result:
        assert accept_sasl(server) == "token-1"  # pymongo speculates only once it holds a token
        server.receives(OpMsg("find", "orders")).hangup()  # a retryable read: pymongo retries on a new connection
        server.receives(OpMsg("find", "orders")).ok(cursor={"id": 0, "ns": "shop.orders", "firstBatch": [{"_id": 1}]})
    assert result() == {"_id": 1}
    assert seen == ["token-1"]
    assert source.calls == [False]


def test_reauthentication_required_on_a_command_should_lead_to_a_fresh_token_and_a_retry(server, wired):
    client, source = wired
    with going(client.admin.command, "ping") as result:
        assert accept_sasl(server) == "token-1"
        server.receives(OpMsg("ping")).command_err(code=REAUTHENTICATION_REQUIRED, errmsg="token expired")
        assert accept_sasl(server) == "token-2"
        server.receives(OpMsg("ping")).ok()
    assert result() == {"ok": 1}
    assert source.calls == [False, True]  # the second fetch bypassed the credential's own cache


def test_reauthentication_required_on_a_change_stream_get_more_should_resume_with_a_fresh_token(server, wired):
    client, source = wired
    collection = client.shop.orders

    def first_event() -> Any:
        with collection.watch() as stream:
            return stream.next()

    event = {
        "_id": {"_data": "82AA"},
        "operationType": "insert",
        "documentKey": {"_id": "a"},
        "fullDocument": {"_id": "a"},
    }
    with going(first_event) as result:
        assert accept_sasl(server) == "token-1"
        server.receives(OpMsg("aggregate", "orders")).ok(
            cursor={"id": 42, "ns": "shop.orders", "firstBatch": []}, operationTime=Timestamp(1, 1)
        )
        server.receives(OpMsg("getMore", 42)).command_err(code=REAUTHENTICATION_REQUIRED, errmsg="token expired")
        assert accept_sasl(server) == "token-2"
        server.receives(OpMsg("getMore", 42)).ok(cursor={"id": 42, "ns": "shop.orders", "nextBatch": [event]})
        server.receives(OpMsg("killCursors", "orders")).ok(cursorsKilled=[42])
    assert result()["documentKey"] == {"_id": "a"}
    assert source.calls == [False, True]


def test_authentication_failed_with_a_cached_token_should_lead_to_a_new_token_not_the_rejected_one(server, wired):
    client, source = wired
    with going(client.shop.orders.find_one) as first:
        assert accept_sasl(server) == "token-1"
        server.receives(OpMsg("find", "orders")).hangup()  # the retry must authenticate a new connection
        request = server.receives(OpMsg("saslStart"))
        assert jwt_of(request) == "token-1"  # pymongo first tries the token it cached
        request.command_err(code=AUTHENTICATION_FAILED, errmsg="Authentication failed.")
        assert accept_sasl(server) == "token-2"
        server.receives(OpMsg("find", "orders")).ok(cursor={"id": 0, "ns": "shop.orders", "firstBatch": []})
    assert first() is None
    assert source.calls == [False, True]


def test_authentication_failed_on_a_fresh_token_should_surface_as_an_operation_failure(server, wired):
    client, source = wired
    with ThreadPoolExecutor(1) as pool:  # not mockupdb's going(): it re-raises errors without their code
        result = pool.submit(client.admin.command, "ping")
        server.receives(OpMsg("saslStart")).command_err(code=AUTHENTICATION_FAILED, errmsg="Authentication failed.")
        with pytest.raises(OperationFailure) as info:
            result.result(timeout=10)
    assert info.value.code == AUTHENTICATION_FAILED
    assert source.calls == [False]  # no cached token in pymongo: one refusal ends the attempt
