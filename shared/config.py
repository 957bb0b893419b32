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

from shared import mongo_uri, scope
from shared.config_endpoint import BAD_DATABASE_CHARS, MongoConfig
from shared.config_types import Duration, FieldProblems, TransformConfig
from shared.errors import ConfigError
from shared.scope import Scope

__all__ = ["MongoConfig", "ReplicatorConfig", "StreamConfig", "TransformConfig"]

FullDocument = Literal["updateLookup", "whenAvailable", "required", "default"]
# https://learn.microsoft.com/azure/documentdb/change-streams: the pipeline stages a change stream accepts.
_ALLOWED_STAGES = frozenset({"$match", "$project", "$addFields", "$set", "$unset"})

_STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class StreamConfig(BaseModel):
    """One replicated collection, database or cluster: source change stream(s) -> estuary collection(s).

    A source without ``collection`` makes a *scoped* stream (see ``shared.scope``): every matching collection is
    replicated as a unit of its own (``member`` builds its configuration) with every setting of this stream.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique stream name: letters, digits, '_', '-', '.'; at most 63 characters.")
    enabled: bool = Field(True, description="Disabled streams are validated but not replicated.")
    source: MongoConfig = Field(
        description="The collection whose change stream is read; without collection, every collection of the "
        "database; without database either, every collection of the cluster."
    )
    estuary: MongoConfig = Field(
        description="The collection the changes are applied to; for a scoped source, the database (database scope) "
        "or the cluster (cluster scope) the collections keep their names in."
    )
    include: tuple[str, ...] = Field(
        (),
        description="Scoped streams: glob patterns (*, ?, [seq]) on collection names ('database.collection' in a "
        "cluster scope); default: every collection. system.* and the replicator's own collections never match.",
    )
    exclude: tuple[str, ...] = Field((), description="Scoped streams: glob patterns of collections to leave out.")
    estuary_database_prefix: str = Field(
        "",
        description="Cluster scope: put before every estuary database name (needed to copy a cluster into itself; "
        "source databases starting with it are then never read).",
    )
    cursor: Literal["per_collection", "single"] = Field(
        "per_collection",
        description="Scoped streams: 'per_collection' (a change stream per collection; what Azure DocumentDB "
        "supports) or 'single' (one change stream for the whole database or cluster, routed by namespace; MongoDB "
        "6+ only).",
    )
    collections_per_pass: int = Field(
        50,
        ge=1,
        le=1000,
        description="Scoped streams: collections one pass serves (one queue message each tick); each is read until "
        "caught up, so idle collections cost one poll.",
    )
    collection_concurrency: int = Field(
        4, ge=1, le=32, description="Scoped streams: collections a pass reads at once (threads; connections)."
    )
    pipeline: tuple[dict[str, Any], ...] = Field(
        (),
        description="Change-stream stages; only $match, $project, $addFields, $set, $unset (what DocumentDB allows).",
    )
    full_document: FullDocument = Field(
        "updateLookup", description="Post-image for update events (DocumentDB sends it on updates in any case)."
    )
    batch_size: int = Field(1000, ge=1, le=10_000, description="Most events applied (and checkpointed) at once.")
    apply_concurrency: int = Field(
        1,
        ge=1,
        le=16,  # shared.fence.LANES: one fence document per concurrent transaction
        description="Groups of a batch's documents (split by document key) written at once; more than 1 for an "
        "estuary that scales with concurrent writers. Each document's changes stay in order.",
    )
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
    on_history_lost: Literal["fail", "start_now", "resnapshot", "rewind"] = Field(
        "fail",
        description="When the saved resume token is gone from the change log: 'fail' stops the stream loudly; "
        "'start_now' continues from now and records the gap (reported by status); 'resnapshot' copies the "
        "collection again (as initial_sync does) and converges without a gap; 'rewind' reopens at the cluster time "
        "of the last applied event (less rewind_margin) and, when that is gone too, follows rewind_fallback.",
    )
    rewind_fallback: Literal["fail", "start_now", "resnapshot"] = Field(
        "fail", description="on_history_lost 'rewind': the policy when the change log no longer reaches that time."
    )
    rewind_margin: Duration = Field(
        10.0, le=3600.0, description="on_history_lost 'rewind': how far before the last applied event to reopen."
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
        problems = list(self._scope_problems())
        problems += [("include", p) for p in scope.pattern_problems(self.include)]
        problems += [("exclude", p) for p in scope.pattern_problems(self.exclude)]
        if problems:
            raise FieldProblems(problems)
        return self

    def _scope_problems(self) -> Iterator[tuple[str, str]]:
        source, estuary, kind = self.source, self.estuary, self.scope
        same_cluster = _same_cluster(source, estuary)
        if kind == "collection":
            if source.database is None:
                yield "source.database", "is required for a stream source that names a collection"
            yield from (
                (f"estuary.{field}", "is required for a stream estuary")
                for field in ("database", "collection")
                if getattr(estuary, field) is None
            )
            yield from (
                (field, "applies only to a scoped stream (a source without collection)")
                for field in ("include", "exclude", "estuary_database_prefix", "cursor")
                if field in self.model_fields_set and getattr(self, field) != StreamConfig.model_fields[field].default
            )
            if same_cluster and (source.database, source.collection) == (estuary.database, estuary.collection):
                yield "estuary", "is the source collection itself; replicating onto itself would loop"
            return
        if estuary.collection is not None:
            yield "estuary.collection", "must be omitted when the source names no collection: each keeps its name"
        if self.cursor == "single":
            yield from self._single_cursor_problems()
        if kind == "database":
            if estuary.database is None:
                yield "estuary.database", "is required: the database the source's collections are copied into"
            elif same_cluster and estuary.database == source.database:
                yield "estuary", "is the source database itself; replicating onto itself would loop"
            if self.estuary_database_prefix:
                yield "estuary_database_prefix", "applies to a whole-cluster scope only (a source without database)"
            return
        if estuary.database is not None:
            yield (
                "estuary.database",
                "must be omitted when the source names no database: each database keeps its name (behind "
                "estuary_database_prefix)",
            )
        if same_cluster and not self.estuary_database_prefix:
            yield "estuary", "is the source cluster itself; set estuary_database_prefix so no database maps onto itself"
        if set(self.estuary_database_prefix) & BAD_DATABASE_CHARS:
            yield "estuary_database_prefix", 'must not contain / \\ . space " $ * < > : | ?'

    def _single_cursor_problems(self) -> Iterator[tuple[str, str]]:
        """One change stream for many collections has one position: it cannot copy a collection on its own."""
        if self.initial_sync:
            yield "initial_sync", "needs cursor: per_collection (each collection is copied from its own position)"
        for field in ("on_history_lost", "rewind_fallback"):
            if getattr(self, field) == "resnapshot":
                yield field, "'resnapshot' needs cursor: per_collection (each collection is copied on its own)"

    @property
    def target(self) -> scope.Target:
        """Where this stream writes, for the check that no two streams can write one estuary collection."""
        e = self.estuary
        return scope.Target(
            self.scope, e.database, e.collection, self.estuary_database_prefix, self.include, self.exclude
        )

    @property
    def scope(self) -> Scope:
        """``collection`` (one collection), ``database`` or ``cluster`` (every matching collection in it)."""
        if self.source.collection is not None:
            return "collection"
        return "database" if self.source.database is not None else "cluster"

    def member(self, member: str) -> StreamConfig:
        """The configuration that replicates one collection of this scoped stream, as the unit ``<name>/<member>``."""
        problem = self.member_problem(member)
        if problem:
            raise ConfigError(
                [f"stream '{self.name}': {problem}"],
                hint="python -m shared status --stream NAME lists the collections a scoped stream replicates",
            )
        database, collection = scope.split_member(member, self.scope)
        source_db = database or self.source.database
        estuary_db = self.estuary.database if database is None else self.estuary_database_prefix + database
        return self.model_copy(
            update={
                "name": scope.unit_name(self.name, member),
                "source": self.source.model_copy(update={"database": source_db, "collection": collection}),
                "estuary": self.estuary.model_copy(update={"database": estuary_db, "collection": collection}),
                "include": (),
                "exclude": (),
                "estuary_database_prefix": "",
                "cursor": "per_collection",
            }
        )

    def member_problem(self, member: str) -> str | None:
        """Why ``member`` cannot be one of this stream's collections, or ``None``."""
        if self.scope == "collection":
            return "it replicates one collection; --collection applies to a scoped stream (a source without collection)"
        database, collection = scope.split_member(member, self.scope)
        if database is not None and not (collection and _database_name_ok(database, self.estuary_database_prefix)):
            return f"'{member}' is not 'database.collection' with a valid database name (at most 63 characters)"
        if not collection or "$" in collection or scope.UNIT_SEPARATOR in member:
            return f"'{member}' is not a valid collection name"
        if (
            database is not None
            and _same_cluster(self.source, self.estuary)
            and (database.startswith(self.estuary_database_prefix))
        ):
            return f"'{member}' is in a database this stream writes to (estuary_database_prefix)"
        if not scope.covers(member, self.scope, self.include, self.exclude):
            return f"'{member}' is not covered by the stream's include / exclude patterns (or is a system collection)"
        return None


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
        problems = [*self._duplicate_names(), *self._token_setting_conflicts(), *self._estuary_overlaps()]
        if problems:
            raise FieldProblems(problems)
        return self

    def stream(self, name: str) -> StreamConfig:
        """The stream called ``name``, or the unit ``stream/member`` of a scoped stream; an unknown name is a
        configuration error that lists the known ones."""
        stream_name, member = scope.split_unit(name)
        for stream in self.streams:
            if stream.name == stream_name:
                return stream if member is None else stream.member(member)
        raise ConfigError([f"no stream named '{stream_name}' (configured: {', '.join(s.name for s in self.streams)})"])

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

    def _estuary_overlaps(self) -> Iterator[tuple[str, str]]:
        """Two streams that could write the same estuary collection (discovery refuses the rest at run time)."""
        for j, later in enumerate(self.streams):
            for i, earlier in enumerate(self.streams[:j]):
                if _same_cluster(earlier.estuary, later.estuary) and scope.may_share(earlier.target, later.target):
                    yield (
                        f"streams[{j}].estuary",
                        f"may write into the same estuary collection as streams[{i}] ('{earlier.name}'); give each "
                        "stream its own estuary database (or collection, or estuary_database_prefix)",
                    )

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


def _same_cluster(a: MongoConfig, b: MongoConfig) -> bool:
    return mongo_uri.addresses(a.connection_uri) == mongo_uri.addresses(b.connection_uri)


def _database_name_ok(database: str, prefix: str) -> bool:
    name = prefix + database
    return bool(database) and not set(name) & BAD_DATABASE_CHARS and len(name) <= scope.MAX_DATABASE_NAME
