"""The one place that creates MongoClients (source, estuary, checkpoint store), for either auth method.

Clients are expensive (pools, monitor threads, TLS handshakes) and Azure Functions reuses a process across
invocations, so clients are cached for the life of the process, keyed so that endpoints on the same cluster
with the same identity share one client. Token providers are cached the same way, per identity and scope.
That cache pair is the app's only process-wide state (``default_factory``); tests build their own
``ClientFactory`` with a fake clock, a private meter and their own token sources.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pymongo import MongoClient
from pymongo.monitoring import (
    ConnectionCheckedInEvent,
    ConnectionCheckedOutEvent,
    ConnectionCheckOutFailedEvent,
    ConnectionCheckOutStartedEvent,
    ConnectionClosedEvent,
    ConnectionCreatedEvent,
    ConnectionPoolListener,
    ConnectionReadyEvent,
    PoolClearedEvent,
    PoolClosedEvent,
    PoolCreatedEvent,
    PoolReadyEvent,
)

from shared import mongo_uri
from shared.auth.credentials import TokenSource, select_token_source
from shared.auth.oidc import EntraOIDCCallback
from shared.auth.tokens import RetryPolicy, TokenProvider
from shared.clock import Clock, SystemClock
from shared.raw_bson import RAW
from shared.telemetry import AuthMetrics, get_logger

if TYPE_CHECKING:
    from bson.raw_bson import RawBSONDocument
    from pymongo.collection import Collection

    from shared.config import MongoConfig

APP_NAME = "cosmos-mongo-replicator"
_SOCKET_TIMEOUT_MS = 120_000

# The portal's connection string for an Azure DocumentDB (vCore) cluster carries tls=true, retrywrites=false ("the
# recommended setting for Azure DocumentDB") and maxIdleTimeMS=120000 (https://learn.microsoft.com/training/modules/
# create-configure-azure-documentdb-cluster/3-connect-to-cluster). We apply them to DocumentDB hosts only, and only
# where the URI does not set the option itself. Entries: (URI spellings, keyword, value).
_DOCUMENTDB_OPTIONS: tuple[tuple[tuple[str, ...], str, object], ...] = (
    (("tls", "ssl"), "tls", True),
    (("retrywrites",), "retryWrites", False),
    (("maxidletimems",), "maxIdleTimeMS", 120_000),
)

# pymongo warns on every client for a Cosmos DB host; connecting to DocumentDB is this app's purpose, so the
# warning is noise in every invocation's logs. Scoped to that exact message.
warnings.filterwarnings("ignore", message="You appear to be connected to a CosmosDB cluster", category=UserWarning)

SourceFactory = Callable[..., TokenSource]

_log = get_logger(__name__)


class ClientFactory:
    """Creates and caches MongoClients and the token providers behind their OIDC callbacks."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        metrics: AuthMetrics | None = None,
        environ: Mapping[str, str] | None = None,
        source_factory: SourceFactory = select_token_source,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._metrics = metrics or AuthMetrics()
        self._environ = os.environ if environ is None else environ
        self._source_factory = source_factory
        self._client_options = dict(client_options or {})
        self._lock = threading.Lock()
        self._clients: dict[tuple[object, ...], MongoClient[dict[str, Any]]] = {}
        self._providers: dict[tuple[object, ...], TokenProvider] = {}

    def client(self, config: MongoConfig) -> MongoClient[dict[str, Any]]:
        """The shared client for this endpoint's cluster and credentials (created on first use)."""
        key = (config.connection_uri, config.auth_method, *_identity_key(config))
        with self._lock:
            cached = self._clients.get(key)
        if cached is not None:
            return cached
        kwargs = self._client_kwargs(config)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = MongoClient(config.connection_uri, **kwargs)
                _log.info(
                    "MongoDB client created for %s (auth %s)",
                    mongo_uri.display(config.connection_uri),
                    config.auth_method,
                    extra={"event": "client_created", "auth_method": config.auth_method},
                )
            return self._clients[key]

    def collection(self, config: MongoConfig) -> Collection[RawBSONDocument]:
        """The endpoint's collection through the shared client, reading raw BSON (documents are never decoded and
        re-encoded on their way through)."""
        database = self.client(config)[config.database or ""]
        # pymongo's stubs type a collection by the client's document class, not by the codec options given here.
        raw: Collection[RawBSONDocument] = database.get_collection(config.collection or "", codec_options=RAW)  # type: ignore[assignment]
        return raw

    def token_provider(self, config: MongoConfig) -> TokenProvider:
        """The shared token provider for an ``entra`` endpoint's identity and scope."""
        if config.auth_method != "entra":
            raise ValueError("token providers exist only for auth_method 'entra'")
        key = _identity_key(config)
        with self._lock:
            provider = self._providers.get(key)
            if provider is None:
                provider = self._providers[key] = self._new_provider(config)
            return provider

    def close(self) -> None:
        """Close every client and forget every token (end of a command-line run, or a test)."""
        with self._lock:
            clients, self._clients, self._providers = list(self._clients.values()), {}, {}
        for client in clients:
            client.close()

    def _new_provider(self, config: MongoConfig) -> TokenProvider:
        source = self._source_factory(
            credential=config.credential,
            tenant_id=config.tenant_id,
            client_id=config.client_id,
            timeout=config.auth_timeout,
            environ=self._environ,
        )
        identity = config.client_id or ("system-assigned" if source.kind == "managed_identity" else "developer-login")
        return TokenProvider(
            source,
            scope=config.scope,
            identity=identity,
            refresh_before_expiry=config.refresh_before_expiry,
            retry=RetryPolicy(
                max_attempts=config.retry_max_attempts,
                initial_delay=config.retry_initial_delay,
                max_delay=config.retry_max_delay,
                multiplier=config.retry_multiplier,
            ),
            clock=self._clock,
            metrics=self._metrics,
        )

    def _client_kwargs(self, config: MongoConfig) -> dict[str, Any]:
        uri_options = mongo_uri.options(config.connection_uri)
        kwargs: dict[str, Any] = {}
        if "appname" not in uri_options:
            kwargs["appname"] = APP_NAME
        if "sockettimeoutms" not in uri_options:
            # pymongo waits forever on a socket by default: a connection that died silently (failover, an idle
            # reset without RST) would hang a pass until the Functions timeout. Change-stream polls wait at most
            # poll_interval (<= 60 s), so this bound never cuts a healthy operation short.
            kwargs["socketTimeoutMS"] = _SOCKET_TIMEOUT_MS
        if mongo_uri.is_documentdb(config.connection_uri):
            for spellings, keyword, value in _DOCUMENTDB_OPTIONS:
                if not uri_options.keys() & set(spellings):
                    kwargs[keyword] = value
        if config.auth_method == "entra":
            callback = EntraOIDCCallback(self.token_provider(config), endpoint=mongo_uri.display(config.connection_uri))
            kwargs["authMechanism"] = "MONGODB-OIDC"
            kwargs["authMechanismProperties"] = {"OIDC_CALLBACK": callback}
        kwargs["event_listeners"] = [_ConnectionGauge(self._metrics, config.auth_method)]
        return {**kwargs, **self._client_options}


def _identity_key(config: MongoConfig) -> tuple[object, ...]:
    return (config.credential, config.tenant_id, config.client_id, config.scope)


class _ConnectionGauge(ConnectionPoolListener):
    """Keeps ``replicator_mongo_active_connections`` equal to the open connections, by auth method."""

    def __init__(self, metrics: AuthMetrics, auth_method: str) -> None:
        self._counter = metrics.active_connections
        self._attributes = {"auth_method": auth_method}

    def connection_created(self, event: ConnectionCreatedEvent) -> None:
        self._counter.add(1, self._attributes)

    def connection_closed(self, event: ConnectionClosedEvent) -> None:
        self._counter.add(-1, self._attributes)

    def pool_created(self, event: PoolCreatedEvent) -> None:
        pass

    def pool_ready(self, event: PoolReadyEvent) -> None:
        pass

    def pool_cleared(self, event: PoolClearedEvent) -> None:
        pass

    def pool_closed(self, event: PoolClosedEvent) -> None:
        pass

    def connection_ready(self, event: ConnectionReadyEvent) -> None:
        pass

    def connection_check_out_started(self, event: ConnectionCheckOutStartedEvent) -> None:
        pass

    def connection_check_out_failed(self, event: ConnectionCheckOutFailedEvent) -> None:
        pass

    def connection_checked_out(self, event: ConnectionCheckedOutEvent) -> None:
        pass

    def connection_checked_in(self, event: ConnectionCheckedInEvent) -> None:
        pass


_default: ClientFactory | None = None
_default_lock = threading.Lock()


def default_factory() -> ClientFactory:
    """The process-wide factory (created on first use, so importing never connects or reads settings)."""
    global _default  # the documented process-wide client cache
    with _default_lock:
        if _default is None:
            _default = ClientFactory()
        return _default


def get_client(config: MongoConfig) -> MongoClient[dict[str, Any]]:
    """The process-wide shared client for an endpoint: what every component uses to reach MongoDB."""
    return default_factory().client(config)
