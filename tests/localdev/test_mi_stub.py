"""The managed identity stub, exercised through the real azure-identity ManagedIdentityCredential."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceResponseError
from azure.identity import ManagedIdentityCredential

from localdev.standins.mi_stub import UNKNOWN_IDENTITY_MESSAGE, ManagedIdentityStub, TokenRequest

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0f2b4c1e-6a1d-4c55-9a57-3d1b8f0c2a11"
OBJECT_ID = "8d0a3d3b-5c59-4b4c-93b8-9a3c0d8e7f21"
SYSTEM_OBJECT_ID = "5e1c9a2f-0b7d-4f3e-8c6a-1d2e3f4a5b6c"
RESOURCE = "https://ossrdbms-aad.database.windows.net"
SCOPE = RESOURCE + "/.default"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagedIdentityStub]:
    with ManagedIdentityStub(tenant_id=TENANT, identities={CLIENT_ID: OBJECT_ID, None: SYSTEM_OBJECT_ID}) as running:
        _use_stub(monkeypatch, running)
        yield running


def _use_stub(monkeypatch: pytest.MonkeyPatch, stub: ManagedIdentityStub) -> None:
    """Point azure-identity at the stub; must happen before a credential is constructed."""
    for name, value in stub.environ().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)  # would select Service Fabric instead


def _credential(**kwargs: object) -> ManagedIdentityCredential:
    """A fresh credential per scenario (MSAL caches tokens and 5xx answers per instance), without retries."""
    return ManagedIdentityCredential(retry_total=0, **kwargs)  # type: ignore[arg-type]


def _get(stub: ManagedIdentityStub, query: str, header: str | None) -> tuple[int, dict[str, object], str | None]:
    request = urllib.request.Request(f"{stub.endpoint}?{query}")  # noqa: S310 - loopback http by design
    if header is not None:
        request.add_header("X-IDENTITY-HEADER", header)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read()), response.headers.get("Retry-After")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read()), error.headers.get("Retry-After")


def test_credential_should_get_verifiable_token_when_user_assigned_client_id_is_known(
    stub: ManagedIdentityStub,
) -> None:
    token = _credential(client_id=CLIENT_ID).get_token(SCOPE)

    claims = jwt.decode(token.token, stub.public_key_pem, algorithms=["RS256"], audience=RESOURCE)
    assert claims["oid"] == claims["sub"] == OBJECT_ID
    assert claims["appid"] == CLIENT_ID
    assert claims["tid"] == TENANT
    assert claims["iss"] == f"https://sts.windows.net/{TENANT}/"
    assert (claims["idtyp"], claims["ver"]) == ("app", "1.0")
    assert jwt.get_unverified_header(token.token)["kid"] == stub.key_id
    assert stub.requests == [TokenRequest(RESOURCE, CLIENT_ID, 200)]
    assert stub.issued_tokens == [token.token]


def test_credential_should_get_system_assigned_token_when_no_client_id_is_given(stub: ManagedIdentityStub) -> None:
    token = _credential().get_token(SCOPE)

    claims = jwt.decode(token.token, stub.public_key_pem, algorithms=["RS256"], audience=RESOURCE)
    assert claims["oid"] == SYSTEM_OBJECT_ID
    assert claims["appid"] == stub.system_assigned_client_id
    assert stub.requests == [TokenRequest(RESOURCE, None, 200)]


def test_credential_should_fail_with_app_service_message_when_client_id_is_unknown(
    stub: ManagedIdentityStub,
) -> None:
    with pytest.raises(ClientAuthenticationError, match="No User Assigned or Delegated Managed Identity"):
        _credential(client_id="11111111-2222-3333-4444-555555555555").get_token(SCOPE)

    assert stub.requests == [TokenRequest(RESOURCE, "11111111-2222-3333-4444-555555555555", 400)]


def test_credential_should_fail_when_no_system_assigned_identity_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ManagedIdentityStub(tenant_id=TENANT, identities={CLIENT_ID: OBJECT_ID}) as user_assigned_only:
        _use_stub(monkeypatch, user_assigned_only)
        with pytest.raises(ClientAuthenticationError, match="No User Assigned or Delegated Managed Identity"):
            _credential().get_token(SCOPE)

        assert user_assigned_only.requests == [TokenRequest(RESOURCE, None, 400)]


def test_credential_should_see_injected_failure_once_when_fail_next_is_one(stub: ManagedIdentityStub) -> None:
    stub.fail_next(1, 500, message="Injected platform error")

    with pytest.raises(ClientAuthenticationError, match="Injected platform error"):
        _credential(client_id=CLIENT_ID).get_token(SCOPE)
    token = _credential(client_id=CLIENT_ID).get_token(SCOPE)

    assert token.token == stub.issued_tokens[0]
    assert [request.status for request in stub.requests] == [500, 200]


def test_credential_should_report_expiry_from_injected_clock_when_lifetime_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock(time.time() + 86_400)
    with ManagedIdentityStub(tenant_id=TENANT, identities={CLIENT_ID: OBJECT_ID}, clock=clock) as clocked:
        clocked.token_lifetime = 600
        _use_stub(monkeypatch, clocked)

        token = _credential(client_id=CLIENT_ID).get_token(SCOPE)

    # The stub's clock runs a day ahead, so iat/nbf lie in PyJWT's future.
    claims = jwt.decode(
        token.token,
        clocked.public_key_pem,
        algorithms=["RS256"],
        audience=RESOURCE,
        options={"verify_iat": False, "verify_nbf": False},
    )
    assert claims["exp"] == int(clock.now + 600)
    # MSAL turns expires_on into expires_in against its own wall clock and back, so allow one second of drift.
    assert abs(token.expires_on - int(clock.now + 600)) <= 1


def test_credential_should_time_out_when_response_is_delayed(stub: ManagedIdentityStub) -> None:
    stub.delay_next(1, 1.0)

    started = time.monotonic()
    with pytest.raises(ServiceResponseError, match="Read timed out"):
        _credential(client_id=CLIENT_ID, read_timeout=0.2).get_token(SCOPE)

    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 5
    while stub.request_count == 0 and time.monotonic() < deadline:  # the held-back answer still completes
        time.sleep(0.05)
    assert stub.request_count == 1


@pytest.mark.parametrize(
    ("query", "use_header", "status"),
    [
        (f"api-version=2019-08-01&resource={RESOURCE}", False, 401),
        (f"api-version=2017-09-01&resource={RESOURCE}", True, 400),
        ("api-version=2019-08-01", True, 400),
        (f"api-version=2019-08-01&resource={RESOURCE}&object_id={OBJECT_ID}", True, 400),
    ],
    ids=["missing-header", "wrong-api-version", "missing-resource", "object-id-not-modelled"],
)
def test_endpoint_should_refuse_with_json_error_when_request_is_invalid(
    stub: ManagedIdentityStub, query: str, use_header: bool, status: int
) -> None:
    code, body, _ = _get(stub, query, stub.identity_header if use_header else None)

    assert (code, body["statusCode"]) == (status, status)
    assert stub.issued_tokens == []


def test_endpoint_should_refuse_when_identity_header_is_wrong(stub: ManagedIdentityStub) -> None:
    code, _, _ = _get(stub, f"api-version=2019-08-01&resource={RESOURCE}", "not-the-secret")

    assert code == 401


def test_endpoint_should_send_retry_after_when_injected_failure_has_one(stub: ManagedIdentityStub) -> None:
    stub.fail_next(1, 429, retry_after=7, message="Too many requests")

    code, body, retry_after = _get(stub, f"api-version=2019-08-01&resource={RESOURCE}", stub.identity_header)

    assert (code, body, retry_after) == (429, {"statusCode": 429, "message": "Too many requests"}, "7")


def test_endpoint_should_answer_real_app_service_message_when_identity_is_unknown(
    stub: ManagedIdentityStub,
) -> None:
    _, body, _ = _get(stub, f"api-version=2019-08-01&resource={RESOURCE}&client_id=nope", stub.identity_header)

    assert body == {"statusCode": 400, "message": UNKNOWN_IDENTITY_MESSAGE}


def test_mint_should_apply_overrides_and_drop_none_claims_when_crafting_tokens(stub: ManagedIdentityStub) -> None:
    token = stub.mint(resource=RESOURCE, client_id=CLIENT_ID, lifetime=-60, aud="api://other", tid=None)

    claims = jwt.decode(
        token, stub.public_key_pem, algorithms=["RS256"], options={"verify_exp": False, "verify_aud": False}
    )
    assert claims["aud"] == "api://other"
    assert "tid" not in claims
    assert claims["exp"] < time.time()
    assert stub.request_count == 0


def test_mint_should_raise_when_identity_is_not_configured(stub: ManagedIdentityStub) -> None:
    with pytest.raises(ValueError, match="not configured"):
        stub.mint(resource=RESOURCE, client_id="unknown")


def test_stub_should_release_port_when_stopped(stub: ManagedIdentityStub) -> None:
    endpoint = stub.endpoint
    stub.stop()

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(endpoint, timeout=2)  # noqa: S310


def test_cli_should_print_settings_and_serve_tokens_until_sigterm(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    command = [
        sys.executable,
        "-m",
        "localdev.standins.mi_stub",
        "--tenant",
        TENANT,
        "--identity",
        f"{CLIENT_ID}={OBJECT_ID}",
    ]
    process = subprocess.Popen(
        [*command, "--public-key-out", str(key_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        settings = json.loads(process.stdout.readline())
        request = urllib.request.Request(  # noqa: S310
            f"{settings['IDENTITY_ENDPOINT']}?api-version=2019-08-01&resource={RESOURCE}&client_id={CLIENT_ID}",
            headers={"X-IDENTITY-HEADER": settings["IDENTITY_HEADER"]},
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            body = json.loads(response.read())
        claims = jwt.decode(body["access_token"], key_file.read_bytes(), algorithms=["RS256"], audience=RESOURCE)
        assert claims["oid"] == OBJECT_ID
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        process.stdout.close()  # type: ignore[union-attr]
