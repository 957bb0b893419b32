"""Read a MongoDB connection string without connecting (and without the DNS lookups ``mongodb+srv`` needs).

Used by configuration validation (is there a password in an Entra URI?) and by the client factory (which
options did the user set, so that our vCore defaults never override them).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES = ("mongodb://", "mongodb+srv://")
# Azure DocumentDB / Cosmos DB for MongoDB vCore cluster hosts: <name>.mongocluster.cosmos.azure.com
# (and <name>.global.mongocluster.cosmos.azure.com for the global read/write endpoint).
_DOCUMENTDB_HOST_SUFFIX = ".mongocluster.cosmos.azure.com"


def has_scheme(uri: str) -> bool:
    return uri.lower().startswith(SCHEMES)


def options(uri: str) -> dict[str, str]:
    """Query options with lower-cased names (MongoDB option names are case-insensitive)."""
    query = urlsplit(uri).query
    return {key.lower(): value for key, value in parse_qsl(query, keep_blank_values=True)}


def hosts(uri: str) -> list[str]:
    """Host names (without ports) listed in the URI."""
    netloc = urlsplit(uri).netloc.rpartition("@")[2]
    return [unquote(h).rsplit(":", 1)[0].strip("[]").lower() for h in netloc.split(",") if h]


def addresses(uri: str) -> list[str]:
    """``host:port`` of every listed host, lower-cased, with MongoDB's default port filled in."""
    netloc = urlsplit(uri).netloc.rpartition("@")[2]
    out = []
    for entry in (unquote(h).lower() for h in netloc.split(",") if h):
        host, sep, port = entry.rpartition(":") if not entry.endswith("]") else (entry, "", "")
        out.append(f"{host}:{port}" if sep else f"{entry}:27017")
    return sorted(out)


def has_credentials(uri: str) -> bool:
    """Whether the URI carries a user name or a password."""
    return "@" in urlsplit(uri).netloc


def is_documentdb(uri: str) -> bool:
    """Whether every host is an Azure DocumentDB (vCore) cluster host."""
    found = hosts(uri)
    return bool(found) and all(h.endswith(_DOCUMENTDB_HOST_SUFFIX) for h in found)


def display(uri: str) -> str:
    """Scheme and hosts only: what reports and logs show to name an endpoint."""
    scheme = uri.split("://", 1)[0]
    return f"{scheme}://{','.join(hosts(uri))}"
