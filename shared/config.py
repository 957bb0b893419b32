"""Configuration: the pydantic models are the single source of truth for fields, defaults and validation.

A config file (YAML or JSON) has ``checkpoints:`` (where positions are stored), ``streams:`` (each with a
``name``, a ``source:`` and an ``estuary:``) and an optional ``defaults:`` block whose fields every endpoint
inherits. Every endpoint is one flat ``MongoConfig``. String values may reference app settings / environment
variables as ``${NAME}`` so that connection strings with passwords can live in Key Vault references instead of
the file.

Reading a file, expanding ``${NAME}``, merging ``defaults:`` and turning validation errors into messages
is ``config_loader``'s job.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared import mongo_uri
from shared.auth.scopes import DOCUMENTDB_SCOPE, scope_problem
from shared.config_types import Duration, FieldProblems, check_uuid
from shared.errors import ConfigError

AuthMethod = Literal["connection_string", "entra"]
FullDocument = Literal["updateLookup", "whenAvailable", "required", "default"]
# https://learn.microsoft.com/azure/documentdb/change-streams: the pipeline stages a change stream accepts.
_ALLOWED_STAGES = frozenset({"$match", "$project", "$addFields", "$set", "$unset"})
CredentialKind = Literal["auto", "managed_identity", "developer"]

_STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_BAD_DATABASE_CHARS = set('/\\. "$*<>:|?')


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
        if value is not None and (not value or set(value) & _BAD_DATABASE_CHARS or len(value) > 63):
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


class TransformConfig(BaseModel):
    """Field mapping applied to each document before it is written to the estuary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rename: dict[str, str] = Field(default_factory=dict, description="Top-level fields to rename: {old: new}.")
    drop: tuple[str, ...] = Field((), description="Top-level fields to leave out of the estuary.")

    @model_validator(mode="after")
    def _rules(self) -> TransformConfig:
        names = [*self.rename, *self.rename.values(), *self.drop]
        problems = [
            (n, "must be a top-level field name (no '.', not starting with '$')") for n in names if _bad_field(n)
        ]
        if "_id" in names:
            problems.append(("_id", "cannot be renamed or dropped: the estuary is keyed by it"))
        if problems:
            raise FieldProblems(problems)
        return self


class StreamConfig(BaseModel):
    """One replicated collection: source change stream -> estuary collection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique stream name: letters, digits, '_', '-', '.'; at most 63 characters.")
    enabled: bool = Field(True, description="Disabled streams are validated but not replicated.")
    source: MongoConfig = Field(description="The collection whose change stream is read.")
    estuary: MongoConfig = Field(description="The collection the changes are applied to.")
    pipeline: tuple[dict[str, Any], ...] = Field(
        (),
        description="Change-stream stages; only $match, $project, $addFields, $set, $unset (what DocumentDB allows).",
    )
    full_document: FullDocument = Field(
        "updateLookup", description="Post-image for update events (DocumentDB sends it on updates in any case)."
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="Most events applied (and checkpointed) at once.")
    time_budget: Duration = Field(
        240.0, le=3600.0, description="A pass ends after this long; fits the Consumption plan's 5-minute default."
    )
    idle_timeout: Duration = Field(30.0, description="A pass ends after this long without events.")
    poll_interval: Duration = Field(1.0, le=60.0, description="How long one read waits for new events.")
    lease_duration: Duration = Field(
        60.0,
        ge=10.0,
        description="How long a worker's claim on the stream lasts without a checkpoint renewing it; at least twice "
        "poll_interval.",
    )
    max_apply_attempts: int = Field(
        3, ge=1, le=20, description="Tries per refused document before it goes to the dead-letter collection."
    )
    change_log_mb: int = Field(
        400,
        ge=1,
        description="Size of the source's change log in MB (Azure DocumentDB keeps 400 MB), for the warning that "
        "a stream's saved token is getting old.",
    )
    initial_sync: bool = Field(
        False,
        description="Copy the source collection into the estuary (resumable, in _id order) before streaming its "
        "changes from the point captured when the copy began; without it a new stream starts at 'now'.",
    )
    on_history_lost: Literal["fail", "start_now", "resnapshot"] = Field(
        "fail",
        description="When the saved resume token is gone from the change log: 'fail' stops the stream loudly; "
        "'start_now' continues from now and records the gap (reported by status); 'resnapshot' copies the "
        "collection again (as initial_sync does) and converges without a gap.",
    )
    on_invalidate: Literal["stop", "ignore"] = Field(
        "stop",
        description="On drop / rename / dropDatabase / invalidate of the source: 'stop' the stream with a visible "
        "status, or 'ignore' the event and follow the collection by name.",
    )
    transform: TransformConfig | None = Field(None, description="Optional field mapping (rename, drop).")
    fencing: Literal["auto", "transaction", "deadline"] = Field(
        "auto",
        description="How the estuary refuses writes of a worker that no longer holds the stream: 'transaction' (each "
        "write checks the stream's fence in a transaction; needs a replica set, mongos or DocumentDB), 'deadline' "
        "(each write bounded by the lease left; for a standalone server, with a residual risk: see docs), 'auto' "
        "(transactions when the estuary can run them).",
    )
    write_timeout: Duration | None = Field(
        None,
        description="Upper bound of one estuary write or transaction (client deadline and maxTimeMS); at most half "
        "of lease_duration. Default: a third of lease_duration.",
    )

    @model_validator(mode="after")
    def _timing(self) -> StreamConfig:
        problems = []
        if self.lease_duration < 2 * self.poll_interval:
            problems.append(("lease_duration", "must be at least twice poll_interval (checkpoints renew it)"))
        if self.write_timeout is not None and self.write_timeout > self.lease_duration / 2:
            problems.append(
                ("write_timeout", "must be at most half of lease_duration (a write must end well before the lease)")
            )
        if problems:
            raise FieldProblems(problems)
        return self

    @property
    def estuary_write_timeout(self) -> float:
        """``write_timeout``, or its default: a third of ``lease_duration``."""
        return self.write_timeout or self.lease_duration / 3

    @field_validator("pipeline")
    @classmethod
    def _pipeline(cls, stages: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for i, stage in enumerate(stages):
            if len(stage) != 1 or next(iter(stage)) not in _ALLOWED_STAGES:
                raise ValueError(
                    f"stage {i} must be one of {', '.join(sorted(_ALLOWED_STAGES))} (the stages Azure DocumentDB "
                    "allows in a change stream)"
                )
        return stages

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _STREAM_NAME.match(name):
            raise ValueError("must be 1-63 letters, digits, '_', '-' or '.', starting with a letter or digit")
        return name

    @model_validator(mode="after")
    def _endpoints(self) -> StreamConfig:
        problems = [
            (f"{role}.{field}", f"is required for a stream {role}")
            for role, endpoint in (("source", self.source), ("estuary", self.estuary))
            for field in ("database", "collection")
            if getattr(endpoint, field) is None
        ]
        if not problems and _same_collection(self.source, self.estuary):
            problems.append(("estuary", "is the source collection itself; replicating onto itself would loop"))
        if problems:
            raise FieldProblems(problems)
        return self


class ReplicatorConfig(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoints: MongoConfig = Field(
        description="Where stream positions (resume tokens, leases) are stored: collection 'checkpoints' (or the "
        "one given) and 'dead_letters' in its database."
    )
    streams: tuple[StreamConfig, ...] = Field(min_length=1, description="The streams to replicate.")

    @field_validator("checkpoints")
    @classmethod
    def _checkpoint_database(cls, checkpoints: MongoConfig) -> MongoConfig:
        if checkpoints.database is None:
            raise FieldProblems([("database", "is required for the checkpoint store")])
        return checkpoints

    @model_validator(mode="after")
    def _cross_stream_rules(self) -> ReplicatorConfig:
        problems = [*self._duplicate_names(), *self._token_setting_conflicts()]
        if problems:
            raise FieldProblems(problems)
        return self

    def stream(self, name: str) -> StreamConfig:
        """The stream called ``name``; an unknown name is a configuration error that lists the known ones."""
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise ConfigError([f"no stream named '{name}' (configured: {', '.join(s.name for s in self.streams)})"])

    def endpoints(self) -> Iterator[tuple[str, MongoConfig]]:
        """Every connection with its config path, checkpoints first."""
        yield "checkpoints", self.checkpoints
        for i, stream in enumerate(self.streams):
            yield f"streams[{i}].source", stream.source
            yield f"streams[{i}].estuary", stream.estuary

    def _duplicate_names(self) -> Iterator[tuple[str, str]]:
        first: dict[str, int] = {}
        for i, stream in enumerate(self.streams):
            if stream.name in first:
                yield (
                    f"streams[{i}].name",
                    f"duplicate stream name '{stream.name}' (also streams[{first[stream.name]}])",
                )
            first.setdefault(stream.name, i)

    def _token_setting_conflicts(self) -> Iterator[tuple[str, str]]:
        seen: dict[tuple[str | None, str | None, str], tuple[str, MongoConfig]] = {}
        for path, endpoint in self.endpoints():
            if endpoint.auth_method != "entra":
                continue
            key = (endpoint.tenant_id, endpoint.client_id, endpoint.scope)
            first_path, first = seen.setdefault(key, (path, endpoint))
            if first.token_settings != endpoint.token_settings:
                yield (
                    path,
                    f"token settings (refresh_before_expiry, auth_timeout, retry_*) differ from {first_path}, which "
                    "uses the same identity and scope; they share one token cache, so set them alike (the "
                    "'defaults:' block is the easy way)",
                )


def _bad_field(name: str) -> bool:
    return not name or "." in name or name.startswith("$")


def _same_collection(a: MongoConfig, b: MongoConfig) -> bool:
    return (mongo_uri.addresses(a.connection_uri), a.database, a.collection) == (
        mongo_uri.addresses(b.connection_uri),
        b.database,
        b.collection,
    )
