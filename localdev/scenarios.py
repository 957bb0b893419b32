"""The quickstart's seven validation scenarios (feature list T032), in the order ``localdev.quickstart`` runs them.

Each takes the running stand-ins (``Stand``) and returns its evidence, the text printed after ``PASS``, or raises
``CheckFailedError`` naming the check that did not hold. ``SCENARIOS`` pairs each with the claim it proves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo.auth_oidc import OIDCCallbackContext

from localdev.scenario_support import Stand, check, environment, orders, replicate_while, wait_for
from localdev.standins.stack import PRINCIPAL_ID, LocalStack
from shared.auth.mongo_client import ClientFactory
from shared.auth.oidc import EntraOIDCCallback
from shared.auth.scopes import DOCUMENTDB_SCOPE
from shared.config import MongoConfig
from shared.config_loader import load_config

ROOT = Path(__file__).resolve().parent.parent
CONNECTION_STRING_EXAMPLE = ROOT / "examples" / "configs" / "azure" / "connection-string.yaml"
NOSQL_SCOPE = "https://cosmos.azure.com/.default"  # the Cosmos DB for NoSQL audience: wrong for a MongoDB cluster
UNREGISTERED = "00000000-0000-4000-8000-0000000000ff"  # the only principal the second cluster knows
FAST = {"poll_interval": "100ms", "idle_timeout": "1s", "time_budget": "60s", "lease_duration": "10s"}


def connection_strings_unchanged(s: Stand) -> str:
    settings = {
        "SOURCE_MONGODB_URI": s.stack.nx.uri,
        "ESTUARY_MONGODB_URI": s.sink.uri,
        "CHECKPOINTS_MONGODB_URI": s.sink.uri,
    }
    example = str(CONNECTION_STRING_EXAMPLE)
    tokens_before = s.stack.stub.request_count
    with environment(settings):
        validate = s.cli("validate", "--config", example)
        check(validate.code == 0 and "0 using Entra ID" in validate.out, f"validate: {validate.text}")
        test_auth = s.cli("test-auth", "--config", example)
        check(test_auth.code == 0 and "auth   connection string" in test_auth.out, f"test-auth: {test_auth.text}")
        config = load_config(example)
    source, estuary = s.direct(s.stack.nx.uri, "shop", "orders"), s.direct(s.sink.uri, "shop", "orders")
    events = replicate_while(config, "orders", source, estuary, lambda: orders(source, "cs", 20))
    check(s.stack.stub.request_count == tokens_before, "a connection-string configuration asked for a token")
    return (
        f"examples/configs/azure/{CONNECTION_STRING_EXAMPLE.name} as shipped: validate and test-auth exit 0, "
        f"{events} of {events} changes replicated, no token requested"
    )


def entra_test_auth(s: Stand) -> str:
    path = s.config_file("entra.yaml", s.entra_config("invoices"))
    validate = s.cli("validate", "--config", str(path))
    check(validate.code == 0 and "3 using Entra ID" in validate.out, f"validate: {validate.text}")
    before = s.stack.stub.request_count
    test_auth = s.cli("test-auth", "--config", str(path))
    check(test_auth.code == 0 and "all endpoints OK" in test_auth.out, f"test-auth: {test_auth.text}")
    check(f"principal (object id) {PRINCIPAL_ID}" in test_auth.out, "test-auth did not show the principal id")
    requests = s.stack.stub.request_count - before
    check(requests == 1, f"{requests} token requests for one identity")
    return f"3 endpoints OK with 1 token request; principal (object id) {PRINCIPAL_ID} shown"


def wrong_scope_refused(s: Stand) -> str:
    data = s.entra_config("invoices")
    data["defaults"]["scopes"] = [NOSQL_SCOPE]
    path = s.config_file("wrong-scope.yaml", data)
    before = s.stack.stub.request_count
    validate = s.cli("validate", "--config", str(path))
    check(validate.code == 2, f"validate exited {validate.code}, not 2: {validate.text}")
    check(DOCUMENTDB_SCOPE in validate.err and "Cosmos DB for NoSQL" in validate.err, f"message: {validate.text}")
    check(s.stack.stub.request_count == before, "validation asked for a token")
    return f"{NOSQL_SCOPE} refused with exit 2, naming {DOCUMENTDB_SCOPE}; no token requested"


def unregistered_principal_explained(s: Stand) -> str:
    # A second "cluster" that knows another principal only: our identity gets a token, the server refuses it.
    with LocalStack(s.work_dir / "unregistered", allowed_principals=[UNREGISTERED]) as other:
        data = {
            "checkpoints": other.entra_endpoint("replicator"),
            "streams": [
                {
                    "name": "orders",
                    "source": other.entra_endpoint("shop", "orders"),
                    "estuary": other.plain_endpoint("replica", "orders"),
                }
            ],
        }
        path = s.config_file("unregistered.yaml", data)
        with environment(other.environ()):
            run = s.cli("test-auth", "--config", str(path), "--timeout", "5")
    check(run.code == 1, f"test-auth exited {run.code}, not 1: {run.text}")
    source = run.out.split("\n\n")[1]  # one block per endpoint: checkpoints, source, estuary
    check("the server refused the Entra token (AuthenticationFailed)" in source, f"source: {source}")
    check(f"Tip: register principal (object id) {PRINCIPAL_ID}" in source, f"no registration hint: {source}")
    check("MicrosoftEntraID" in source, f"no hint about allowedModes: {source}")
    return f"exit 1, 'the server refused the Entra token', Tip: register principal (object id) {PRINCIPAL_ID} ..."


def reauthentication_loses_nothing(s: Stand) -> str:
    config = load_config(s.config_file("reauth.yaml", s.entra_config("reauth", **FAST)))
    source = s.direct(s.stack.nx.uri, "shop", "reauth")
    estuary = s.direct(s.stack.nx.uri, "replica", "reauth")
    proxy, stub = s.stack.proxy, s.stack.stub
    before: dict[str, Any] = {}

    def write() -> int:
        first = orders(source, "a", 30)
        wait_for(lambda: estuary.count_documents({}) == source.count_documents({}), "the first writes arrived")
        before.update(reauth=proxy.reauth_sent, requests=stub.request_count, token=stub.issued_tokens[-1])
        proxy.inject_reauth(1, commands={"getMore"})  # the server demands a new token on the change stream
        return first + orders(source, "b", 30)

    events = replicate_while(config, "reauth", source, estuary, write)
    check(proxy.reauth_sent - before["reauth"] == 1, "the 391 was not sent")
    check(stub.request_count - before["requests"] == 1, "no fresh token was requested after the 391")
    check(stub.issued_tokens[-1] != before["token"], "the refused token was handed back")
    return f"391 on a change-stream getMore: 1 new token, not the refused one; {events} of {events} changes replicated"


def singleflight(s: Stand) -> str:
    callers = 100
    factory = ClientFactory()
    try:
        provider = factory.token_provider(MongoConfig.model_validate(s.stack.entra_endpoint("replicator")))
        context = OIDCCallbackContext(timeout_seconds=60, version=1, username="")
        barrier, tokens, errors = threading.Barrier(callers), [], []

        def caller() -> None:
            callback = EntraOIDCCallback(provider, endpoint="quickstart")  # one per MongoClient, as pymongo has it
            try:
                barrier.wait(10)
                tokens.append(callback.fetch(context).access_token)
            except Exception as exc:  # noqa: BLE001 (counted and reported)
                errors.append(exc)

        before = s.stack.stub.request_count
        threads = [threading.Thread(target=caller) for _ in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        requests = s.stack.stub.request_count - before
    finally:
        factory.close()
    check(not errors and len(tokens) == callers, f"{len(errors)} callers failed: {errors[:1]}")
    check(requests == 1, f"{requests} identity-endpoint requests for {callers} concurrent callers")
    check(len(set(tokens)) == 1, "the callers got different tokens")
    return f"{callers} OIDC callbacks at once: {requests} request to the identity endpoint, all got the same token"


def refresh_before_expiry(s: Stand) -> str:
    stub, proxy, lifetime = s.stack.stub, s.stack.proxy, 3.0
    stub.token_lifetime = lifetime
    try:
        # (a) The provider renews a token once less than half its lifetime is left (the buffer, 300 s by default,
        # is capped at half the lifetime of short tokens), while the old token is still valid.
        factory = ClientFactory()
        try:
            provider = factory.token_provider(MongoConfig.model_validate(s.stack.entra_endpoint("replicator")))
            first = provider.get_token()
            time.sleep((first.expires_on - time.time()) / 2 + 0.1)  # just past half the token's actual lifetime
            renewed = provider.get_token()
            renewed_at = time.time()
        finally:
            factory.close()
        check(renewed.token != first.token, "the provider handed out a token past its refresh point")
        check(renewed_at < first.expires_on, "the token was renewed only after it had expired")
        # (b) Replication across several token lifetimes: the server's re-authentication requests are answered
        # with fresh tokens, and the stream never sees an error.
        config = load_config(s.config_file("refresh.yaml", s.entra_config("refresh", **FAST)))
        source = s.direct(s.stack.nx.uri, "shop", "refresh")
        estuary = s.direct(s.stack.nx.uri, "replica", "refresh")
        before = (stub.request_count, proxy.reauth_sent, len(proxy.auth_events))

        def write() -> int:
            changes, until = 0, time.monotonic() + 3 * lifetime
            while time.monotonic() < until:
                source.insert_one({"_id": f"r{changes:04}", "at": time.time()})
                changes += 1
                time.sleep(0.05)
            return changes

        events = replicate_while(config, "refresh", source, estuary, write)
        tokens, reauths = stub.request_count - before[0], proxy.reauth_sent - before[1]
        expired = sum(e.reason == "expired" for e in proxy.auth_events[before[2] :])
        check(tokens >= 2, f"only {tokens} token(s) in {3 * lifetime:.0f} s of {lifetime:.0f}-second tokens")
        check(expired == 0, f"the server was offered an expired token {expired} time(s)")
    finally:
        stub.token_lifetime = 3600.0
    return (
        f"a {lifetime:.0f} s token renewed {first.expires_on - renewed_at:.1f} s before it expired; {events} changes "
        f"over {3 * lifetime:.0f} s with {tokens} tokens ({reauths} re-authentications asked by the server), no error, "
        "no expired token offered"
    )


@dataclass(frozen=True)
class Scenario:
    claim: str  # what passing proves
    run: Callable[[Stand], str]  # returns the evidence; raises CheckFailedError


SCENARIOS = (
    Scenario(
        "connection-string configurations work unchanged (backward compatibility, T031)", connection_strings_unchanged
    ),
    Scenario("an Entra ID configuration validates and test-auth passes with the managed identity", entra_test_auth),
    Scenario("a wrong scope is refused by validation, naming the scope DocumentDB expects", wrong_scope_refused),
    Scenario(
        "test-auth explains an unregistered principal: its id and how to register it", unregistered_principal_explained
    ),
    Scenario(
        "a forced re-authentication (391) mid-stream fetches a fresh token and loses nothing",
        reauthentication_loses_nothing,
    ),
    Scenario("100 concurrent token requests cause one identity-endpoint request", singleflight),
    Scenario("short-lived tokens are refreshed before they expire, without errors", refresh_before_expiry),
)
