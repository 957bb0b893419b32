"""Auth latency benchmark: cached and cold token fetches through the pymongo OIDC callback, and singleflight.

Measures, against the local managed identity stub (real ``ManagedIdentityCredential``, real HTTP on
loopback, RS256 signing in the stub):

* cached: a new client's callback asking a warm ``TokenProvider`` (the path every new MongoClient takes);
* cold: a callback on a brand-new provider and credential, so the token comes over HTTP from the endpoint;
* singleflight: how many endpoint requests 100 concurrent callbacks (100 clients) on a cold provider cause.

Targets (issue #2, the feature list's auth-latency bar): cached p99 < 1 ms, cold p99 < 200 ms, exactly 1
request for 100 callers. Run: ``.venv/bin/python -m bench.auth_latency [--json]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from pymongo.auth_oidc import OIDCCallbackContext

from localdev.standins.mi_stub import ManagedIdentityStub
from shared.auth.credentials import ManagedIdentitySource
from shared.auth.oidc import EntraOIDCCallback
from shared.auth.scopes import DOCUMENTDB_SCOPE
from shared.auth.tokens import RetryPolicy, TokenProvider
from shared.clock import SystemClock
from shared.telemetry import AuthMetrics

TENANT = "72f988bf-0000-4000-8000-00000000cafe"
CLIENT_ID = "5a6b7c8d-0000-4000-8000-0000000000a1"
CONTEXT = OIDCCallbackContext(timeout_seconds=60, version=1, username="")


def new_provider() -> TokenProvider:
    """A provider with its own credential (an empty MSAL cache), as after a process start."""
    source = ManagedIdentitySource(client_id=CLIENT_ID, timeout=30.0, environ=os.environ)
    return TokenProvider(
        source,
        scope=DOCUMENTDB_SCOPE,
        identity=CLIENT_ID,
        refresh_before_expiry=300.0,
        retry=RetryPolicy(),
        clock=SystemClock(),
        metrics=AuthMetrics(),
    )


def timed_ms(fn: Callable[[], Any]) -> float:
    started = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - started) / 1e6


def percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "n": len(samples),
        "p50_ms": round(cuts[49], 4),
        "p99_ms": round(cuts[98], 4),
        "max_ms": round(max(samples), 4),
    }


def bench_cached(n: int) -> dict[str, float]:
    provider = new_provider()
    EntraOIDCCallback(provider, endpoint="bench").fetch(CONTEXT)  # warm the provider
    return percentiles(
        [timed_ms(lambda: EntraOIDCCallback(provider, endpoint="bench").fetch(CONTEXT)) for _ in range(n)]
    )


def bench_cold(n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        callback = EntraOIDCCallback(new_provider(), endpoint="bench")
        samples.append(timed_ms(functools.partial(callback.fetch, CONTEXT)))
    return percentiles(samples)


def bench_singleflight(stub: ManagedIdentityStub, callers: int) -> dict[str, int]:
    provider = new_provider()
    barrier = threading.Barrier(callers)
    before = stub.request_count

    def caller() -> None:
        callback = EntraOIDCCallback(provider, endpoint="bench")
        barrier.wait()
        callback.fetch(CONTEXT)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"callers": callers, "endpoint_requests": stub.request_count - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached", type=int, default=10_000, help="cached fetches to time")
    parser.add_argument("--cold", type=int, default=200, help="cold fetches to time")
    parser.add_argument("--callers", type=int, default=100, help="concurrent callbacks for the singleflight check")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    with ManagedIdentityStub(tenant_id=TENANT, identities={CLIENT_ID: "0b1c2d3e-0000-4000-8000-0000000000b2"}) as stub:
        os.environ.update(stub.environ())  # azure-identity / MSAL read these from the process environment
        results: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cpu, Python {platform.python_version()}",
            "cached": bench_cached(args.cached),
            "cold": bench_cold(args.cold),
            "singleflight": bench_singleflight(stub, args.callers),
        }
    results["targets_met"] = {
        "cached_p99_under_1ms": results["cached"]["p99_ms"] < 1.0,
        "cold_p99_under_200ms": results["cold"]["p99_ms"] < 200.0,
        "one_request_for_all_callers": results["singleflight"]["endpoint_requests"] == 1,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"auth latency on {results['machine']}")
    for name in ("cached", "cold"):
        r = results[name]
        print(
            f"  {name:<7} n={r['n']:<6} p50 {r['p50_ms']:>8.4f} ms"
            f"  p99 {r['p99_ms']:>8.4f} ms  max {r['max_ms']:.3f} ms"
        )
    s = results["singleflight"]
    print(f"  {s['callers']} concurrent callbacks -> {s['endpoint_requests']} endpoint request(s)")
    print("  targets: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in results["targets_met"].items()))


if __name__ == "__main__":
    main()
