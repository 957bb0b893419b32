"""The pymongo ``OIDCCallback`` adapter over our token provider (one callback per MongoClient).

pymongo keeps one token per client and calls ``fetch`` only when it has none: on the first authentication
and after the server refused the token it had (391 on a command, 18 during authentication). So a second
``fetch`` on the same callback means the previous token was rejected, and the provider is told not to hand
it back.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from pymongo.auth_oidc import OIDCCallback, OIDCCallbackContext, OIDCCallbackResult

from shared.telemetry import get_logger

if TYPE_CHECKING:
    from shared.auth.tokens import TokenProvider

_log = get_logger(__name__)


class EntraOIDCCallback(OIDCCallback):
    """Answers pymongo's MONGODB-OIDC token requests for one client from the shared ``TokenProvider``."""

    def __init__(self, provider: TokenProvider, *, endpoint: str) -> None:
        self._provider = provider
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._last: str | None = None

    def fetch(self, context: OIDCCallbackContext) -> OIDCCallbackResult:
        with self._lock:
            rejected = self._last
        if rejected is not None:
            _log.info(
                "MongoDB at %s asked %s for a new token (the server refused the previous one)",
                self._endpoint,
                self._provider.identity,
                extra={"event": "token_rejected", "endpoint": self._endpoint, "identity": self._provider.identity},
            )
        token = self._provider.get_token(reject=rejected)
        with self._lock:
            self._last = token.token
        return OIDCCallbackResult(access_token=token.token)
