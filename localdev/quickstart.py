"""Quickstart validation scenarios (feature list T032): what the Entra ID release promises, shown on stand-ins.

Starts the local stand-ins (nx-27017 behind the OIDC-enforcing proxy, the managed identity endpoint stub, a
second nx-27017 for an estuary) and runs seven scenarios through the code the app runs: ``python -m shared``
(``shared.cli.main``), ``Replicator`` passes, and the ``ClientFactory`` / ``TokenProvider`` behind every
MongoClient. Each prints one ``PASS`` / ``FAIL`` line saying what it proves; ``--verbose`` also shows the
command output behind it. Exit status 0 only when every scenario passes. Everything started is stopped on exit,
Ctrl-C and SIGTERM included. Run: ``./scripts/quickstart.sh`` (or ``python -m localdev.quickstart``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pymongo import MongoClient
from pymongo.auth_oidc import OIDCCallbackContext

from localdev.standins.nx import NxServer
from localdev.standins.stack import CLIENT_ID, PRINCIPAL_ID, TENANT_ID, LocalStack
from shared.auth.mongo_client import ClientFactory
from shared.auth.oidc import EntraOIDCCallback
from shared.auth.scopes import DOCUMENTDB_SCOPE
from shared.cli import main as cli
from shared.clock import SystemClock
from shared.config import MongoConfig, ReplicatorConfig
from shared.config_loader import load_config
from shared.replicate import Replicator
from shared.telemetry import ReplicationMetrics

ROOT = Path(__file__).resolve().parent.parent
CONNECTION_STRING_EXAMPLE = ROOT / "examples" / "configs" / "azure" / "connection-string.yaml"
NOSQL_SCOPE = "https://cosmos.azure.com/.default"  # the Cosmos DB for NoSQL audience: wrong for a MongoDB cluster
UNREGISTERED = "00000000-0000-4000-8000-0000000000ff"  # the only principal the second cluster knows
FAST = {"poll_interval": "100ms", "idle_timeout": "1s", "time_budget": "60s", "lease_duration": "10s"}
Doc = dict[str, Any]


class CheckFailedError(Exception):
    """A scenario's check did not hold; the message says which."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailedError(message)


@dataclass
class CliRun:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return (self.out + self.err).strip()


@dataclass
class Stand:
    """The running stand-ins and what the scenarios share: a work directory and a transcript."""

    stack: LocalStack
    sink: NxServer
    work_dir: Path
    transcript: list[str] = field(default_factory=list)
    clients: list[MongoClient[Doc]] = field(default_factory=list)

    def cli(self, *args: str) -> CliRun:
        """``python -m shared ARGS`` in this process, its output captured; logging restored afterwards."""
        root, ours = logging.getLogger(), logging.getLogger("shared")
        saved = (root.handlers[:], root.level, ours.level)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli(list(args))
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
            ours.setLevel(saved[2])
        run = CliRun(code, out.getvalue(), err.getvalue())
        self.transcript.append(f"$ python -m shared {' '.join(args)}   (exit {code})\n{run.text}")
        return run

    def config_file(self, name: str, data: Mapping[str, Any]) -> Path:
        path = self.work_dir / name
        path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
        return path

    def entra_config(self, stream: str, **stream_settings: Any) -> dict[str, Any]:
        """Every endpoint through the proxy with the user-assigned identity (the shape of entra-user-assigned.yaml)."""
        proxy = self.stack.proxy.uri
        return {
            "defaults": {
                "auth_method": "entra",
                "tenant_id": TENANT_ID,
                "client_id": CLIENT_ID,
                "credential": "managed_identity",
            },
            "checkpoints": {"connection_uri": proxy, "database": "replicator"},
            "streams": [
                {
                    "name": stream,
                    "source": {"connection_uri": proxy, "database": "shop", "collection": stream},
                    "estuary": {"connection_uri": proxy, "database": "replica", "collection": stream},
                    **stream_settings,
                }
            ],
        }

    def direct(self, uri: str, database: str, collection: str) -> Any:
        """A collection read directly (no proxy, no token): the application's and the checker's view."""
        client: MongoClient[Doc] = MongoClient(uri, serverSelectionTimeoutMS=5000)
        self.clients.append(client)
        return client[database][collection]

    def close(self) -> None:
        for client in self.clients:
            client.close()


@contextlib.contextmanager
def environment(settings: Mapping[str, str]) -> Iterator[None]:
    """App settings for one scenario, as the Functions host would provide them; restored afterwards."""
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise CheckFailedError(f"timed out waiting until {what}")
        time.sleep(0.05)


def same_documents(source: Any, estuary: Any) -> bool:
    return sorted(source.find(), key=str) == sorted(estuary.find(), key=str)


def replicate_while(config: ReplicatorConfig, stream: str, source: Any, estuary: Any, write: Callable[[], int]) -> int:
    """Run passes of ``stream`` back to back while ``write`` changes the source; stop once the estuary equals it.

    Returns the number of change events the passes read. Any error of a pass fails the scenario.
    """
    factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 5000})
    replicator = Replicator(config, factory=factory, clock=SystemClock(), metrics=ReplicationMetrics())
    stop, events, errors = threading.Event(), [0], list[Exception]()

    def run() -> None:
        while not stop.is_set():  # as the timer keeps scheduling passes: one that went idle is followed by another
            try:
                events[0] += replicator.run_pass(stream, stop=stop).events
            except Exception as exc:  # noqa: BLE001 (reported as the scenario's failure)
                errors.append(exc)
                return

    worker = threading.Thread(target=run, name=f"passes-{stream}", daemon=True)
    try:
        worker.start()
        # A new stream saves where it starts at once; the application's writes come after that point.
        wait_for(lambda: _has_position(replicator, stream) or errors, "the stream saved its start")
        written = write() if not errors else 0
        wait_for(lambda: same_documents(source, estuary) or errors, "the estuary equals the source")
    finally:
        stop.set()
        worker.join(30)
        factory.close()
    if errors:
        raise CheckFailedError(f"a pass failed: {getattr(errors[0], 'message', None) or errors[0]!r}")
    check(not worker.is_alive(), "the pass did not stop")
    check(same_documents(source, estuary), "the estuary differs from the source")
    check(events[0] == written, f"{written} changes written but {events[0]} events replicated")
    return events[0]


def _has_position(replicator: Replicator, stream: str) -> bool:
    checkpoint = replicator.checkpoints.read(stream)
    return checkpoint is not None and checkpoint.resume_token is not None


def orders(collection: Any, prefix: str, n: int) -> int:
    """``n`` inserts, every third updated, every fifth deleted; returns the change events caused."""
    collection.insert_many([{"_id": f"{prefix}{i:03}", "qty": i} for i in range(n)])
    updated, deleted = range(0, n, 3), range(1, n, 5)
    for i in updated:
        collection.update_one({"_id": f"{prefix}{i:03}"}, {"$inc": {"qty": 1}})
    for i in deleted:
        collection.delete_one({"_id": f"{prefix}{i:03}"})
    return n + len(updated) + len(deleted)


# ---------------------------------------------------------------------------------------------- the scenarios


def connection_strings_unchanged(s: Stand) -> str:
    settings = {
        "SOURCE_MONGODB_URI": s.stack.nx.uri,
        "ESTUARY_MONGODB_URI": s.sink.uri,
        "CHECKPOINTS_MONGODB_URI": s.sink.uri,
    }
    example = str(CONNECTION_STRING_EXAMPLE)
    tokens_before = s.stack.stub.request_count
    with environment(settings):
        validate = s.cli("validate", "--config", example)
        check(validate.code == 0 and "0 using Entra ID" in validate.out, f"validate: {validate.text}")
        test_auth = s.cli("test-auth", "--config", example)
        check(test_auth.code == 0 and "auth   connection string" in test_auth.out, f"test-auth: {test_auth.text}")
        config = load_config(example)
    source, estuary = s.direct(s.stack.nx.uri, "shop", "orders"), s.direct(s.sink.uri, "shop", "orders")
    events = replicate_while(config, "orders", source, estuary, lambda: orders(source, "cs", 20))
    check(s.stack.stub.request_count == tokens_before, "a connection-string configuration asked for a token")
    return (
        f"examples/configs/azure/{CONNECTION_STRING_EXAMPLE.name} as shipped: validate and test-auth exit 0, "
        f"{events} of {events} changes replicated, no token requested"
    )


def entra_test_auth(s: Stand) -> str:
    path = s.config_file("entra.yaml", s.entra_config("invoices"))
    validate = s.cli("validate", "--config", str(path))
    check(validate.code == 0 and "3 using Entra ID" in validate.out, f"validate: {validate.text}")
    before = s.stack.stub.request_count
    test_auth = s.cli("test-auth", "--config", str(path))
    check(test_auth.code == 0 and "all endpoints OK" in test_auth.out, f"test-auth: {test_auth.text}")
    check(f"principal (object id) {PRINCIPAL_ID}" in test_auth.out, "test-auth did not show the principal id")
    requests = s.stack.stub.request_count - before
    check(requests == 1, f"{requests} token requests for one identity")
    return f"3 endpoints OK with 1 token request; principal (object id) {PRINCIPAL_ID} shown"


def wrong_scope_refused(s: Stand) -> str:
    data = s.entra_config("invoices")
    data["defaults"]["scopes"] = [NOSQL_SCOPE]
    path = s.config_file("wrong-scope.yaml", data)
    before = s.stack.stub.request_count
    validate = s.cli("validate", "--config", str(path))
    check(validate.code == 2, f"validate exited {validate.code}, not 2: {validate.text}")
    check(DOCUMENTDB_SCOPE in validate.err and "Cosmos DB for NoSQL" in validate.err, f"message: {validate.text}")
    check(s.stack.stub.request_count == before, "validation asked for a token")
    return f"{NOSQL_SCOPE} refused with exit 2, naming {DOCUMENTDB_SCOPE}; no token requested"


def unregistered_principal_explained(s: Stand) -> str:
    # A second "cluster" that knows another principal only: our identity gets a token, the server refuses it.
    with LocalStack(s.work_dir / "unregistered", allowed_principals=[UNREGISTERED]) as other:
        data = {
            "checkpoints": other.entra_endpoint("replicator"),
            "streams": [
                {
                    "name": "orders",
                    "source": other.entra_endpoint("shop", "orders"),
                    "estuary": other.plain_endpoint("replica", "orders"),
                }
            ],
        }
        path = s.config_file("unregistered.yaml", data)
        with environment(other.environ()):
            run = s.cli("test-auth", "--config", str(path), "--timeout", "5")
    check(run.code == 1, f"test-auth exited {run.code}, not 1: {run.text}")
    source = run.out.split("\n\n")[1]  # one block per endpoint: checkpoints, source, estuary
    check("the server refused the Entra token (AuthenticationFailed)" in source, f"source: {source}")
    check(f"Tip: register principal (object id) {PRINCIPAL_ID}" in source, f"no registration hint: {source}")
    check("MicrosoftEntraID" in source, f"no hint about allowedModes: {source}")
    return f"exit 1, 'the server refused the Entra token', Tip: register principal (object id) {PRINCIPAL_ID} ..."


def reauthentication_loses_nothing(s: Stand) -> str:
    config = load_config(s.config_file("reauth.yaml", s.entra_config("reauth", **FAST)))
    source = s.direct(s.stack.nx.uri, "shop", "reauth")
    estuary = s.direct(s.stack.nx.uri, "replica", "reauth")
    proxy, stub = s.stack.proxy, s.stack.stub
    before: dict[str, Any] = {}

    def write() -> int:
        first = orders(source, "a", 30)
        wait_for(lambda: estuary.count_documents({}) == source.count_documents({}), "the first writes arrived")
        before.update(reauth=proxy.reauth_sent, requests=stub.request_count, token=stub.issued_tokens[-1])
        proxy.inject_reauth(1, commands={"getMore"})  # the server demands a new token on the change stream
        return first + orders(source, "b", 30)

    events = replicate_while(config, "reauth", source, estuary, write)
    check(proxy.reauth_sent - before["reauth"] == 1, "the 391 was not sent")
    check(stub.request_count - before["requests"] == 1, "no fresh token was requested after the 391")
    check(stub.issued_tokens[-1] != before["token"], "the refused token was handed back")
    return f"391 on a change-stream getMore: 1 new token, not the refused one; {events} of {events} changes replicated"


def singleflight(s: Stand) -> str:
    callers = 100
    factory = ClientFactory()
    try:
        provider = factory.token_provider(MongoConfig.model_validate(s.stack.entra_endpoint("replicator")))
        context = OIDCCallbackContext(timeout_seconds=60, version=1, username="")
        barrier, tokens, errors = threading.Barrier(callers), [], []

        def caller() -> None:
            callback = EntraOIDCCallback(provider, endpoint="quickstart")  # one per MongoClient, as pymongo has it
            try:
                barrier.wait(10)
                tokens.append(callback.fetch(context).access_token)
            except Exception as exc:  # noqa: BLE001 (counted and reported)
                errors.append(exc)

        before = s.stack.stub.request_count
        threads = [threading.Thread(target=caller) for _ in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        requests = s.stack.stub.request_count - before
    finally:
        factory.close()
    check(not errors and len(tokens) == callers, f"{len(errors)} callers failed: {errors[:1]}")
    check(requests == 1, f"{requests} identity-endpoint requests for {callers} concurrent callers")
    check(len(set(tokens)) == 1, "the callers got different tokens")
    return f"{callers} OIDC callbacks at once: {requests} request to the identity endpoint, all got the same token"


def refresh_before_expiry(s: Stand) -> str:
    stub, proxy, lifetime = s.stack.stub, s.stack.proxy, 3.0
    stub.token_lifetime = lifetime
    try:
        # (a) The provider renews a token once less than half its lifetime is left (the buffer, 300 s by default,
        # is capped at half the lifetime of short tokens), while the old token is still valid.
        factory = ClientFactory()
        try:
            provider = factory.token_provider(MongoConfig.model_validate(s.stack.entra_endpoint("replicator")))
            first = provider.get_token()
            time.sleep((first.expires_on - time.time()) / 2 + 0.1)  # just past half the token's actual lifetime
            renewed = provider.get_token()
            renewed_at = time.time()
        finally:
            factory.close()
        check(renewed.token != first.token, "the provider handed out a token past its refresh point")
        check(renewed_at < first.expires_on, "the token was renewed only after it had expired")
        # (b) Replication across several token lifetimes: the server's re-authentication requests are answered
        # with fresh tokens, and the stream never sees an error.
        config = load_config(s.config_file("refresh.yaml", s.entra_config("refresh", **FAST)))
        source = s.direct(s.stack.nx.uri, "shop", "refresh")
        estuary = s.direct(s.stack.nx.uri, "replica", "refresh")
        before = (stub.request_count, proxy.reauth_sent, len(proxy.auth_events))

        def write() -> int:
            changes, until = 0, time.monotonic() + 3 * lifetime
            while time.monotonic() < until:
                source.insert_one({"_id": f"r{changes:04}", "at": time.time()})
                changes += 1
                time.sleep(0.05)
            return changes

        events = replicate_while(config, "refresh", source, estuary, write)
        tokens, reauths = stub.request_count - before[0], proxy.reauth_sent - before[1]
        expired = sum(e.reason == "expired" for e in proxy.auth_events[before[2] :])
        check(tokens >= 2, f"only {tokens} token(s) in {3 * lifetime:.0f} s of {lifetime:.0f}-second tokens")
        check(expired == 0, f"the server was offered an expired token {expired} time(s)")
    finally:
        stub.token_lifetime = 3600.0
    return (
        f"a {lifetime:.0f} s token renewed {first.expires_on - renewed_at:.1f} s before it expired; {events} changes "
        f"over {3 * lifetime:.0f} s with {tokens} tokens ({reauths} re-authentications asked by the server), no error, "
        "no expired token offered"
    )


@dataclass(frozen=True)
class Scenario:
    claim: str  # what passing proves
    run: Callable[[Stand], str]  # returns the evidence; raises CheckFailedError


SCENARIOS = (
    Scenario(
        "connection-string configurations work unchanged (backward compatibility, T031)", connection_strings_unchanged
    ),
    Scenario("an Entra ID configuration validates and test-auth passes with the managed identity", entra_test_auth),
    Scenario("a wrong scope is refused by validation, naming the scope DocumentDB expects", wrong_scope_refused),
    Scenario(
        "test-auth explains an unregistered principal: its id and how to register it", unregistered_principal_explained
    ),
    Scenario(
        "a forced re-authentication (391) mid-stream fetches a fresh token and loses nothing",
        reauthentication_loses_nothing,
    ),
    Scenario("100 concurrent token requests cause one identity-endpoint request", singleflight),
    Scenario("short-lived tokens are refreshed before they expire, without errors", refresh_before_expiry),
)


def run(work_dir: Path, verbose: bool) -> int:
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    logs = io.StringIO()  # the replicator's own warnings, shown with a failure (or with --verbose)
    handler = logging.StreamHandler(logs)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    started, passed = time.monotonic(), 0
    print(f"quickstart: {len(SCENARIOS)} scenarios against the local stand-ins (work directory {work_dir})\n")
    with LocalStack(work_dir / "stack") as stack, NxServer(work_dir / "estuary") as sink:
        os.environ.update(stack.environ())  # what the Functions host sets for an app with a managed identity
        stand = Stand(stack, sink, work_dir)
        try:
            passed = run_scenarios(stand, logs, verbose)
        finally:
            stand.close()
    print(f"\n{passed} of {len(SCENARIOS)} scenarios passed in {time.monotonic() - started:.1f}s; stand-ins stopped")
    return 0 if passed == len(SCENARIOS) else 1


def run_scenarios(stand: Stand, logs: io.StringIO, verbose: bool) -> int:
    """Run every scenario, print its line (and, on failure or with --verbose, what lies behind it)."""
    passed = 0
    for number, scenario in enumerate(SCENARIOS, 1):
        stand.transcript.clear()
        logs.seek(0)
        logs.truncate()
        at = time.monotonic()
        try:
            evidence, ok = scenario.run(stand), True
        except CheckFailedError as exc:
            evidence, ok = str(exc), False
        except Exception as exc:  # noqa: BLE001 (a scenario that crashed is a failed scenario, not a crash)
            evidence, ok = f"unexpected {type(exc).__name__}: {exc}", False
        passed += ok
        print(
            f"{'PASS' if ok else 'FAIL'}  {number}. {scenario.claim}: {evidence} [{time.monotonic() - at:.1f}s]",
            flush=True,
        )
        if verbose or not ok:
            details = [*stand.transcript, *([logs.getvalue().strip()] if logs.getvalue().strip() else [])]
            for block in details:
                print("\n".join(f"      | {line}" for line in block.splitlines()))
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/quickstart.sh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work-dir", type=Path, default=Path(".local/quickstart"), help="for the stand-ins' data and configs"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the commands' output for every scenario")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: _interrupt())  # stop the stand-ins like Ctrl-C does
    try:
        code = run(args.work_dir.resolve(), args.verbose)
    except KeyboardInterrupt:
        print("\ninterrupted; stand-ins stopped", file=sys.stderr)
        code = 130
    raise SystemExit(code)


def _interrupt() -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
