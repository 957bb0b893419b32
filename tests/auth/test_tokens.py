"""TokenProvider: cache, refresh buffer, singleflight, backoff, invalidation and metrics, on a fake clock."""

from __future__ import annotations

import random
import threading
import time

import pytest

from shared.auth.credentials import AccessToken
from shared.auth.tokens import RetryPolicy, TokenProvider
from shared.errors import AuthenticationRefusedError, CredentialUnavailableError, TokenServiceError
from tests.conftest import FakeClock, FakeTokenSource, Metrics

SCOPE = "https://ossrdbms-aad.database.windows.net/.default"


def make_provider(
    source: FakeTokenSource, clock: FakeClock, metrics: Metrics, *, buffer: float = 300.0, attempts: int = 3
) -> TokenProvider:
    return TokenProvider(
        source,
        scope=SCOPE,
        identity="uai",
        refresh_before_expiry=buffer,
        retry=RetryPolicy(max_attempts=attempts, initial_delay=1.0, max_delay=10.0, multiplier=2.0),
        clock=clock,
        metrics=metrics.auth,
        rng=random.Random(7),
    )


def test_provider_should_serve_cached_token_when_far_from_expiry(clock, metrics):
    source = FakeTokenSource(clock)
    provider = make_provider(source, clock, metrics)
    first = provider.get_token()
    clock.advance(3600 - 301)
    assert provider.get_token() is first
    assert len(source.calls) == 1
    assert metrics.value("replicator_mongo_token_cache_hits_total") == 1
    assert metrics.value("replicator_mongo_token_cache_misses_total") == 1


def test_provider_should_refresh_when_token_enters_refresh_buffer(clock, metrics):
    source = FakeTokenSource(clock)
    provider = make_provider(source, clock, metrics)
    first = provider.get_token()
    clock.advance(3600 - 299)
    second = provider.get_token()
    assert second.token != first.token
    assert metrics.value("replicator_mongo_token_refresh_total", reason="expiring") == 1
    assert metrics.value("replicator_mongo_token_refresh_total", reason="initial") == 1


def test_provider_should_use_half_lifetime_when_token_is_shorter_than_twice_the_buffer(clock, metrics):
    source = FakeTokenSource(clock, default_lifetime=240.0)  # shorter than the 300 s buffer
    provider = make_provider(source, clock, metrics)
    first = provider.get_token()
    clock.advance(100)
    assert provider.get_token() is first  # without the half-lifetime rule every call would fetch
    clock.advance(30)
    assert provider.get_token() is not first
    assert len(source.calls) == 2


def test_provider_should_never_return_the_rejected_token_when_server_refused_it(clock, metrics):
    source = FakeTokenSource(clock)
    provider = make_provider(source, clock, metrics)
    rejected = provider.get_token()
    replacement = provider.get_token(reject=rejected.token)
    assert replacement.token != rejected.token
    assert source.calls == [False, True]  # the second fetch asked the source to bypass its own cache
    assert metrics.value("replicator_mongo_token_refresh_total", reason="rejected") == 1


def test_provider_should_reuse_newer_token_when_another_caller_already_replaced_the_rejected_one(clock, metrics):
    source = FakeTokenSource(clock)
    provider = make_provider(source, clock, metrics)
    old = provider.get_token()
    new = provider.get_token(reject=old.token)
    assert provider.get_token(reject=old.token) is new  # a second client reporting the same rejection
    assert len(source.calls) == 2


def test_provider_should_fetch_once_when_100_callers_arrive_together(clock, metrics, run_threads):
    gate = threading.Event()
    source = FakeTokenSource(clock, gate=gate)
    provider = make_provider(source, clock, metrics)
    timer = threading.Timer(0.3, gate.set)  # hold the leader until every caller has piled up
    timer.start()
    results = run_threads(100, provider.get_token)
    timer.cancel()
    assert len(source.calls) == 1
    assert {r.token for r in results} == {"token-1"}
    assert metrics.value("replicator_mongo_token_refresh_total") == 1


def test_provider_should_hand_the_same_error_to_all_waiters_when_the_shared_request_fails(clock, metrics, run_threads):
    gate = threading.Event()
    refused = AuthenticationRefusedError("unknown identity")
    source = FakeTokenSource(clock, outcomes=[refused], gate=gate)
    provider = make_provider(source, clock, metrics)
    timer = threading.Timer(0.3, gate.set)
    timer.start()
    results = run_threads(20, provider.get_token)
    timer.cancel()
    assert len(source.calls) == 1
    assert all(r is refused for r in results)


def test_provider_should_retry_transient_failures_with_growing_jittered_backoff(clock, metrics):
    source = FakeTokenSource(clock, outcomes=[TokenServiceError("503"), TokenServiceError("timeout"), 3600.0])
    provider = make_provider(source, clock, metrics)
    assert provider.get_token().token == "token-3"
    assert len(clock.sleeps) == 2
    first, second = clock.sleeps
    assert 0.5 <= first <= 1.0  # equal jitter around the 1 s initial delay
    assert 1.0 <= second <= 2.0  # doubled
    assert metrics.value("replicator_mongo_auth_retry_attempts_total") == 2
    assert metrics.value("replicator_mongo_auth_attempts_total") == 3
    assert metrics.value("replicator_mongo_auth_failures_total", error_type="TokenServiceError") == 2
    assert metrics.value("replicator_mongo_auth_success_total") == 1


def test_backoff_should_never_exceed_max_delay_when_many_retries_happen():
    policy = RetryPolicy(max_attempts=10, initial_delay=1.0, max_delay=10.0, multiplier=2.0)
    rng = random.Random(1)
    assert max(policy.delay(n, rng) for n in range(1, 10)) <= 10.0
    assert policy.delay(9, rng) >= 5.0  # capped base 10 s, half of it fixed


def test_provider_should_wait_at_least_retry_after_when_the_source_says_so(clock, metrics):
    source = FakeTokenSource(clock, outcomes=[TokenServiceError("429", retry_after=5.0), 3600.0])
    provider = make_provider(source, clock, metrics)
    provider.get_token()
    assert clock.sleeps == [5.0]


def test_provider_should_not_retry_when_the_failure_is_permanent(clock, metrics):
    source = FakeTokenSource(clock, outcomes=[CredentialUnavailableError("no identity"), 3600.0])
    provider = make_provider(source, clock, metrics)
    with pytest.raises(CredentialUnavailableError):
        provider.get_token()
    assert len(source.calls) == 1
    assert clock.sleeps == []
    assert metrics.value("replicator_mongo_token_refresh_failures_total") == 1


def test_provider_should_give_up_after_max_attempts_when_failures_persist(clock, metrics):
    source = FakeTokenSource(clock, outcomes=[TokenServiceError("500")] * 5)
    provider = make_provider(source, clock, metrics, attempts=3)
    with pytest.raises(TokenServiceError):
        provider.get_token()
    assert len(source.calls) == 3
    assert metrics.value("replicator_mongo_token_refresh_failures_total") == 1


def test_provider_should_treat_unexpected_exceptions_as_transient(clock, metrics):
    source = FakeTokenSource(clock, outcomes=[RuntimeError("surprise"), 3600.0])
    provider = make_provider(source, clock, metrics)
    assert provider.get_token().token == "token-2"
    assert metrics.value("replicator_mongo_auth_failures_total", error_type="TokenServiceError") == 1


class CachingSource(FakeTokenSource):
    """Like a credential with its own cache: an unforced fetch returns the same token until forced."""

    def fetch(self, scope: str, *, fresh: bool) -> AccessToken:
        with self._lock:
            self.calls.append(fresh)
        if self.gate is not None and len(self.calls) > 1:
            self.gate.wait(10)
        return AccessToken("fresh" if fresh else "cached", self.clock.time() + 3600)


def test_provider_should_force_a_refresh_when_a_joined_refresh_returned_the_rejected_token(clock, metrics):
    gate = threading.Event()
    source = CachingSource(clock, gate=gate)
    provider = make_provider(source, clock, metrics)
    assert provider.get_token().token == "cached"
    clock.advance(3600 - 200)  # inside the refresh buffer: the next caller refreshes, unforced
    expiring = threading.Thread(target=provider.get_token)
    expiring.start()
    while len(source.calls) < 2:  # the unforced refresh is under way, held at the gate
        time.sleep(0.01)
    threading.Timer(0.2, gate.set).start()
    replacement = provider.get_token(reject="cached")  # joins it; it returns the refused token again
    expiring.join(10)
    assert replacement.token == "fresh"
    assert source.calls == [False, False, True]


def test_provider_should_record_duration_and_attempt_metrics_under_their_feature_list_names(clock, metrics):
    provider = make_provider(FakeTokenSource(clock), clock, metrics)
    provider.get_token()
    provider.get_token()
    assert {
        "replicator_mongo_auth_attempts_total",
        "replicator_mongo_auth_success_total",
        "replicator_mongo_auth_duration_seconds",
        "replicator_mongo_token_refresh_total",
        "replicator_mongo_token_cache_hits_total",
        "replicator_mongo_token_cache_misses_total",
    } <= metrics.names()
    assert metrics.value("replicator_mongo_auth_duration_seconds", outcome="success") == 1  # one sample
