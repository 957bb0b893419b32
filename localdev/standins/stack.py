"""A local "cluster that demands Entra tokens": nx-27017 behind the OIDC proxy, tokens from the MI stub.

Shared by the end-to-end tests, the benchmark and the local demo so that all three exercise the same path:
real ``ManagedIdentityCredential`` -> stub endpoint -> real pymongo MONGODB-OIDC -> proxy -> nx-27017.
azure-identity and MSAL read ``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER`` from the process environment, so
callers put ``environ()`` there (pytest's monkeypatch, or the demo process itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from localdev.standins.mi_stub import ManagedIdentityStub
from localdev.standins.nx import NxServer
from localdev.standins.oidc_proxy import OIDCProxy
from localdev.standins.service import Service
from shared.auth.scopes import DOCUMENTDB_RESOURCE

TENANT_ID = "72f988bf-0000-4000-8000-00000000cafe"
CLIENT_ID = "5a6b7c8d-0000-4000-8000-0000000000a1"  # the user-assigned identity's client id
PRINCIPAL_ID = "0b1c2d3e-0000-4000-8000-0000000000b2"  # ... and its object (principal) id


class LocalStack(Service):
    """Starts (and stops) the three stand-ins; hands out config blocks for endpoints behind them."""

    def __init__(
        self,
        data_dir: Path,
        *,
        audience: str = DOCUMENTDB_RESOURCE,
        allowed_principals: Collection[str] | None = (PRINCIPAL_ID,),
        proxy_clock: Callable[[], float] = time.time,
    ) -> None:
        self.nx = NxServer(Path(data_dir))
        self.stub = ManagedIdentityStub(tenant_id=TENANT_ID, identities={CLIENT_ID: PRINCIPAL_ID})
        self._audience = audience
        self._allowed = allowed_principals
        self._proxy_clock = proxy_clock
        self._proxy: OIDCProxy | None = None

    @property
    def proxy(self) -> OIDCProxy:
        if self._proxy is None:
            raise RuntimeError("LocalStack is not started")
        return self._proxy

    def start(self) -> LocalStack:
        self.nx.start()
        self.stub.start()
        self._proxy = OIDCProxy(
            upstream=(self.nx.host, self.nx.port),
            public_key_pem=self.stub.public_key_pem,
            audience=self._audience,
            tenant_id=TENANT_ID,
            allowed_principals=self._allowed,
            clock=self._proxy_clock,
        ).start()
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
        self.stub.stop()
        self.nx.stop()

    def environ(self) -> dict[str, str]:
        """What the Functions host would set for an app with a managed identity."""
        return self.stub.environ()

    def entra_endpoint(self, database: str, collection: str | None = None, **overrides: Any) -> dict[str, Any]:
        """A config block for an endpoint reached through the proxy with the stub's user-assigned identity."""
        block: dict[str, Any] = {
            "connection_uri": self.proxy.uri,
            "database": database,
            "auth_method": "entra",
            "tenant_id": TENANT_ID,
            "client_id": CLIENT_ID,
            "credential": "managed_identity",
        }
        if collection is not None:
            block["collection"] = collection
        return {**block, **overrides}

    def plain_endpoint(self, database: str, collection: str | None = None) -> dict[str, Any]:
        """A config block for the same server reached directly with a plain connection string."""
        block: dict[str, Any] = {"connection_uri": self.nx.uri, "database": database}
        if collection is not None:
            block["collection"] = collection
        return block
