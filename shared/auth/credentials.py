"""Where Entra tokens come from: one small strategy per environment, picked once and logged.

In Azure Functions the token comes from the app's managed identity (``ManagedIdentityCredential``, which
calls the ``IDENTITY_ENDPOINT`` App Service endpoint; pymongo's built-in ``ENVIRONMENT:azure`` would call the
VM metadata endpoint instead, which Functions does not offer). On a developer machine it comes from the
developer's own login (Azure CLI, then Azure Developer CLI). The choice is explicit: ``credential: auto`` picks
by environment and logs what it picked; ``managed_identity`` / ``developer`` force one.

Each source turns azure-identity's failures into our two auth error kinds plus the transient one, because
azure-identity reports a 5xx from the managed identity endpoint, a 400 for an unknown identity and a missing
endpoint all as ``CredentialUnavailableError``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from azure.core.credentials import SupportsTokenInfo, TokenRequestOptions
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline import PipelineResponse
from azure.identity import AzureCliCredential, AzureDeveloperCliCredential, ManagedIdentityCredential
from azure.identity import CredentialUnavailableError as AzureCredentialUnavailable

from shared.errors import AuthenticationRefusedError, CredentialUnavailableError, TokenServiceError
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from shared.config_endpoint import CredentialKind

_log = get_logger(__name__)

# MSAL, inside azure-identity, answers a repeated managed identity request from its own cache for Retry-After
# seconds after a 429/5xx, or 5 s without one (msal/throttled_http_client.py): a sooner retry never reaches the
# endpoint.
_MSAL_THROTTLE_SECONDS = 5.0
_CONNECT_TIMEOUT_CAP = 10.0
_MI_DOCS = "https://learn.microsoft.com/azure/app-service/overview-managed-identity"


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and its expiry (epoch seconds). ``repr`` never shows the token."""

    token: str = field(repr=False)
    expires_on: float


class TokenSource(Protocol):
    """Fetches a token for one scope. ``fresh=True`` must bypass any cache below us (the server rejected it)."""

    kind: str
    description: str

    def fetch(self, scope: str, *, fresh: bool) -> AccessToken: ...


def select_token_source(
    *,
    credential: CredentialKind,
    tenant_id: str | None,
    client_id: str | None,
    timeout: float,
    environ: Mapping[str, str],
) -> TokenSource:
    """Pick the token source for this environment (``credential: auto``) or the one the config forces."""
    kind = credential
    if kind == "auto":
        in_azure = any(environ.get(v) for v in ("IDENTITY_ENDPOINT", "MSI_ENDPOINT", "WEBSITE_INSTANCE_ID"))
        kind = "managed_identity" if in_azure else "developer"
    source: TokenSource
    if kind == "managed_identity":
        source = ManagedIdentitySource(client_id=client_id, timeout=timeout, environ=environ)
    else:
        source = DeveloperSource(tenant_id=tenant_id, timeout=timeout)
    _log.info(
        "Entra token source: %s (credential setting %r)",
        source.description,
        credential,
        extra={"event": "token_source_selected", "credential_kind": source.kind},
    )
    return source


class ManagedIdentitySource:
    """The Function App's managed identity (user-assigned when ``client_id`` is given)."""

    kind = "managed_identity"

    def __init__(
        self,
        *,
        client_id: str | None,
        timeout: float,
        environ: Mapping[str, str],
        credential: SupportsTokenInfo | None = None,
    ) -> None:
        self.client_id = client_id
        who = f"user-assigned, client_id={client_id}" if client_id else "system-assigned"
        endpoint = "App Service endpoint" if environ.get("IDENTITY_ENDPOINT") else "no IDENTITY_ENDPOINT"
        self.description = f"managed identity ({who}; {endpoint})"
        self._in_functions_without_identity = bool(environ.get("WEBSITE_INSTANCE_ID")) and not environ.get(
            "IDENTITY_ENDPOINT"
        )
        self._last = threading.local()
        # The endpoint's last failure, whichever thread saw it: within MSAL's throttle window MSAL answers later
        # requests by replaying it without calling the endpoint, so no response reaches this call's hook.
        self._last_failure: tuple[int, str | None, str] | None = None
        # Our provider is the one retry layer (metered, with jitter); azure-core must not retry underneath it.
        self._credential = credential or ManagedIdentityCredential(
            client_id=client_id,
            connection_timeout=min(timeout, _CONNECT_TIMEOUT_CAP),
            read_timeout=timeout,
            retry_total=0,
            raw_response_hook=self._remember_response,
        )

    def fetch(self, scope: str, *, fresh: bool) -> AccessToken:
        if self._in_functions_without_identity:
            raise CredentialUnavailableError(
                "this Function App has no managed identity (IDENTITY_ENDPOINT is not set)",
                hint="assign a user-assigned identity and set client_id, or enable the system-assigned identity; "
                + _MI_DOCS,
            )
        self._last.status, self._last.retry_after, self._last.message = None, None, ""
        options: TokenRequestOptions = {"claims": _fresh_token_claims()} if fresh else {}
        try:
            info = self._credential.get_token_info(scope, options=options)
        except Exception as exc:  # classified below; the original stays chained
            raise self._classify(exc) from exc
        return AccessToken(info.token, float(info.expires_on))

    def _remember_response(self, response: PipelineResponse[Any, Any]) -> None:
        http = response.http_response
        self._last.status = http.status_code
        self._last.retry_after = http.headers.get("Retry-After")
        if http.status_code >= 400:
            self._last.message = _service_message(http.text())
            self._last_failure = (http.status_code, self._last.retry_after, self._last.message)
        else:
            self._last_failure = None

    def _classify(self, exc: Exception) -> Exception:
        status: int | None = getattr(self._last, "status", None)
        detail = getattr(self._last, "message", "") or type(exc).__name__
        retry_after = getattr(self._last, "retry_after", None)
        if status is None and isinstance(exc, AzureCredentialUnavailable) and self._last_failure is not None:
            status, retry_after, message = self._last_failure  # MSAL replayed the endpoint's last failure
            detail = f"{message} (as the endpoint last answered; MSAL holds further requests back for a while)"
        if status is not None and (status == 429 or status >= 500):
            return TokenServiceError(
                f"the managed identity endpoint failed (HTTP {status}): {detail}",
                hint="usually passes; if it persists, check the Function App's health",
                retry_after=_retry_after(retry_after),
            )
        if status is not None and status >= 400:
            return AuthenticationRefusedError(
                f"the managed identity endpoint refused the token request (HTTP {status}): {detail}",
                hint=(
                    f"check client_id {self.client_id}: it must be the client id of a user-assigned identity assigned "
                    "to this Function App (az functionapp identity show)"
                    if self.client_id
                    else "enable the Function App's system-assigned identity, or set client_id to a user-assigned one"
                ),
            )
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return TokenServiceError(f"the managed identity endpoint did not answer: {type(exc).__name__}")
        if isinstance(exc, AzureCredentialUnavailable):
            return CredentialUnavailableError(
                "no managed identity is available in this environment",
                hint="run inside Azure with an identity assigned, or set credential: developer to use your own login",
            )
        return TokenServiceError(f"managed identity token request failed: {type(exc).__name__}")


class DeveloperSource:
    """A developer's own Entra login: Azure CLI (``az login``), then Azure Developer CLI (``azd auth login``).

    Tried in order by hand rather than with ``ChainedTokenCredential``, which reports "nothing is installed"
    and "the login was refused" as the same exception.
    """

    kind = "developer"

    def __init__(
        self, *, tenant_id: str | None, timeout: float, credentials: Sequence[SupportsTokenInfo] | None = None
    ) -> None:
        self.tenant_id = tenant_id
        self.description = f"developer login (Azure CLI, then Azure Developer CLI; tenant {tenant_id})"
        self._credentials = credentials or (
            AzureCliCredential(tenant_id=tenant_id or "", process_timeout=int(timeout)),
            AzureDeveloperCliCredential(tenant_id=tenant_id or "", process_timeout=int(timeout)),
        )

    def fetch(self, scope: str, *, fresh: bool) -> AccessToken:
        # The CLIs keep their own token cache; there is nothing in-process to bypass when fresh is asked for.
        for credential in self._credentials:
            try:
                info = credential.get_token_info(scope)
            except AzureCredentialUnavailable:
                continue
            except ClientAuthenticationError as exc:
                raise AuthenticationRefusedError(
                    f"Entra ID refused the developer login's token request ({type(credential).__name__})",
                    hint=f"check that your account belongs to tenant {self.tenant_id} and may get tokens for {scope}",
                ) from exc
            return AccessToken(info.token, float(info.expires_on))
        raise CredentialUnavailableError(
            "no developer login found for Entra ID (neither Azure CLI nor Azure Developer CLI is logged in)",
            hint=f"run 'az login --tenant {self.tenant_id}' (or 'azd auth login'), or run where a managed identity "
            "is available",
        )


def _fresh_token_claims() -> str:
    """A claims challenge: MSAL skips its cached token when one is given, without changing the request."""
    return json.dumps({"access_token": {"nbf": {"essential": True}}})


def _retry_after(value: str | None) -> float:
    """Seconds until a retry can reach the endpoint: its Retry-After, else MSAL's default throttle window."""
    try:
        return float(value) if value else _MSAL_THROTTLE_SECONDS
    except ValueError:
        return _MSAL_THROTTLE_SECONDS


def _service_message(body: str) -> str:
    """The ``message`` of an App Service identity endpoint error body (never a token: errors carry none)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    message = (
        data.get("message") or data.get("error_description") or data.get("error") if isinstance(data, dict) else None
    )
    return str(message)[:300] if message else body[:200]
