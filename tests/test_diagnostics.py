"""test-auth end to end: real ManagedIdentityCredential -> local MI stub, real pymongo -> OIDC proxy -> nx-27017.

The proxy checks each token's signature, audience, tenant, expiry and principal like an Entra-enabled cluster,
so these tests show what a user sees for a good token and for each way it goes wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from localdev.standins.stack import CLIENT_ID, PRINCIPAL_ID, TENANT_ID, LocalStack
from shared.auth.mongo_client import ClientFactory
from shared.auth.scopes import DOCUMENTDB_RESOURCE
from shared.clock import SystemClock
from shared.config import ReplicatorConfig
from shared.diagnostics import AuthReport, run_test_auth
from tests.conftest import Metrics, stack_config


@pytest.fixture
def factory(metrics: Metrics) -> Iterator[ClientFactory]:
    made = ClientFactory(metrics=metrics.auth, client_options={"serverSelectionTimeoutMS": 3000})
    yield made
    made.close()


def check(data: dict, factory: ClientFactory) -> AuthReport:
    return run_test_auth(ReplicatorConfig.model_validate(data), factory, clock=SystemClock())


def test_test_auth_should_pass_and_show_claims_when_the_identity_is_registered(stack, factory, metrics):
    report = check(stack_config(stack), factory)
    assert report.ok, report.to_dict()
    checkpoints, _, estuary = report.endpoints
    assert [e.name for e in report.endpoints] == [
        "checkpoints",
        "streams[0] (orders).source",
        "streams[0] (orders).estuary",
    ]
    assert checkpoints.token is not None
    assert checkpoints.token.audience == DOCUMENTDB_RESOURCE
    assert checkpoints.token.tenant_id == TENANT_ID
    assert checkpoints.token.principal_id == PRINCIPAL_ID
    assert checkpoints.token.identity == CLIENT_ID
    assert "managed identity (user-assigned" in checkpoints.token.credential
    assert 3500 < (checkpoints.token.expires_in_s or 0) <= 3600
    assert estuary.token is None
    assert estuary.ping.ok
    assert stack.stub.request_count == 1  # two Entra endpoints, one identity: one token request
    assert metrics.value("replicator_mongo_token_cache_hits_total") >= 1


def test_test_auth_should_name_the_principal_to_register_when_the_cluster_does_not_know_it(
    tmp_path, monkeypatch, factory
):
    with LocalStack(tmp_path / "s", allowed_principals=["00000000-0000-4000-8000-000000000000"]) as stack:
        for k, v in stack.environ().items():
            monkeypatch.setenv(k, v)
        report = check(stack_config(stack), factory)
        assert next(e.reason for e in stack.proxy.auth_events if not e.ok) == "principal not registered"
    source = report.endpoints[1]
    assert not report.ok
    assert source.token is not None
    assert source.token.acquired
    assert source.ping.error == "the server refused the Entra token (AuthenticationFailed)"
    assert PRINCIPAL_ID in (source.ping.hint or "")
    assert "MicrosoftEntraID" in (source.ping.hint or "")


def test_test_auth_should_point_at_the_scope_when_the_token_is_for_another_audience(stack, factory):
    data = stack_config(stack)
    wrong = "api://some-other-application/.default"
    for endpoint in (data["checkpoints"], data["streams"][0]["source"]):
        endpoint["scopes"] = [wrong]
    report = check(data, factory)
    source = report.endpoints[1]
    assert source.token is not None
    assert source.token.audience == "api://some-other-application"
    assert not source.ping.ok
    assert wrong in (source.ping.hint or "")
    assert "audience" in [e.reason for e in stack.proxy.auth_events if not e.ok]


def test_test_auth_should_flag_an_expired_token_before_the_server_refuses_it(stack, factory):
    stack.stub.token_lifetime = -120
    report = check(stack_config(stack), factory)
    source = report.endpoints[1]
    assert source.token is not None
    assert "token is already expired (check the machine's clock)" in source.token.problems
    assert not source.ping.ok
    assert "expired" in [e.reason for e in stack.proxy.auth_events if not e.ok]


def test_test_auth_should_explain_an_unknown_client_id_without_retrying_it(stack, factory):
    data = stack_config(stack)
    data["streams"][0]["source"]["client_id"] = "0f0f0f0f-0000-4000-8000-000000000000"
    report = check(data, factory)
    source = report.endpoints[1]
    assert source.token is not None
    assert not source.token.acquired
    assert "refused the token request (HTTP 400): No User Assigned or Delegated Managed Identity found" in (
        source.token.error or ""
    )
    assert "0f0f0f0f-0000-4000-8000-000000000000" in (source.token.hint or "")
    assert source.ping.skipped
    assert [r.status for r in stack.stub.requests if r.client_id != CLIENT_ID] == [400]  # permanent: no retry


def test_test_auth_should_report_an_unreachable_cluster_without_its_password(stack, factory):
    data = stack_config(stack)
    data["streams"][0]["estuary"]["connection_uri"] = "mongodb://admin:Sup3rS3cret@127.0.0.1:1/?directConnection=true"
    report = check(data, factory)
    estuary = report.endpoints[2]
    assert estuary.ping.error == "could not reach 127.0.0.1"
    assert "firewall" in (estuary.ping.hint or "")
    text = json.dumps(report.to_dict())
    assert "Sup3rS3cret" not in text


def test_test_auth_report_should_never_contain_a_token(stack, factory):
    report = check(stack_config(stack), factory)
    text = json.dumps(report.to_dict())
    assert stack.stub.issued_tokens
    assert not any(token in text for token in stack.stub.issued_tokens)
    assert "eyJ" not in text


def test_forced_reauthentication_should_fetch_a_fresh_token_and_lose_nothing(stack, factory):
    config = ReplicatorConfig.model_validate(stack_config(stack))
    orders = factory.client(config.streams[0].source)["shop"]["orders"]
    orders.insert_many([{"_id": f"o{i}", "n": i} for i in range(10)])
    first_token = stack.stub.issued_tokens[-1]
    stack.proxy.inject_reauth(1)
    orders.insert_one({"_id": "o10", "n": 10})
    assert stack.proxy.reauth_sent == 1
    assert stack.stub.request_count == 2  # the rejected token was not handed back: MSAL's cache was bypassed
    assert stack.stub.issued_tokens[-1] != first_token
    assert sorted(d["n"] for d in orders.find()) == list(range(11))


def test_a_token_expiring_mid_connection_should_be_replaced_without_an_error(tmp_path, monkeypatch, factory):
    offset = [0.0]
    with LocalStack(tmp_path / "s", proxy_clock=lambda: time.time() + offset[0]) as stack:
        for k, v in stack.environ().items():
            monkeypatch.setenv(k, v)
        stack.stub.token_lifetime = 400  # our provider refreshes within 300 s of expiry, i.e. after 100 s
        config = ReplicatorConfig.model_validate(stack_config(stack))
        orders = factory.client(config.streams[0].source)["shop"]["orders"]
        orders.insert_one({"_id": "before"})
        offset[0] = 500.0  # the server now sees the token as expired: 391 on the next command
        stack.stub.token_lifetime = 3600
        orders.insert_one({"_id": "after"})
        assert stack.proxy.reauth_sent == 1
        assert sorted(d["_id"] for d in orders.find()) == ["after", "before"]
