"""OIDCProxy end to end: real pymongo MONGODB-OIDC against the proxy in front of a real nx-27017."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.auth_oidc import OIDCCallback, OIDCCallbackContext, OIDCCallbackResult
from pymongo.collection import Collection
from pymongo.errors import OperationFailure
from pymongo.write_concern import WriteConcern

from localdev.standins.mi_stub import ManagedIdentityStub
from localdev.standins.nx import NxServer
from localdev.standins.oidc_proxy import AuthEvent, OIDCProxy

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0f2b4c1e-6a1d-4c55-9a57-3d1b8f0c2a11"
OBJECT_ID = "8d0a3d3b-5c59-4b4c-93b8-9a3c0d8e7f21"
AUDIENCE = "https://ossrdbms-aad.database.windows.net"


class FakeClock:
    """A clock the test moves by hand, shared by the token minter and the proxy."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class ListCallback(OIDCCallback):
    """Hands out the given tokens in order (the last one forever) and counts calls."""

    def __init__(self, *tokens: str) -> None:
        self._tokens = list(tokens)
        self.calls = 0

    def fetch(self, context: OIDCCallbackContext) -> OIDCCallbackResult:
        token = self._tokens[min(self.calls, len(self._tokens) - 1)]
        self.calls += 1
        return OIDCCallbackResult(access_token=token)


@pytest.fixture(scope="module")
def nx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NxServer]:
    with NxServer(tmp_path_factory.mktemp("nx")) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stub(clock: FakeClock) -> ManagedIdentityStub:
    """Only mints tokens here; the HTTP side is tested in test_mi_stub."""
    return ManagedIdentityStub(tenant_id=TENANT, identities={CLIENT_ID: OBJECT_ID}, clock=clock)


@pytest.fixture
def proxy(nx: NxServer, stub: ManagedIdentityStub, clock: FakeClock) -> Iterator[OIDCProxy]:
    with OIDCProxy(
        upstream=(nx.host, nx.port),
        public_key_pem=stub.public_key_pem,
        audience=AUDIENCE,
        tenant_id=TENANT,
        allowed_principals={OBJECT_ID},
        clock=clock,
    ) as running:
        yield running


@pytest.fixture
def collection_name() -> str:
    """The nx server is shared by the module, so every test writes to its own collection."""
    return f"c_{uuid.uuid4().hex[:12]}"


def _client(uri: str, **options: Any) -> MongoClient[dict[str, Any]]:
    return MongoClient(uri, serverSelectionTimeoutMS=5000, **options)


def _oidc_client(proxy: OIDCProxy, callback: OIDCCallback, **options: Any) -> MongoClient[dict[str, Any]]:
    return _client(
        proxy.uri,
        authMechanism="MONGODB-OIDC",
        authMechanismProperties={"OIDC_CALLBACK": callback},
        retryWrites=False,
        **options,
    )


def _good_token(stub: ManagedIdentityStub, **overrides: Any) -> str:
    return stub.mint(resource=AUDIENCE, client_id=CLIENT_ID, **overrides)


def test_proxy_should_pass_commands_through_when_token_is_valid(
    proxy: OIDCProxy, stub: ManagedIdentityStub, collection_name: str
) -> None:
    callback = ListCallback(_good_token(stub))
    with _oidc_client(proxy, callback) as client:
        collection = client.db[collection_name]
        collection.insert_many([{"_id": "a", "n": 1}, {"_id": "b", "n": 2}])

        assert list(collection.find({}, sort=[("_id", 1)])) == [{"_id": "a", "n": 1}, {"_id": "b", "n": 2}]
    assert callback.calls == 1
    assert proxy.auth_events == [AuthEvent(ok=True, reason="ok", principal=OBJECT_ID)]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"lifetime": -60}, "expired"),
        ({"aud": "https://cosmos.azure.com"}, "audience"),
        ({"tid": "00000000-0000-0000-0000-000000000000"}, "tenant"),
        ({"oid": "99999999-9999-9999-9999-999999999999"}, "principal not registered"),
    ],
    ids=["expired", "wrong-audience", "wrong-tenant", "principal-not-allowed"],
)
def test_proxy_should_fail_authentication_when_token_is_rejected(
    proxy: OIDCProxy, stub: ManagedIdentityStub, collection_name: str, overrides: dict[str, Any], reason: str
) -> None:
    client = _oidc_client(proxy, ListCallback(_good_token(stub, **overrides)))
    with client, pytest.raises(OperationFailure) as failure:
        client.db[collection_name].find_one()

    assert failure.value.code == 18
    assert proxy.auth_events[-1].reason == reason
    assert not any(event.ok for event in proxy.auth_events)


def test_proxy_should_fail_authentication_when_token_is_signed_by_another_key(
    proxy: OIDCProxy, clock: FakeClock, collection_name: str
) -> None:
    impostor = ManagedIdentityStub(tenant_id=TENANT, identities={CLIENT_ID: OBJECT_ID}, clock=clock)
    client = _oidc_client(proxy, ListCallback(_good_token(impostor)))
    with client, pytest.raises(OperationFailure) as failure:
        client.db[collection_name].find_one()

    assert failure.value.code == 18
    assert proxy.auth_events == [AuthEvent(ok=False, reason="signature", principal=None)]


def test_proxy_should_refuse_commands_with_13_when_client_does_not_authenticate(
    proxy: OIDCProxy, collection_name: str
) -> None:
    with _client(proxy.uri) as client:
        assert client.admin.command("ping")["ok"] == 1  # like mongod, ping needs no authentication
        with pytest.raises(OperationFailure) as failure:
            client.db[collection_name].insert_one({"_id": "x"})

    assert failure.value.code == 13
    assert proxy.sasl_starts == 0


def test_proxy_should_refuse_other_mechanisms_when_client_uses_scram(proxy: OIDCProxy, collection_name: str) -> None:
    client = _client(proxy.uri, username="u", password="p")
    with client, pytest.raises(OperationFailure) as failure:
        client.db[collection_name].find_one()

    assert failure.value.code == 18
    assert proxy.auth_events == [AuthEvent(ok=False, reason="mechanism", principal=None)]


def test_pymongo_should_fetch_new_token_and_retry_when_proxy_injects_reauth(
    proxy: OIDCProxy, stub: ManagedIdentityStub, collection_name: str
) -> None:
    callback = ListCallback(_good_token(stub), _good_token(stub))
    with _oidc_client(proxy, callback) as client:
        collection = client.db[collection_name]
        collection.insert_one({"_id": "kept", "n": 1})
        calls_before = callback.calls

        proxy.inject_reauth(1)
        document = collection.find_one({"_id": "kept"})

    assert document == {"_id": "kept", "n": 1}
    assert callback.calls == calls_before + 1
    assert proxy.reauth_sent == 1
    assert [event.ok for event in proxy.auth_events] == [True, True]


def test_proxy_should_demand_reauth_when_token_expires_on_open_connection(
    proxy: OIDCProxy, stub: ManagedIdentityStub, clock: FakeClock, collection_name: str
) -> None:
    callback = ListCallback(_good_token(stub, lifetime=60), _good_token(stub, lifetime=3600))
    with _oidc_client(proxy, callback) as client:
        collection = client.db[collection_name]
        collection.insert_one({"_id": "before"})

        clock.now += 120
        collection.insert_one({"_id": "after"})

        assert collection.count_documents({}) == 2
    assert proxy.reauth_sent == 1
    assert callback.calls == 2


def test_proxy_should_answer_an_injected_error_for_the_named_command_only_as_often_as_asked(
    proxy: OIDCProxy, stub: ManagedIdentityStub, collection_name: str
) -> None:
    with _oidc_client(proxy, ListCallback(_good_token(stub))) as client:
        collection = client.db[collection_name]
        collection.insert_one({"_id": "a"})
        proxy.inject_error("aggregate", 286, "Resume of change stream was not possible")
        with pytest.raises(OperationFailure) as info:
            list(collection.aggregate([{"$match": {}}]))
        assert info.value.code == 286
        assert collection.find_one({"_id": "a"}) == {"_id": "a"}  # other commands pass
        assert list(collection.aggregate([{"$match": {}}])) == [{"_id": "a"}]  # once only


def test_proxy_should_demand_reauth_and_refuse_the_old_token_when_tokens_are_revoked(
    proxy: OIDCProxy, stub: ManagedIdentityStub, clock: FakeClock, collection_name: str
) -> None:
    old = _good_token(stub)
    clock.now += 10
    fresh = _good_token(stub)
    callback = ListCallback(old, old, fresh)
    with _oidc_client(proxy, callback, maxPoolSize=1) as client:
        collection = client.db[collection_name]
        collection.insert_one({"_id": "before"})

        proxy.revoke_tokens_issued_before(clock.now - 5)
        with pytest.raises(OperationFailure) as failure:  # 391, and the callback hands the revoked token again: 18
            collection.insert_one({"_id": "refused"})
        assert failure.value.code == 18
        # Still 391 (not 13) on the connection that failed to re-authenticate; the callback's next token is fresh.
        collection.insert_one({"_id": "after"})

        assert sorted(doc["_id"] for doc in collection.find()) == ["after", "before"]
    assert proxy.reauth_sent == 2
    assert [(event.ok, event.reason) for event in proxy.auth_events] == [(True, "ok"), (False, "revoked"), (True, "ok")]


def test_proxy_should_keep_tokens_issued_at_or_after_the_revocation_time(
    proxy: OIDCProxy, stub: ManagedIdentityStub, clock: FakeClock, collection_name: str
) -> None:
    proxy.revoke_tokens_issued_before(int(clock.now))
    callback = ListCallback(_good_token(stub))
    with _oidc_client(proxy, callback) as client:
        client.db[collection_name].insert_one({"_id": "kept"})
        assert client.db[collection_name].count_documents({}) == 1
    assert proxy.reauth_sent == 0
    assert callback.calls == 1


def _next_events(stream: Any, count: int, timeout: float = 10.0) -> list[tuple[str, str]]:
    """Read ``count`` change events; nx-27017 ignores maxAwaitTimeMS, so poll with try_next."""
    events: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        event = stream.try_next()
        if event is not None:
            events.append((event["operationType"], event["documentKey"]["_id"]))
    return events


def test_change_stream_should_continue_without_loss_when_getmore_needs_reauth(
    proxy: OIDCProxy, stub: ManagedIdentityStub, collection_name: str
) -> None:
    callback = ListCallback(_good_token(stub), _good_token(stub))
    with _oidc_client(proxy, callback) as client:
        collection: Collection[dict[str, Any]] = client.db[collection_name]
        with collection.watch() as stream:
            collection.insert_one({"_id": "a", "n": 1})
            first = _next_events(stream, 1)

            proxy.inject_reauth(1, commands={"getMore"})
            collection.insert_one({"_id": "b", "n": 1})
            collection.update_one({"_id": "a"}, {"$set": {"n": 2}})
            collection.delete_one({"_id": "b"})
            rest = _next_events(stream, 3)

    assert first + rest == [("insert", "a"), ("insert", "b"), ("update", "a"), ("delete", "b")]
    assert proxy.reauth_sent == 1
    assert callback.calls == 2


def test_proxy_should_drop_upstream_reply_when_client_sends_more_to_come(
    proxy: OIDCProxy, stub: ManagedIdentityStub, collection_name: str
) -> None:
    # One connection: a stray reply to the unacknowledged insert would answer the next command instead.
    with _oidc_client(proxy, ListCallback(_good_token(stub)), maxPoolSize=1) as client:
        collection = client.db[collection_name]
        collection.with_options(write_concern=WriteConcern(w=0)).insert_one({"_id": "fire-and-forget"})

        assert collection.find_one({"_id": "fire-and-forget"}) == {"_id": "fire-and-forget"}
        assert collection.count_documents({}) == 1


def test_proxy_should_authenticate_each_connection_when_client_offers_compression_and_speculative_auth(
    proxy: OIDCProxy, stub: ManagedIdentityStub, collection_name: str
) -> None:
    # A new connection of a client that already holds a token puts speculativeAuthenticate (and here compression)
    # into its handshake; the proxy strips both, so the connection must still authenticate with a saslStart.
    callback = ListCallback(_good_token(stub))
    with _oidc_client(proxy, callback, compressors="zlib", maxIdleTimeMS=10) as client:
        collection = client.db[collection_name]
        collection.insert_one({"_id": "x"})
        time.sleep(0.05)  # the pooled connection is now past maxIdleTimeMS: the next command opens a new one

        assert collection.count_documents({}) == 1
    assert callback.calls == 1
    assert proxy.auth_events == [AuthEvent(ok=True, reason="ok", principal=OBJECT_ID)] * 2


def test_proxy_should_close_listener_and_connections_when_stopped(proxy: OIDCProxy, stub: ManagedIdentityStub) -> None:
    with _oidc_client(proxy, ListCallback(_good_token(stub))) as client:
        client.admin.command("ping")
        proxy.stop()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=2)
    assert not [thread for thread in threading.enumerate() if thread.name == "oidc-proxy"]


def test_cli_should_enforce_oidc_until_sigterm(nx: NxServer, stub: ManagedIdentityStub, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(stub.public_key_pem)
    command = [sys.executable, "-m", "localdev.standins.oidc_proxy", "--upstream", f"{nx.host}:{nx.port}"]
    process = subprocess.Popen(
        [*command, "--audience", AUDIENCE, "--public-key-file", str(key_file), "--tenant", TENANT],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        uri = json.loads(process.stdout.readline())["uri"]
        callback = ListCallback(_good_token(stub))
        with _client(uri, authMechanism="MONGODB-OIDC", authMechanismProperties={"OIDC_CALLBACK": callback}) as client:
            assert client.db.cli_check.count_documents({}) == 0
        with _client(uri) as plain, pytest.raises(OperationFailure) as failure:
            plain.db.cli_check.find_one()
        assert failure.value.code == 13
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        process.stdout.close()  # type: ignore[union-attr]
