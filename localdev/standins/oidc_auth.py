"""The OIDC proxy's authentication: the token checks behind ``saslStart`` and the record of every attempt.

Apart from the wire handling (``oidc_proxy``) so that what makes a token acceptable (RS256 signature, expiry,
audience, tenant, registered principal) reads in one place, decided the way an Entra-enabled cluster decides it.
Everything here runs on the proxy's event loop except the recorded events and counters, which tests read from
their own thread (hence the lock).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal

import bson
import jwt
from bson.errors import BSONError
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

_log = logging.getLogger(__name__)

# Server error codes (src/mongo/base/error_codes.yml).
UNAUTHORIZED = 13
AUTHENTICATION_FAILED = 18
REAUTHENTICATION_REQUIRED = 391

AuthReason = Literal[
    "ok",
    "expired",
    "not yet valid",
    "audience",
    "signature",
    "malformed",
    "tenant",
    "principal not registered",
    "mechanism",
    "no conversation",
    "revoked",
]


@dataclasses.dataclass(frozen=True)
class AuthEvent:
    """One authentication attempt: whether it succeeded, why not, and the token's ``oid`` if it was readable."""

    ok: bool
    reason: AuthReason
    principal: str | None


@dataclasses.dataclass
class Session:
    """Authentication state of one client connection (used only on the proxy's event loop)."""

    principal: str | None = None
    expires_at: float = 0.0
    issued_at: float | None = None  # the token's ``iat``, for revocation
    # Once authenticated, a connection that lost its authentication (expired, revoked, a failed re-authentication)
    # is answered 391 until it authenticates again, as a server does; 13 is for one that never authenticated.
    was_authenticated: bool = False


def error_reply(code: int, code_name: str, message: str) -> dict[str, Any]:
    """A command's error reply, shaped as a server sends it (what pymongo turns into ``OperationFailure``)."""
    return {"ok": 0.0, "errmsg": message, "code": code, "codeName": code_name}


class OIDCAuthenticator:
    """Answers ``saslStart`` for MONGODB-OIDC and keeps every attempt in ``events``.

    A token is accepted when its RS256 signature verifies with ``public_key_pem`` and its claims hold at ``clock``
    time: not expired, already valid, ``aud`` naming ``audience``, ``tid`` equal to ``tenant_id`` and ``oid`` among
    ``allowed_principals`` (each when given).
    """

    def __init__(
        self,
        *,
        public_key_pem: bytes,
        audience: str,
        tenant_id: str | None = None,
        allowed_principals: Collection[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Parsed now so that a bad key fails here rather than as "malformed" on every authentication.
        public_key = load_pem_public_key(public_key_pem)
        if not isinstance(public_key, RSAPublicKey):
            raise ValueError("public_key_pem must hold an RSA public key (tokens are RS256)")
        self._public_key = public_key
        self.audience = audience
        self.tenant_id = tenant_id
        self.allowed_principals = None if allowed_principals is None else frozenset(allowed_principals)
        self._clock = clock
        self._lock = threading.Lock()
        self._events: list[AuthEvent] = []
        self._sasl_starts = 0
        self._revoked_before: float | None = None

    @property
    def events(self) -> list[AuthEvent]:
        """Every authentication attempt, oldest first (a copy)."""
        with self._lock:
            return list(self._events)

    @property
    def sasl_starts(self) -> int:
        """How many ``saslStart`` commands arrived."""
        with self._lock:
            return self._sasl_starts

    def revoke_issued_before(self, issued_before: float) -> None:
        """Refuse every token whose ``iat`` is before ``issued_before`` from now on: what revoking a principal's
        sessions does in Entra (a token without ``iat`` is never revoked)."""
        with self._lock:
            self._revoked_before = issued_before

    def revoked(self, session: Session) -> bool:
        """Whether the token ``session`` authenticated with was revoked since (it must then authenticate again)."""
        return self._revoked_iat(session.issued_at)

    def _revoked_iat(self, issued_at: object) -> bool:
        with self._lock:
            before = self._revoked_before
        return isinstance(issued_at, int | float) and before is not None and issued_at < before

    def sasl_start(self, body: Mapping[str, Any], session: Session) -> dict[str, Any]:
        """The reply to ``saslStart``: done in one step when the token is accepted (``session`` then holds it)."""
        with self._lock:
            self._sasl_starts += 1
        session.principal = None
        if body.get("mechanism") != "MONGODB-OIDC" or body.get("$db") != "$external":
            return self.refuse(session, "mechanism", None)
        try:
            token = bson.decode(body["payload"])["jwt"]
        except (KeyError, TypeError, BSONError):
            return self.refuse(session, "malformed", None)
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["RS256"],
                # Time and audience are checked below: against the injected clock, and with a precise reason.
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            return self.refuse(session, "signature", None)
        except jwt.PyJWTError:
            return self.refuse(session, "malformed", None)
        principal = claims.get("oid")
        reason = self._claims_problem(claims)
        if reason is not None:
            return self.refuse(session, reason, principal)
        session.principal, session.expires_at, session.was_authenticated = principal, float(claims["exp"]), True
        issued_at = claims.get("iat")
        session.issued_at = float(issued_at) if isinstance(issued_at, int | float) else None
        self._record(AuthEvent(ok=True, reason="ok", principal=principal))
        return {"conversationId": 1, "done": True, "payload": b"", "ok": 1.0}

    def refuse(self, session: Session, reason: AuthReason, principal: str | None) -> dict[str, Any]:
        """Fail the attempt: ``session`` is no longer authenticated, and the reason goes to ``events`` only."""
        session.principal = None
        self._record(AuthEvent(ok=False, reason=reason, principal=principal))
        # Like a real server, the client learns nothing about why; the reason is in the events and the log.
        return error_reply(AUTHENTICATION_FAILED, "AuthenticationFailed", "Authentication failed.")

    def _claims_problem(self, claims: Mapping[str, Any]) -> AuthReason | None:
        now = self._clock()
        exp, nbf, audience = claims.get("exp"), claims.get("nbf", now), claims.get("aud")
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float) or not claims.get("oid"):
            return "malformed"
        if exp <= now:
            return "expired"
        if self._revoked_iat(claims.get("iat")):
            return "revoked"
        if nbf > now:
            return "not yet valid"
        if self.audience != audience and not (isinstance(audience, list) and self.audience in audience):
            return "audience"
        if self.tenant_id is not None and claims.get("tid") != self.tenant_id:
            return "tenant"
        if self.allowed_principals is not None and claims["oid"] not in self.allowed_principals:
            return "principal not registered"
        return None

    def _record(self, event: AuthEvent) -> None:
        _log.info("MONGODB-OIDC authentication %s (%s) principal=%s", event.ok, event.reason, event.principal)
        with self._lock:
            self._events.append(event)
