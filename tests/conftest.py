"""Fakes of our own interfaces (clock, token source, metrics reader) shared by the test modules.

Stand-ins for what cannot run here (the managed identity endpoint, an OIDC-enforcing server) live in
``localdev``; this file holds in-memory fakes, small helpers, and the fixtures that start what several modules share
(the session's nx-27017, the scripted mockupdb change-stream source of ``tests/change_streams.py``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from bson.raw_bson import RawBSONDocument
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pymongo.collection import Collection

from localdev.standins.nx import NxServer
from localdev.standins.stack import LocalStack
from shared.auth.credentials import AccessToken
from shared.auth.mongo_client import ClientFactory
from shared.clock import SystemClock
from shared.config import MongoConfig, ReplicatorConfig
from shared.position import CheckpointStore
from shared.replicate import ReplayResult, Replicator, replay
from shared.services import Services, build_services
from shared.telemetry import AuthMetrics, ReplicationMetrics
from tests.change_streams import ScriptedSource

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
PRINCIPAL = "99999999-8888-7777-6666-555555555555"


class FakeClock:
    """Wall and monotonic time that only move when a test (or a backoff sleep) moves them."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.mono = 1000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


@dataclass
class FakeTokenSource:
    """A token source scripted by a list of outcomes (an exception to raise, or a lifetime in seconds)."""

    clock: FakeClock
    outcomes: list[Exception | float] = field(default_factory=list)
    default_lifetime: float = 3600.0
    kind: str = "managed_identity"
    description: str = "fake managed identity"
    calls: list[bool] = field(default_factory=list)  # the ``fresh`` flag of each call
    gate: threading.Event | None = None  # when set, fetch waits for it (to pile up concurrent callers)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fetch(self, scope: str, *, fresh: bool) -> AccessToken:
        with self._lock:
            self.calls.append(fresh)
            n = len(self.calls)
            outcome = self.outcomes.pop(0) if self.outcomes else self.default_lifetime
        if self.gate is not None:
            self.gate.wait(10)
        if isinstance(outcome, Exception):
            raise outcome
        return AccessToken(f"token-{n}", self.clock.time() + outcome)


class Metrics:
    """Our instruments on a private meter provider, with helpers to read them back."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        meter = MeterProvider(metric_readers=[self.reader]).get_meter("test")
        self.auth = AuthMetrics(meter)
        self.replication = ReplicationMetrics(meter)

    def value(self, name: str, **attributes: Any) -> float:
        total = 0.0
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        attrs = dict(point.attributes or {})
                        if all(attrs.get(k) == v for k, v in attributes.items()):
                            total += getattr(point, "value", None) or getattr(point, "count", 0) or 0
        return total

    def names(self) -> set[str]:
        data = self.reader.get_metrics_data()
        return {m.name for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics for m in sm.metrics}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def run_threads() -> Callable[[int, Callable[[], Any]], list[Any]]:
    """Run a function in N threads at once and return their results (exceptions are returned, not raised)."""

    def run(n: int, fn: Callable[[], Any]) -> list[Any]:
        results: list[Any] = [None] * n
        start = threading.Barrier(n)

        def worker(i: int) -> None:
            start.wait()
            try:
                results[i] = fn()
            except Exception as exc:
                results[i] = exc

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return results

    return run


# ---------------------------------------------------------------------------------------------- stand-ins


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    """nx-27017 behind the OIDC proxy, tokens from the managed identity stub (environment set for MSAL)."""
    with LocalStack(tmp_path / "stack") as started:
        for name, value in started.environ().items():
            monkeypatch.setenv(name, value)
        yield started


def write_config(directory: Path, data: dict[str, Any]) -> Path:
    path = directory / "replicator.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stack_config(stack: LocalStack, **stream_overrides: Any) -> dict[str, Any]:
    """Checkpoints and a stream's source through the proxy with Entra; the estuary with a plain URI."""
    stream = {
        "name": "orders",
        "source": stack.entra_endpoint("shop", "orders"),
        "estuary": stack.plain_endpoint("replica", "orders"),
        **stream_overrides,
    }
    return {"checkpoints": stack.entra_endpoint("replicator"), "streams": [stream]}


# ---------------------------------------------------------------------------------------------- scripted source


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[ScriptedSource]:
    """One mockupdb change-stream source per test module (stopping one takes a second); tests take ``scripted``."""
    started = ScriptedSource().start()
    yield started
    started.server.stop()


@pytest.fixture
def scripted(scripted_server: ScriptedSource) -> ScriptedSource:
    """The module's scripted source, with fresh scripts."""
    scripted_server.reset()
    return scripted_server


@pytest.fixture
def scripted_collection(scripted: ScriptedSource) -> Iterator[Collection[RawBSONDocument]]:
    """``shop.orders`` on the scripted source, read as raw BSON."""
    factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 5000})
    yield factory.collection(MongoConfig(connection_uri=scripted.uri, database="shop", collection="orders"))
    factory.close()


# ---------------------------------------------------------------------------------------------- replication


@pytest.fixture(scope="session")
def nx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NxServer]:
    """One nx-27017 for the session; tests isolate themselves with their own database names."""
    with NxServer(tmp_path_factory.mktemp("nx-session")) as server:
        yield server


class Harness:
    """Source, estuary and checkpoint endpoints on one server, in databases unique to the test."""

    def __init__(self, uri: str, prefix: str, metrics: Metrics) -> None:
        self.uri = uri
        self.prefix = prefix
        self.metrics = metrics
        self.factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 5000})
        client = self.factory.client(MongoConfig(connection_uri=uri))
        self.source = client[f"{prefix}_src"]["orders"]
        self.estuary = client[f"{prefix}_dst"]["orders"]
        self.state = client[f"{prefix}_rep"]

    def stream(self, **overrides: Any) -> dict[str, Any]:
        return {
            "name": "orders",
            "source": {"connection_uri": self.uri, "database": f"{self.prefix}_src", "collection": "orders"},
            "estuary": {"connection_uri": self.uri, "database": f"{self.prefix}_dst", "collection": "orders"},
            "poll_interval": 0.1,
            "idle_timeout": 0.6,
            "time_budget": 30,
            "lease_duration": 10,
            **overrides,
        }

    def config(self, **overrides: Any) -> ReplicatorConfig:
        checkpoints = {"connection_uri": self.uri, "database": f"{self.prefix}_rep"}
        return ReplicatorConfig.model_validate({"checkpoints": checkpoints, "streams": [self.stream(**overrides)]})

    def services(self, config: ReplicatorConfig | None = None, *, clock: Any = None) -> Services:
        return build_services(
            config or self.config(),
            factory=self.factory,
            clock=clock or SystemClock(),
            metrics=self.metrics.replication,
        )

    def replicator(self, config: ReplicatorConfig | None = None, *, clock: Any = None) -> Replicator:
        return self.services(config, clock=clock).replicator

    @property
    def checkpoints(self) -> CheckpointStore:
        """The checkpoint store every replicator of this harness uses (their configurations share it)."""
        return self.services().checkpoints

    def converged(self) -> bool:
        return sorted(self.source.find(), key=str) == sorted(self.estuary.find(), key=str)


@pytest.fixture
def harness(nx_server: NxServer, request: pytest.FixtureRequest) -> Iterator[Harness]:
    prefix = "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]  # noqa: S324 (a name, not security)
    made = Harness(nx_server.uri, prefix, Metrics())
    yield made
    made.factory.close()


def wait_until(condition: Callable[[], object], timeout: float = 20.0) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``shared.cli.main`` configures process-wide logging, as a command line should; other tests must not
    inherit it."""
    root, ours = logging.getLogger(), logging.getLogger("shared")
    saved = (root.handlers[:], root.level, ours.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    ours.setLevel(saved[2])


def replay_stream(services: Services, name: str = "orders", **overrides: Any) -> ReplayResult:
    """``replay`` of one stream with the services' collaborators (any of them overridden by keyword)."""
    stream = services.config.stream(name)
    collaborators: dict[str, Any] = {
        "dead_letters": services.dead_letters,
        "checkpoints": services.checkpoints,
        "source": services.clients.collection(stream.source),
        "estuary": services.clients.collection(stream.estuary),
        "clock": services.clock,
    }
    return replay(stream, **{**collaborators, **overrides})
