"""``test-auth``: prove every configured connection works, and when one does not, say exactly why.

For each endpoint: which credential was used, whether a token was acquired and how fast, whether the token's
non-secret claims match the configuration (audience against scope, tenant, expiry), the principal id the
cluster must know, and a ``ping`` through the same shared client the replicator uses. Wrong-scope and
unregistered-identity errors are the ones other replicators leave cryptic (design brief §3.9); the report
names the endpoint, the audience and the principal. It never contains a token or a password.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from shared import mongo_uri
from shared.auth.claims import unverified_claims
from shared.auth.scopes import audience_matches, resource_of
from shared.errors import ReplicatorError
from shared.mongo_errors import explain

if TYPE_CHECKING:
    from shared.auth.mongo_client import ClientFactory
    from shared.clock import Clock
    from shared.config import MongoConfig, ReplicatorConfig


@dataclass
class TokenCheck:
    """The Entra token step of one endpoint (claims only; never the token)."""

    credential: str
    identity: str
    acquired: bool = False
    duration_ms: float | None = None
    audience: str | None = None
    tenant_id: str | None = None
    principal_id: str | None = None
    expires_in_s: int | None = None
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    hint: str | None = None


@dataclass
class PingCheck:
    """The ``ping`` step of one endpoint."""

    ok: bool = False
    skipped: bool = False
    duration_ms: float | None = None
    error: str | None = None
    hint: str | None = None


@dataclass
class EndpointReport:
    """Everything test-auth learned about one configured connection."""

    name: str
    target: str
    auth_method: str
    token: TokenCheck | None
    ping: PingCheck

    @property
    def ok(self) -> bool:
        token_ok = self.token is None or (self.token.acquired and not self.token.problems)
        return token_ok and self.ping.ok


@dataclass
class AuthReport:
    endpoints: list[EndpointReport]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.endpoints)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "endpoints": [{**asdict(e), "ok": e.ok} for e in self.endpoints]}


def run_test_auth(config: ReplicatorConfig, factory: ClientFactory, *, clock: Clock) -> AuthReport:
    """Check every endpoint concurrently (one slow cluster must not hide the others) and report in order."""
    endpoints = list(_named_endpoints(config))
    with ThreadPoolExecutor(max_workers=min(8, len(endpoints))) as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, _check_endpoint, name, endpoint, factory, clock)
            for name, endpoint in endpoints
        ]
        return AuthReport([f.result() for f in futures])


def _named_endpoints(config: ReplicatorConfig) -> list[tuple[str, MongoConfig]]:
    names = {f"streams[{i}]": f"streams[{i}] ({s.name})" for i, s in enumerate(config.streams)}
    out = []
    for path, endpoint in config.endpoints():
        prefix, _, role = path.partition(".")
        out.append((f"{names[prefix]}.{role}" if prefix in names else path, endpoint))
    return out


def _check_endpoint(name: str, endpoint: MongoConfig, factory: ClientFactory, clock: Clock) -> EndpointReport:
    where = f"{endpoint.database}.{endpoint.collection}" if endpoint.collection else f"{endpoint.database}"
    target = f"{mongo_uri.display(endpoint.connection_uri)} ({where})"
    token = _check_token(endpoint, factory, clock) if endpoint.auth_method == "entra" else None
    if token is not None and not token.acquired:
        ping = PingCheck(skipped=True, error="not attempted: no token")
    else:
        ping = _ping(endpoint, factory, clock, principal=token.principal_id if token else None)
    return EndpointReport(name=name, target=target, auth_method=endpoint.auth_method, token=token, ping=ping)


def _check_token(endpoint: MongoConfig, factory: ClientFactory, clock: Clock) -> TokenCheck:
    try:
        provider = factory.token_provider(endpoint)
    except ReplicatorError as exc:
        return TokenCheck(
            credential="unavailable", identity=endpoint.client_id or "-", error=exc.message, hint=exc.hint
        )
    check = TokenCheck(credential=provider.source.description, identity=provider.identity)
    started = clock.monotonic()
    try:
        token = provider.get_token()
    except ReplicatorError as exc:
        check.error, check.hint = exc.message, exc.hint
        return check
    check.acquired = True
    check.duration_ms = round((clock.monotonic() - started) * 1000, 1)
    claims = unverified_claims(token.token)
    check.audience = claims.get("aud")
    check.tenant_id = claims.get("tid")
    check.principal_id = claims.get("oid")
    check.expires_in_s = int(token.expires_on - clock.time())
    check.problems = _claim_problems(endpoint, claims, check.expires_in_s)
    return check


def _claim_problems(endpoint: MongoConfig, claims: dict[str, Any], expires_in_s: int) -> list[str]:
    if not claims:
        return []  # an opaque token: nothing to compare, the server will judge
    problems = []
    audience = str(claims.get("aud", ""))
    if not audience_matches(audience, endpoint.scope):
        problems.append(
            f"token audience '{audience}' is not the configured scope's resource '{resource_of(endpoint.scope)}'"
        )
    if endpoint.tenant_id and claims.get("tid") and claims["tid"] != endpoint.tenant_id:
        problems.append(f"token tenant '{claims['tid']}' is not the configured tenant_id '{endpoint.tenant_id}'")
    if expires_in_s <= 0:
        problems.append("token is already expired (check the machine's clock)")
    return problems


def _ping(endpoint: MongoConfig, factory: ClientFactory, clock: Clock, *, principal: str | None) -> PingCheck:
    started = clock.monotonic()
    try:
        factory.client(endpoint).admin.command("ping")
    except (PyMongoError, ReplicatorError) as exc:
        error, hint = explain(exc, endpoint, principal=principal)
        return PingCheck(error=error, hint=hint)
    return PingCheck(ok=True, duration_ms=round((clock.monotonic() - started) * 1000, 1))
