"""Token sources against the local managed identity stub, through the real ManagedIdentityCredential.

azure-identity reports an unknown identity, a 5xx and a missing endpoint all as CredentialUnavailableError;
these tests pin how our sources tell them apart, and the MSAL behaviours the provider has to respect.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import pytest

from localdev.standins.mi_stub import ManagedIdentityStub
from shared.auth.credentials import DeveloperSource, ManagedIdentitySource, select_token_source
from shared.auth.scopes import DOCUMENTDB_SCOPE
from shared.auth.tokens import RetryPolicy, TokenProvider
from shared.clock import SystemClock
from shared.errors import AuthenticationRefusedError, CredentialUnavailableError, TokenServiceError
from tests.conftest import CLIENT_ID, PRINCIPAL, TENANT, Metrics


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagedIdentityStub]:
    with ManagedIdentityStub(tenant_id=TENANT, identities={CLIENT_ID: PRINCIPAL}) as started:
        for name, value in started.environ().items():
            monkeypatch.setenv(name, value)
        yield started


def source(client_id: str | None = CLIENT_ID, timeout: float = 5.0) -> ManagedIdentitySource:
    return ManagedIdentitySource(client_id=client_id, timeout=timeout, environ=os.environ)


def test_managed_identity_source_should_return_the_endpoints_token_and_expiry(stub):
    token = source().fetch(DOCUMENTDB_SCOPE, fresh=False)
    assert token.token == stub.issued_tokens[0]
    assert abs(token.expires_on - (time.time() + 3600)) < 5
    assert stub.requests[0].resource == "https://ossrdbms-aad.database.windows.net"
    assert stub.requests[0].client_id == CLIENT_ID


def test_fresh_fetch_should_bypass_msals_token_cache(stub):
    mi = source()
    first = mi.fetch(DOCUMENTDB_SCOPE, fresh=False)
    assert mi.fetch(DOCUMENTDB_SCOPE, fresh=False).token == first.token  # MSAL answers from its cache
    assert stub.request_count == 1
    assert mi.fetch(DOCUMENTDB_SCOPE, fresh=True).token != first.token
    assert stub.request_count == 2


def test_unknown_client_id_should_be_refused_not_transient(stub):
    with pytest.raises(AuthenticationRefusedError) as info:
        source(client_id="0f0f0f0f-0000-4000-8000-000000000000").fetch(DOCUMENTDB_SCOPE, fresh=False)
    assert "HTTP 400" in info.value.message
    assert "No User Assigned or Delegated Managed Identity found" in info.value.message
    assert "az functionapp identity show" in (info.value.hint or "")


def test_server_error_should_be_transient_and_wait_out_msals_throttle(stub):
    stub.fail_next(1, 500, message="backend busy")
    with pytest.raises(TokenServiceError) as info:
        source().fetch(DOCUMENTDB_SCOPE, fresh=False)
    assert info.value.transient
    assert "HTTP 500" in info.value.message
    assert info.value.retry_after == 5.0


@pytest.mark.parametrize("seconds", [2, 7])
def test_throttling_should_wait_for_the_endpoints_retry_after(stub, seconds):
    stub.fail_next(1, 429, retry_after=seconds)
    with pytest.raises(TokenServiceError) as info:
        source().fetch(DOCUMENTDB_SCOPE, fresh=False)
    assert info.value.retry_after == float(seconds)


def test_a_slow_endpoint_should_time_out_as_a_transient_error(stub):
    stub.delay_next(1, 5.0)
    started = time.monotonic()
    with pytest.raises(TokenServiceError, match="did not answer"):
        source(timeout=0.3).fetch(DOCUMENTDB_SCOPE, fresh=False)
    assert time.monotonic() - started < 3.0  # gave up long before the 5 s answer


def test_provider_should_retry_a_5xx_for_real_once_msals_throttle_window_has_passed(stub, metrics: Metrics):
    stub.fail_next(1, 503)
    provider = TokenProvider(
        source(),
        scope=DOCUMENTDB_SCOPE,
        identity=CLIENT_ID,
        refresh_before_expiry=300,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=1.0),
        clock=SystemClock(),
        metrics=metrics.auth,
    )
    started = time.monotonic()
    token = provider.get_token()
    assert token.token == stub.issued_tokens[-1]
    assert [r.status for r in stub.requests] == [503, 200]  # the retry reached the endpoint
    assert time.monotonic() - started >= 5.0
    assert metrics.value("replicator_mongo_auth_retry_attempts_total") == 1


def test_functions_app_without_identity_should_say_so_without_calling_anything(monkeypatch):
    monkeypatch.delenv("IDENTITY_ENDPOINT", raising=False)
    mi = ManagedIdentitySource(client_id=None, timeout=5, environ={"WEBSITE_INSTANCE_ID": "abc"})
    with pytest.raises(CredentialUnavailableError) as info:
        mi.fetch(DOCUMENTDB_SCOPE, fresh=False)
    assert "no managed identity" in info.value.message
    assert "system-assigned" in (info.value.hint or "")


def test_auto_should_pick_managed_identity_in_azure_and_log_the_choice(stub, caplog):
    with caplog.at_level(logging.INFO, logger="shared"):
        picked = select_token_source(
            credential="auto", tenant_id=TENANT, client_id=CLIENT_ID, timeout=5, environ=os.environ
        )
    assert picked.kind == "managed_identity"
    assert f"managed identity (user-assigned, client_id={CLIENT_ID}; App Service endpoint)" in caplog.text


def test_auto_should_pick_the_developer_login_outside_azure():
    picked = select_token_source(credential="auto", tenant_id=TENANT, client_id=None, timeout=5, environ={})
    assert picked.kind == "developer"


def test_developer_source_should_say_how_to_log_in_when_no_cli_login_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no az, no azd
    with pytest.raises(CredentialUnavailableError) as info:
        DeveloperSource(tenant_id=TENANT, timeout=5).fetch(DOCUMENTDB_SCOPE, fresh=False)
    assert f"az login --tenant {TENANT}" in (info.value.hint or "")


def test_an_identity_endpoint_that_is_down_should_be_a_transient_error_not_a_missing_identity(stub):
    """An outage (nothing listens at IDENTITY_ENDPOINT) is not "no identity here": the host must retry, not drop."""
    stub.stop()
    with pytest.raises(TokenServiceError, match="the managed identity endpoint did not answer") as info:
        source(timeout=1.0).fetch(DOCUMENTDB_SCOPE, fresh=False)
    assert info.value.transient


@pytest.mark.parametrize("fresh", [False, True])
def test_a_5xx_should_be_transient_also_for_a_fresh_token(stub, fresh):
    """A fresh token (after the server refused one) goes another way through MSAL: a 5xx must still read as one."""
    stub.fail_next(1, 503)
    with pytest.raises(TokenServiceError, match="HTTP 503") as info:
        source().fetch(DOCUMENTDB_SCOPE, fresh=fresh)
    assert info.value.transient


def test_a_5xx_replayed_by_msals_throttle_should_still_be_transient(stub):
    """Within MSAL's throttle window after a 5xx, MSAL answers from its cache without calling the endpoint; that
    must not read as "no managed identity here", which is terminal and would drop a Functions queue message."""
    stub.fail_next(1, 503, retry_after=30)
    identity = source()
    with pytest.raises(TokenServiceError, match="HTTP 503"):
        identity.fetch(DOCUMENTDB_SCOPE, fresh=False)
    requests = stub.request_count
    with pytest.raises(TokenServiceError, match="HTTP 503") as info:
        identity.fetch(DOCUMENTDB_SCOPE, fresh=True)
    assert stub.request_count == requests  # MSAL did not call the endpoint: it replayed the failure
    assert info.value.transient
