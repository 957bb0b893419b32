"""What the quickstart scenarios share: the running stand-ins, the command line run in-process, checks and waits.

``Stand`` is handed to every scenario; ``replicate_while`` runs passes the way the timer does while the scenario's
application writes, so that each scenario states only what it changes and what it proves.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pymongo import MongoClient

from localdev.standins.nx import NxServer
from localdev.standins.stack import CLIENT_ID, TENANT_ID, LocalStack
from shared.auth.mongo_client import ClientFactory
from shared.cli import main as cli
from shared.config import ReplicatorConfig
from shared.position import CheckpointStore
from shared.services import build_services

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
    services = build_services(config, factory=factory)
    stop, events, errors = threading.Event(), [0], list[Exception]()

    def run() -> None:
        while not stop.is_set():  # as the timer keeps scheduling passes: one that went idle is followed by another
            try:
                events[0] += services.replicator.run_pass(stream, stop=stop).events
            except Exception as exc:  # noqa: BLE001 (reported as the scenario's failure)
                errors.append(exc)
                return

    worker = threading.Thread(target=run, name=f"passes-{stream}", daemon=True)
    try:
        worker.start()
        # A new stream saves where it starts at once; the application's writes come after that point.
        wait_for(lambda: _has_position(services.checkpoints, stream) or errors, "the stream saved its start")
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


def _has_position(checkpoints: CheckpointStore, stream: str) -> bool:
    checkpoint = checkpoints.read(stream)
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
