"""Which Entra token audience a MongoDB cluster accepts, and which well-known mistakes to refuse early.

Azure DocumentDB (Cosmos DB for MongoDB vCore) accepts tokens for the OSS RDBMS resource, the same one as
Azure Database for PostgreSQL/MySQL: every Microsoft sample requests
``https://ossrdbms-aad.database.windows.net/.default`` and the connection-string form uses
``TOKEN_RESOURCE:https://ossrdbms-aad.database.windows.net``
(https://learn.microsoft.com/azure/documentdb/how-to-connect-role-based-access-control,
https://learn.microsoft.com/azure/documentdb/how-to-build-python-console-app).
The feature list this project started from asked for ``https://cosmos.azure.com/.default`` and to reject
ossrdbms-aad; that is the Cosmos DB *NoSQL* data-plane audience, which a MongoDB cluster refuses, so we do
the opposite and say why in the error. Custom audiences (``api://...`` or an application id), as used by
MongoDB Atlas / Enterprise with Entra workload identity federation, are legitimate.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

DOCUMENTDB_RESOURCE = "https://ossrdbms-aad.database.windows.net"
DOCUMENTDB_SCOPE = f"{DOCUMENTDB_RESOURCE}/.default"
_DOCUMENTDB_HOST = "ossrdbms-aad.database.windows.net"
_DEFAULT_SUFFIX = "/.default"


def _host_is(*names: str) -> Callable[[str], bool]:
    return lambda host: host in names


def _host_under(*suffixes: str) -> Callable[[str], bool]:
    return lambda host: any(host == s or host.endswith("." + s) for s in suffixes)


# (matches the audience host, what that audience is for). Order matters: the first match names the service.
_WRONG_SERVICES: tuple[tuple[Callable[[str], bool], str], ...] = (
    (_host_is("cosmos.azure.com"), "Azure Cosmos DB for NoSQL data-plane"),
    (_host_under("documents.azure.com"), "Azure Cosmos DB for NoSQL account"),
    (
        _host_is("management.azure.com", "management.core.windows.net"),
        "Azure Resource Manager (control plane)",
    ),
    (_host_is("storage.azure.com"), "Azure Storage"),
    (
        _host_under("blob.core.windows.net", "queue.core.windows.net", "table.core.windows.net"),
        "Azure Storage",
    ),
    (_host_is("vault.azure.net"), "Azure Key Vault"),
    (_host_under("vault.azure.net"), "Azure Key Vault"),
    (_host_is("graph.microsoft.com", "graph.windows.net"), "Microsoft Graph"),
    (_host_under("database.windows.net"), "Azure SQL Database"),
)


def resource_of(scope: str) -> str:
    """The resource (token audience) a scope asks for: the scope without its ``/.default`` suffix."""
    return scope.removesuffix(_DEFAULT_SUFFIX)


def scope_problem(scope: str) -> str | None:
    """Why ``scope`` cannot authenticate to a MongoDB cluster, or ``None`` when it can."""
    if not scope.endswith(_DEFAULT_SUFFIX):
        return f"must end with '{_DEFAULT_SUFFIX}' (for Azure DocumentDB: '{DOCUMENTDB_SCOPE}')"
    resource = resource_of(scope)
    if _is_uuid(resource):
        return None
    parts = urlsplit(resource)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "api") or not parts.netloc:
        return (
            "must be an https:// or api:// application ID URI or an application (client) ID followed by "
            f"'/.default' (for Azure DocumentDB: '{DOCUMENTDB_SCOPE}')"
        )
    if parts.scheme == "api" or host == _DOCUMENTDB_HOST:
        return None
    for matches, service in _WRONG_SERVICES:
        if matches(host):
            return (
                f"'{scope}' is the {service} audience, which a MongoDB cluster does not accept; "
                f"Azure DocumentDB (Cosmos DB for MongoDB vCore) expects '{DOCUMENTDB_SCOPE}'"
            )
    return None


def audience_matches(audience: str, scope: str) -> bool:
    """Whether a token's ``aud`` claim is the audience ``scope`` asked for.

    Entra v1 tokens carry the resource URI; v2 tokens of a custom API may carry its application id instead.
    """
    resource = resource_of(scope).rstrip("/")
    aud = audience.rstrip("/")
    return aud == resource or (resource.startswith("api://") and aud == resource.removeprefix("api://"))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
