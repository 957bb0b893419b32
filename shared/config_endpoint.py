"""One endpoint's configuration (source, estuary or checkpoint store): where it is and how it authenticates.

``MongoConfig`` is flat, as in the feature list; ``shared.config`` builds streams from it and re-exports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared import mongo_uri
from shared.auth.scopes import DOCUMENTDB_SCOPE, scope_problem
from shared.config_types import Duration, FieldProblems, check_uuid

AuthMethod = Literal["connection_string", "entra"]
CredentialKind = Literal["auto", "managed_identity", "developer"]

BAD_DATABASE_CHARS = set('/\\. "$*<>:|?')


class MongoConfig(BaseModel):
    """One MongoDB connection (source, estuary or checkpoint store), flat as in the feature list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_uri: str = Field(
        description="mongodb:// or mongodb+srv:// URI; may reference app settings as ${NAME}. With 'entra' it must "
        "hold no user, password or auth options."
    )
    database: str | None = Field(None, description="Database name (required for stream endpoints and checkpoints).")
    collection: str | None = Field(None, description="Collection name (required for stream endpoints).")
    auth_method: AuthMethod = Field(
        "connection_string",
        description="'connection_string' (credentials in the URI, the default) or 'entra' (MONGODB-OIDC with a "
        "Microsoft Entra ID token from the managed identity or, locally, your developer login).",
    )
    tenant_id: str | None = Field(None, description="Entra directory (tenant) id; required for 'entra'.")
    credential: CredentialKind = Field(
        "auto",
        description="Where 'entra' tokens come from: 'managed_identity', 'developer' (az / azd login) or 'auto' "
        "(managed identity inside Azure Functions / App Service, developer login elsewhere).",
    )
    client_id: str | None = Field(
        None,
        description="Client id of a user-assigned managed identity; omit for the system-assigned identity.",
    )
    scopes: tuple[str, ...] = Field(
        (DOCUMENTDB_SCOPE,),
        description="Token scope: exactly one, ending in /.default. The default is what Azure DocumentDB expects; "
        "audiences of other Azure services (ARM, Storage, Key Vault, Graph, SQL, Cosmos DB for NoSQL) are rejected; "
        "api:// and application-id audiences are allowed.",
    )
    refresh_before_expiry: Duration = Field(
        300.0,
        le=3600.0,
        description="Fetch a new token when the cached one expires within this time (within half its "
        "lifetime for tokens shorter than twice this).",
    )
    auth_timeout: Duration = Field(30.0, description="Upper bound of one token request (connect and read).")
    retry_max_attempts: int = Field(3, ge=1, le=10, description="Token requests per fetch, first one included.")
    retry_initial_delay: Duration = Field(1.0, description="Backoff before the first retry of a token request.")
    retry_max_delay: Duration = Field(
        10.0, description="Upper bound of the backoff between token requests; not below retry_initial_delay."
    )
    retry_multiplier: float = Field(2.0, ge=1.0, le=10.0, description="Backoff growth factor between retries.")

    @field_validator("connection_uri")
    @classmethod
    def _uri_shape(cls, uri: str) -> str:
        if not mongo_uri.has_scheme(uri):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        if any(ch.isspace() for ch in uri):
            raise ValueError("must not contain spaces (percent-encode them as %20)")
        return uri

    @field_validator("tenant_id")
    @classmethod
    def _tenant_uuid(cls, value: str | None) -> str | None:
        return check_uuid(value, "the Entra directory (tenant) id")

    @field_validator("client_id")
    @classmethod
    def _client_uuid(cls, value: str | None) -> str | None:
        return check_uuid(value, "the managed identity's client id, not its object id or name")

    @field_validator("database")
    @classmethod
    def _database_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or set(value) & BAD_DATABASE_CHARS or len(value) > 63):
            raise ValueError('must be 1-63 characters without / \\ . space " $ * < > : | ?')
        return value

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "$" in value or value.startswith("system.")):
            raise ValueError("must be non-empty, without '$', and not a system.* collection")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        if not scopes:
            raise ValueError(f"must not be empty (Azure DocumentDB: ['{DOCUMENTDB_SCOPE}'])")
        if len(scopes) > 1:
            raise ValueError("must hold exactly one scope: an Entra token is issued for a single audience")
        problem = scope_problem(scopes[0])
        if problem:
            raise ValueError(problem)
        return scopes

    @model_validator(mode="after")
    def _auth_rules(self) -> MongoConfig:
        problems = list(self._entra_problems() if self.auth_method == "entra" else self._uri_auth_problems())
        if self.retry_max_delay < self.retry_initial_delay:
            problems.append(("retry_max_delay", "must not be smaller than retry_initial_delay"))
        if problems:
            raise FieldProblems(problems)
        return self

    def _entra_problems(self) -> Iterator[tuple[str, str]]:
        if self.tenant_id is None:
            yield "tenant_id", "is required when auth_method is 'entra' (your Entra directory id)"
        if mongo_uri.has_credentials(self.connection_uri):
            yield (
                "connection_uri",
                "must not contain a user name or password when auth_method is 'entra' (the managed identity's "
                "token is the credential); remove the 'user:password@' part",
            )
        set_by_us = {"authmechanism", "authmechanismproperties", "authsource"} & mongo_uri.options(
            self.connection_uri
        ).keys()
        if set_by_us:
            yield (
                "connection_uri",
                f"remove {', '.join(sorted(set_by_us))}: auth_method 'entra' sets MONGODB-OIDC with the "
                "replicator's token provider itself",
            )

    def _uri_auth_problems(self) -> Iterator[tuple[str, str]]:
        if mongo_uri.options(self.connection_uri).get("authmechanism", "").upper() == "MONGODB-OIDC":
            yield (
                "connection_uri",
                "authMechanism=MONGODB-OIDC in the URI uses pymongo's built-in Azure support, which calls the VM "
                "metadata endpoint that Azure Functions does not offer; set auth_method: entra instead",
            )

    @property
    def scope(self) -> str:
        return self.scopes[0]

    @property
    def token_settings(self) -> tuple[float, float, int, float, float, float]:
        """Settings of the token provider; endpoints sharing an identity must agree on them."""
        return (
            self.refresh_before_expiry,
            self.auth_timeout,
            self.retry_max_attempts,
            self.retry_initial_delay,
            self.retry_max_delay,
            self.retry_multiplier,
        )
