"""The token provider: the app's only token cache, one per identity and scope, shared by every client.

pymongo never looks at a token's expiry: it calls our callback when it has no token, and again after the
server rejected one (error 391 ReauthenticationRequired on a command, or 18 AuthenticationFailed during auth).
So freshness is our job:

* a cached token is handed out only while it has more than ``refresh_before_expiry`` left (or half its
  lifetime, for tokens shorter than twice that buffer);
* a caller that says which token was rejected never gets that token back: the cache is dropped and the
  source is asked to bypass its own cache (``fresh=True``);
* concurrent callers share one request (singleflight), including its failure;
* transient failures (timeouts, 5xx, throttling) are retried with exponential backoff and jitter, never
  sooner than the source's ``retry_after``; permanent ones (unknown identity, no login) are not retried.
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from shared.auth.claims import unverified_claims
from shared.errors import ReplicatorError, TokenServiceError
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from shared.auth.credentials import AccessToken, TokenSource
    from shared.clock import Clock
    from shared.telemetry import AuthMetrics

RefreshReason = Literal["initial", "expiring", "rejected"]

_log = get_logger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter": half the delay is fixed, half random, so retries spread out."""

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 10.0
    multiplier: float = 2.0

    def delay(self, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``retry_number`` (1 = the first retry)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (retry_number - 1))
        return base / 2 + rng.uniform(0, base / 2)


@dataclass
class _Cached:
    token: AccessToken
    acquired_at: float

    def usable(self, now: float, buffer: float) -> bool:
        lifetime = self.token.expires_on - self.acquired_at
        return now < self.token.expires_on - min(buffer, lifetime / 2)


class TokenProvider:
    """Hands out Entra access tokens for one identity and scope; thread-safe."""

    def __init__(
        self,
        source: TokenSource,
        *,
        scope: str,
        identity: str,
        refresh_before_expiry: float,
        retry: RetryPolicy,
        clock: Clock,
        metrics: AuthMetrics,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.scope = scope
        self.identity = identity
        self._buffer = refresh_before_expiry
        self._retry = retry
        self._clock = clock
        self._metrics = metrics
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._lock = threading.Lock()
        self._cached: _Cached | None = None
        self._flight: Future[AccessToken] | None = None
        self._attributes = {"identity": identity, "credential": source.kind}

    def get_token(self, *, reject: str | None = None) -> AccessToken:
        """A token with at least the refresh buffer left that is not ``reject`` (the one a server refused)."""
        with self._lock:
            cached = self._cached
            if cached and cached.token.token != reject and cached.usable(self._clock.time(), self._buffer):
                self._metrics.cache_hits.add(1, self._attributes)
                return cached.token
            self._metrics.cache_misses.add(1, self._attributes)
            flight, reason = self._flight, None
            if flight is None:
                flight = self._flight = Future()
                reason = _reason(cached, reject)
                if reason == "rejected":
                    self._cached = None
        if reason is not None:
            self._lead(flight, reason, fresh=reject is not None)
            return flight.result()
        token = flight.result()
        if reject is not None and token.token == reject:
            # We joined a refresh that did not bypass the source's cache and it returned the refused token:
            # now it is cached, so asking again starts a forced ("rejected") refresh.
            return self.get_token(reject=reject)
        return token

    def _lead(self, flight: Future[AccessToken], reason: RefreshReason, *, fresh: bool) -> None:
        """Fetch for everyone waiting on ``flight``; followers get the same token or the same error."""
        self._metrics.token_refresh.add(1, {**self._attributes, "reason": reason})
        try:
            token = self._fetch_with_retries(reason, fresh=fresh)
        except BaseException as exc:  # noqa: BLE001 (handed to every waiter, then re-raised by flight.result())
            self._metrics.token_refresh_failures.add(1, self._attributes)
            with self._lock:
                self._flight = None
            flight.set_exception(exc)
            return
        with self._lock:
            self._cached = _Cached(token, self._clock.time())
            self._flight = None
        flight.set_result(token)

    def _fetch_with_retries(self, reason: RefreshReason, *, fresh: bool) -> AccessToken:
        for attempt in range(1, self._retry.max_attempts + 1):
            if attempt > 1:
                self._metrics.auth_retries.add(1, self._attributes)
            started = self._clock.monotonic()
            self._metrics.auth_attempts.add(1, self._attributes)
            try:
                token = self.source.fetch(self.scope, fresh=fresh)
            except Exception as exc:  # classified: our errors keep their kind, surprises count as transient
                error = exc if isinstance(exc, ReplicatorError) else TokenServiceError(f"{type(exc).__name__}")
                self._record_failure(error, started)
                if not error.transient or attempt == self._retry.max_attempts:
                    self._log_final(error, attempt)
                    raise error from exc
                delay = max(self._retry.delay(attempt, self._rng), getattr(error, "retry_after", None) or 0.0)
                _log.warning(
                    "Entra token request for %s failed (attempt %d of %d), retrying in %.1fs: %s",
                    self.identity,
                    attempt,
                    self._retry.max_attempts,
                    delay,
                    error.message,
                    extra={"event": "token_retry", "identity": self.identity, "attempt": attempt},
                )
                self._clock.sleep(delay)
                continue
            self._record_success(token, started, reason, attempt)
            return token
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def _record_success(self, token: AccessToken, started: float, reason: RefreshReason, attempt: int) -> None:
        elapsed = self._clock.monotonic() - started
        self._metrics.auth_success.add(1, self._attributes)
        self._metrics.auth_duration.record(elapsed, {**self._attributes, "outcome": "success"})
        _log.info(
            "Entra token acquired for %s (%s, reason %s, attempt %d, %.0f ms, expires in %.0f s)",
            self.identity,
            self.source.kind,
            reason,
            attempt,
            elapsed * 1000,
            token.expires_on - self._clock.time(),
            extra={"event": "token_acquired", "identity": self.identity, "reason": reason},
        )
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("Entra token claims for %s: %s", self.identity, _public_claims(token.token))

    def _record_failure(self, error: ReplicatorError, started: float) -> None:
        attributes = {**self._attributes, "error_type": type(error).__name__}
        self._metrics.auth_failures.add(1, attributes)
        self._metrics.auth_duration.record(
            self._clock.monotonic() - started, {**self._attributes, "outcome": "failure"}
        )

    def _log_final(self, error: ReplicatorError, attempts: int) -> None:
        _log.error(
            "Entra token for %s could not be acquired after %d attempt(s): %s",
            self.identity,
            attempts,
            error.message,
            extra={"event": "token_failed", "identity": self.identity, "error_type": type(error).__name__},
        )


def _reason(cached: _Cached | None, reject: str | None) -> RefreshReason:
    if cached is None:
        return "initial"
    return "rejected" if cached.token.token == reject else "expiring"


def _public_claims(token: str) -> dict[str, object]:
    claims = unverified_claims(token)
    return {k: claims[k] for k in ("aud", "iss", "tid", "oid", "appid", "azp", "exp") if k in claims}
