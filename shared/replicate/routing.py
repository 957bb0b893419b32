"""``cursor: single``: one change stream for a whole database or cluster, each event routed to its collection's estuary.

Positions: the stream keeps **one shared token** on its own checkpoint (``shop``), with one lease. The events of every
collection arrive in one order on one cursor and a batch is saved only after every collection's writes in it were
acknowledged, so the shared token is exact for each collection: per-collection positions derived from it would all be
the same token. What stays per collection is what is written: each collection's writes go through its own estuary
fence (fence documents named ``<stream>:<member>``, raised to the stream's lease epoch) and its own writer, whose
refused documents are parked under the member's unit name (``shop/orders``), as in per-collection mode.

An event whose namespace the stream does not cover (an excluded or system collection, the replicator's own, an
estuary on the source's cluster) is skipped, and the position moves past it. The server-side ``$match``
(``scope.ns_match``) leaves most of them on the server; this check is the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pymongo.change_stream import ClusterChangeStream

from shared import scope
from shared.estuary import ApplyResult, EstuaryWriter
from shared.fence import EstuaryFence
from shared.raw_bson import RAW

if TYPE_CHECKING:
    from bson.raw_bson import RawBSONDocument
    from pymongo import MongoClient
    from pymongo.collection import Collection
    from pymongo.database import Database

    from shared.clock import Clock
    from shared.config import MongoConfig, StreamConfig
    from shared.dead_letters import Parking
    from shared.estuary import ApplyLanes
    from shared.lease import HeldLease
    from shared.streams import Watched


class Collections(Protocol):
    """Opens an endpoint's collection reading raw BSON, or gives its client (``ClientFactory`` does: one client per
    cluster and identity)."""

    def collection(self, config: MongoConfig) -> Collection[RawBSONDocument]: ...

    def client(self, config: MongoConfig) -> MongoClient[dict[str, Any]]: ...


class Ends(NamedTuple):
    """What a pass reads and writes: a collection and its estuary collection, or (``cursor: single``) a database or
    cluster whose events a ``Router`` (made once the lease is held) sends to each collection's estuary."""

    stream: StreamConfig  # as the pass runs it (a single cursor's reads through the scope's $match)
    source: Watched
    estuary: Collection[RawBSONDocument] | None
    route: Callable[[HeldLease], Router] | None


def pass_ends(
    stream: StreamConfig,
    *,
    collections: Collections,
    accepts: Callable[[StreamConfig], Callable[[str], bool]],
    dead_letters: Parking,
    clock: Clock,
) -> Ends:
    """What a pass of ``stream`` reads and writes."""
    if stream.scope == "collection":
        return Ends(stream, collections.collection(stream.source), collections.collection(stream.estuary), None)
    single = stream.model_copy(update={"pipeline": (scope.ns_match(stream.scope, stream.include), *stream.pipeline)})
    accept = accepts(stream)

    def route(held: HeldLease) -> Router:
        return Router(
            single, held=held, estuary=collections.collection, dead_letters=dead_letters, clock=clock, accepts=accept
        )

    return Ends(single, watched(stream, collections), None, route)


def watched(stream: StreamConfig, collections: Collections) -> Watched:
    """What ``stream``'s change stream is opened on: its collection, or its whole database or cluster."""
    if stream.scope == "collection":
        return collections.collection(stream.source)
    return watch_target(stream, collections.client(stream.source))


def watch_target(stream: StreamConfig, client: MongoClient[Any]) -> Database[RawBSONDocument] | _Cluster:
    """What the single change stream is opened on, reading raw BSON: the database, or the whole cluster."""
    if stream.source.database is not None:
        return client.get_database(stream.source.database, codec_options=RAW)
    return _Cluster(client)


class _Cluster:
    """The whole cluster as a change-stream target that reads raw BSON: ``MongoClient.watch`` decodes with the
    client's own codec, and the clients are shared (one per cluster and identity), so the stream is opened as
    ``MongoClient.watch`` opens it, on the ``admin`` database, with the raw codec."""

    def __init__(self, client: MongoClient[Any]) -> None:
        self._admin = client.get_database("admin", codec_options=RAW)

    def watch(
        self,
        pipeline: Sequence[dict[str, Any]] | None = None,
        full_document: str | None = None,
        resume_after: Any = None,
        max_await_time_ms: int | None = None,
        start_at_operation_time: Any = None,
        start_after: Any = None,
    ) -> ClusterChangeStream[RawBSONDocument]:
        stream: ClusterChangeStream[RawBSONDocument] = ClusterChangeStream(
            self._admin,
            list(pipeline or []),
            full_document,
            resume_after,
            max_await_time_ms,
            None,
            None,
            start_at_operation_time,
            None,
            start_after,
        )
        stream._initialize_cursor()  # what MongoClient.watch does after building it
        return stream


class Router:
    """Applies a batch of a database- or cluster-wide change stream: each collection's events, in order, to its
    estuary collection through its own fence and writer."""

    def __init__(
        self,
        stream: StreamConfig,
        *,
        held: HeldLease,
        estuary: Callable[[MongoConfig], Collection[RawBSONDocument]],
        dead_letters: Parking,
        clock: Clock,
        accepts: Callable[[str], bool],
    ) -> None:
        self._stream = stream
        self._held = held
        self._estuary = estuary
        self._dead_letters = dead_letters
        self._clock = clock
        self._accepts = accepts
        self._writers: dict[str, EstuaryWriter] = {}

    def apply(self, events: Sequence[RawBSONDocument], *, lanes: ApplyLanes | None = None) -> ApplyResult:
        """Every event applied, skipped or parked, collection by collection (each collection's events in order)."""
        result = ApplyResult()
        by_member: dict[str, list[RawBSONDocument]] = {}
        for event in events:
            member = self._member(event)
            if member is None:
                result.skipped += 1
            else:
                by_member.setdefault(member, []).append(event)
        for member, member_events in by_member.items():
            part = self._writer(member).apply(member_events, lanes=lanes)
            result.applied.update(part.applied)
            result.skipped += part.skipped
            result.collapsed += part.collapsed
            result.dead_lettered += part.dead_lettered
        return result

    def _member(self, event: RawBSONDocument) -> str | None:
        """The covered member an event belongs to, or ``None`` to skip it."""
        ns = event.get("ns") or {}
        database, collection = ns.get("db"), ns.get("coll")
        if not isinstance(database, str) or not isinstance(collection, str):
            return None
        member = scope.member_name(database, collection, self._stream.scope)
        return member if self._accepts(member) else None

    def _writer(self, member: str) -> EstuaryWriter:
        writer = self._writers.get(member)
        if writer is None:
            unit = self._stream.member(member)
            fence = EstuaryFence(
                self._estuary(unit.estuary),
                stream=f"{self._stream.name}:{member}",
                held=self._held,
                mode=self._stream.fencing,
                write_timeout=self._stream.estuary_write_timeout,
                clock=self._clock,
            )
            writer = EstuaryWriter(
                fence.write,
                self._dead_letters,
                stream=unit.name,
                max_attempts=self._stream.max_apply_attempts,
                transform=self._stream.transform,
            )
            self._writers[member] = writer
        return writer
