"""The stand-ins of a chaos run and the configuration files that point the workers at them.

Source: a ``FaithfulServer`` (every BSON value stored as its exact bytes, change streams) behind the
MONGODB-OIDC proxy, tokens from the managed identity stub, which the workers reach through a ``FaultProxy`` so that
the identity endpoint can go away. Estuary: a second ``FaithfulServer`` (a replica set, so the fence uses
transactions), reached by each worker through its own ``FaultProxy`` so that one worker's estuary path can stall
alone; it refuses documents with a top-level ``poison`` field (the planted dead letters). Checkpoints live on the
estuary server too, reached directly.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from localdev.standins.faithful import FaithfulServer
from localdev.standins.fault_proxy import FaultProxy
from localdev.standins.mi_stub import TOKEN_PATH, ManagedIdentityStub
from localdev.standins.oidc_proxy import OIDCProxy
from localdev.standins.service import Service
from localdev.standins.stack import CLIENT_ID, PRINCIPAL_ID, TENANT_ID
from shared.auth.scopes import DOCUMENTDB_RESOURCE

_log = logging.getLogger(__name__)

SOURCE_DB, ESTUARY_DB, CHECKPOINT_DB = "shop", "replica", "replicator"
POISON_FIELD = "poison"
TOKEN_LIFETIME = 60.0  # seconds: short, so that workers renew their tokens during a run


@dataclass(frozen=True)
class Stream:
    """One replicated collection: the stream's name is the collection's, on both sides."""

    name: str

    @property
    def source_ns(self) -> str:
        return f"{SOURCE_DB}.{self.name}"

    @property
    def estuary_ns(self) -> str:
        return f"{ESTUARY_DB}.{self.name}"


STREAMS = (Stream("orders"), Stream("customers"))

# Short leases and passes, so that takeovers, expiries and retries happen many times in a few minutes.
STREAM_SETTINGS: dict[str, Any] = {
    "lease_duration": 10,
    "write_timeout": 3,
    "poll_interval": 0.2,
    "idle_timeout": 3,
    "time_budget": 20,
    "max_apply_attempts": 2,
    "fencing": "auto",
    "initial_sync": True,
}
LEASE_DURATION = float(STREAM_SETTINGS["lease_duration"])


class World(Service):
    """Starts (and stops, in reverse order, whatever started) every stand-in of a run."""

    def __init__(self, workers: int, *, token_lifetime: float = TOKEN_LIFETIME) -> None:
        self.workers = workers
        self.stub = ManagedIdentityStub(
            tenant_id=TENANT_ID, identities={CLIENT_ID: PRINCIPAL_ID}, token_lifetime=token_lifetime
        )
        self.source = FaithfulServer(replica_set=True)
        self.estuary = FaithfulServer(replica_set=True)
        self._identity: FaultProxy | None = None
        self._oidc: OIDCProxy | None = None
        self.paths: list[FaultProxy] = []
        self._stack = contextlib.ExitStack()

    @property
    def identity(self) -> FaultProxy:
        """The network path from the workers to the identity endpoint."""
        if self._identity is None:
            raise RuntimeError("the world is not started")
        return self._identity

    @property
    def oidc(self) -> OIDCProxy:
        """The MONGODB-OIDC proxy in front of the source."""
        if self._oidc is None:
            raise RuntimeError("the world is not started")
        return self._oidc

    def start(self) -> World:
        try:
            self._stack.enter_context(self.stub)
            stub_address = urlsplit(self.stub.endpoint)
            self._identity = self._stack.enter_context(
                FaultProxy(upstream=(str(stub_address.hostname), int(stub_address.port or 80)))
            )
            self._stack.enter_context(self.source)
            self._oidc = self._stack.enter_context(
                OIDCProxy(
                    upstream=(self.source.address[0], self.source.address[1]),
                    public_key_pem=self.stub.public_key_pem,
                    audience=DOCUMENTDB_RESOURCE,
                    tenant_id=TENANT_ID,
                    allowed_principals=(PRINCIPAL_ID,),
                )
            )
            self._stack.enter_context(self.estuary)
            for stream in STREAMS:
                self.estuary.refuse_field(stream.estuary_ns, POISON_FIELD)
            upstream = (self.estuary.address[0], self.estuary.address[1])
            self.paths = [self._stack.enter_context(FaultProxy(upstream=upstream)) for _ in range(self.workers)]
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stack.close()

    def environ(self) -> dict[str, str]:
        """What the Functions host sets for an app with a managed identity (the endpoint behind its proxy)."""
        host, port = self.identity.address
        return {"IDENTITY_ENDPOINT": f"http://{host}:{port}{TOKEN_PATH}", "IDENTITY_HEADER": self.stub.identity_header}

    def release_all(self) -> None:
        """Undo every network fault: holds released, outages ended."""
        for proxy in (*self.paths, self.identity):
            proxy.release()
            proxy.refuse(False)


def _entra(uri: str, database: str, collection: str) -> dict[str, Any]:
    return {
        "connection_uri": uri,
        "database": database,
        "collection": collection,
        "auth_method": "entra",
        "credential": "managed_identity",
        "tenant_id": TENANT_ID,
        "client_id": CLIENT_ID,
    }


def _plain(uri: str, database: str, collection: str | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"connection_uri": uri, "database": database}
    if collection is not None:
        block["collection"] = collection
    return block


def config(source: dict[str, Any], estuary_uri: str, checkpoints_uri: str) -> dict[str, Any]:
    """A configuration with every stream of ``STREAMS``; ``source`` maps a collection to its endpoint block."""
    return {
        "checkpoints": _plain(checkpoints_uri, CHECKPOINT_DB),
        "streams": [
            {
                "name": stream.name,
                "source": source[stream.name],
                "estuary": _plain(estuary_uri, ESTUARY_DB, stream.name),
                **STREAM_SETTINGS,
            }
            for stream in STREAMS
        ],
    }


def write_configs(world: World, work_dir: Path) -> tuple[list[Path], Path]:
    """One file per worker (the same but for the estuary: its own path) and one with direct URIs (for verify,
    dead letters and the driver's own reads)."""
    entra = {s.name: _entra(world.oidc.uri, SOURCE_DB, s.name) for s in STREAMS}
    workers = []
    for index, path in enumerate(world.paths):
        file = work_dir / f"worker-{index}.yaml"
        file.write_text(yaml.safe_dump(config(entra, path.uri, world.estuary.uri), sort_keys=False))
        workers.append(file)
    direct = work_dir / "direct.yaml"
    plain = {s.name: _plain(world.source.uri, SOURCE_DB, s.name) for s in STREAMS}
    direct.write_text(yaml.safe_dump(config(plain, world.estuary.uri, world.estuary.uri), sort_keys=False))
    return workers, direct
