"""Microsoft Entra ID authentication for MongoDB (MONGODB-OIDC): scopes, token sources, provider, clients.

``scopes`` knows which audience a cluster accepts; ``credentials`` picks where tokens come from;
``tokens.TokenProvider`` caches and refreshes them; ``oidc`` adapts the provider to pymongo's callback;
``mongo_client`` is the one factory that creates (and caches) every MongoClient.
"""

from __future__ import annotations
