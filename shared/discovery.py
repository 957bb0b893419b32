"""Discovery: which collections a scoped stream covers now, what changed since the last look, and how they are grouped
into passes.

The timer (and ``run``) surveys every scoped stream on every tick:

* a collection that newly matches gets no special treatment: its first pass finds no checkpoint and starts it like any
  new stream (copying it first under ``initial_sync``);
* a collection that is gone from the source (dropped, or renamed: a rename is a drop plus a new collection) has its
  checkpoint marked ``dropped`` with the time it was noticed, and gets no more passes; ``status`` lists it. Azure
  DocumentDB does not deliver drop or rename events to a change stream, so this survey is how a drop is seen there.
  The estuary collection is left as it is: the replicator never deletes a collection;
* a dropped collection that exists again starts over as new (a recreated collection is a new one);
* the rest are grouped, ``collections_per_pass`` at a time, into pass requests; a collection whose stream is stopped
  or failed waits for an operator and is left out.

The replicator's own collections (checkpoints, dead letters, fences) and the estuary collections of every stream on the
source's cluster are never members: a stream must not read what replicators write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pymongo.errors import PyMongoError

from shared import mongo_uri, scope
from shared.fence import FENCES_COLLECTION
from shared.position import hold_lease
from shared.replicate.outcome import DROPPED_MESSAGE
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from pymongo import MongoClient

    from shared.config import MongoConfig, ReplicatorConfig, StreamConfig
    from shared.position import Checkpoint, CheckpointStore

_WAITING = frozenset({"stopped", "failed", "dropped"})  # no passes until an operator acts / the collection returns

_log = get_logger(__name__)


class Clients(Protocol):
    """Gives an endpoint's client (``ClientFactory`` does: one per cluster and identity)."""

    def client(self, config: MongoConfig) -> MongoClient[dict[str, Any]]: ...


@dataclass
class Survey:
    """One look at a scoped stream: its collections now, what changed, and each known collection's checkpoint."""

    stream: str
    members: list[str] = field(default_factory=list)  # covered and present on the source, sorted
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)  # by member, for those that ever ran
    dropped: list[str] = field(default_factory=list)  # marked dropped by this survey
    returned: list[str] = field(default_factory=list)  # dropped before, present again: restarted as new
    refused: dict[str, str] = field(default_factory=dict)  # present and matching, but cannot be replicated: why

    @property
    def active(self) -> list[str]:
        """The members that get passes: present, and not waiting for an operator."""
        return [m for m in self.members if m not in self.checkpoints or self.checkpoints[m].status not in _WAITING]


class Discovery:
    """Surveys scoped streams: lists their source's collections and keeps each collection's checkpoint in step."""

    def __init__(
        self,
        config: ReplicatorConfig,
        *,
        clients: Clients,
        checkpoints: CheckpointStore,
        own_collections: Collection[str],
    ) -> None:
        """``own_collections``: the names of the replicator's collections in the checkpoint store's database."""
        self._config = config
        self._clients = clients
        self._checkpoints = checkpoints
        self._own = frozenset(own_collections)

    def survey(self, stream: StreamConfig, *, mark: bool = True) -> Survey:
        """The stream's collections now; with ``mark``, record drops and returns on their checkpoints."""
        result = Survey(stream.name)
        present = set(self._present(stream))
        for name in sorted(present):
            problem = stream.member_problem(name)
            if problem is None:
                result.members.append(name)
            elif scope.covers(name, stream.scope, stream.include, stream.exclude):
                result.refused[name] = problem  # matches, but e.g. its estuary name would be too long
        for checkpoint in self._checkpoints.units(stream.name):
            member = scope.split_unit(checkpoint.stream)[1]
            if member is None:
                continue
            result.checkpoints[member] = checkpoint
            if not mark:
                continue
            if member not in present and checkpoint.status != "dropped":
                self._mark(stream, member, result, dropped=True)
            elif member in result.members and checkpoint.status == "dropped":
                self._mark(stream, member, result, dropped=False)
        for member, problem in result.refused.items():
            _log.warning("stream %s: collection %s is not replicated: %s", stream.name, member, problem)
        return result

    def plan(self, stream: StreamConfig, survey: Survey) -> list[list[str]]:
        """The active members in groups of ``collections_per_pass``: one pass request each."""
        active, size = survey.active, stream.collections_per_pass
        return [active[i : i + size] for i in range(0, len(active), size)]

    def accepts(self, stream: StreamConfig) -> Callable[[str], bool]:
        """Whether a member is one of ``stream``'s, for a single change stream that sees every collection's events."""
        reserved = self._reserved(stream.source)

        def accept(member: str) -> bool:
            database, collection = scope.split_member(member, stream.scope)
            namespace = (database or stream.source.database, collection)
            ours = collection == FENCES_COLLECTION or namespace in reserved
            return not ours and stream.member_problem(member) is None

        return accept

    def _present(self, stream: StreamConfig) -> list[str]:
        """Every collection on the stream's source (``database.collection`` in a cluster scope), bar our own."""
        client = self._clients.client(stream.source)
        databases = [stream.source.database] if stream.source.database else client.list_database_names()
        reserved = self._reserved(stream.source)
        return [
            scope.member_name(database, info["name"], stream.scope)
            for database in databases
            if database and database not in scope.SYSTEM_DATABASES
            for info in client[database].list_collections()
            if info.get("type", "collection") == "collection"
            and (database, info["name"]) not in reserved
            and info["name"] != FENCES_COLLECTION
        ]

    def _reserved(self, source: MongoConfig) -> set[tuple[str | None, str | None]]:
        """What replicators write on ``source``'s cluster: the checkpoint store's collections and the estuaries of
        single-collection streams (a scoped stream's estuaries are refused by ``member_problem`` or validation)."""
        cluster = mongo_uri.addresses(source.connection_uri)
        store = self._config.checkpoints
        reserved: set[tuple[str | None, str | None]] = set()
        if mongo_uri.addresses(store.connection_uri) == cluster:
            reserved |= {(store.database, name) for name in self._own}
        for stream in self._config.streams:
            estuary = stream.estuary
            if stream.scope == "collection" and mongo_uri.addresses(estuary.connection_uri) == cluster:
                reserved.add((estuary.database, estuary.collection))
        return reserved

    def _mark(self, stream: StreamConfig, member: str, survey: Survey, *, dropped: bool) -> None:
        """Record a drop (status ``dropped``) or a return (the collection starts over as new), under its lease; a
        collection whose pass holds the lease is looked at again next time."""
        unit = scope.unit_name(stream.name, member)
        try:
            with hold_lease(self._checkpoints, unit, duration=stream.lease_duration, role="discovery") as held:
                if held is None:
                    return
                if dropped:
                    self._checkpoints.set_status(held.lease, "dropped", error={"message": DROPPED_MESSAGE})
                    survey.dropped.append(member)
                else:
                    restart = {"resume_token": None, "start_after": False, "phase": "streaming", "snapshot": None}
                    self._checkpoints.set_status(held.lease, "new", clear_error=True, extra=restart)
                    survey.returned.append(member)
        except PyMongoError as exc:  # the next survey tries again; the others go on
            _log.warning("stream %s: could not record that %s %s: %s", stream.name, member, _verb(dropped), exc)
            return
        _log.warning(
            "stream %s: collection %s %s",
            stream.name,
            member,
            _verb(dropped),
            extra={"event": "collection_dropped" if dropped else "collection_returned", "stream": unit},
        )
        refreshed = self._checkpoints.read(unit)
        if refreshed is not None:
            survey.checkpoints[member] = refreshed


def _verb(dropped: bool) -> str:
    return "is gone from the source: stopped (status: dropped)" if dropped else "exists again: starting it over as new"
