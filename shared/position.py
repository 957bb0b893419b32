"""The checkpoint store: one fenced document per stream in a MongoDB / Cosmos collection.

A stream's document holds its resume token, the time and cluster time of the last applied event, counters, status,
the last error, recorded gaps, the last rewind, and a lease ``{owner, epoch, expires_at}``. A worker takes the lease
with a conditional update that bumps the epoch; every later write is conditional on ``(owner, epoch)``, so a worker
whose lease was taken over (timer overlap, a slow pass, a duplicated queue message) fails its next write with
``LeaseLostError`` and stops before applying anything more. The token moves only in ``save``, which the pass
calls after the estuary acknowledged the batch.

``hold_lease`` is the one lease routine every writer of a stream uses (a pass, a dead-letter replay, an operator
reset): it takes the lease under an owner id that says who holds it, and gives it back when the block ends; the
fenced saves that carry a ``duration`` renew it.

Documents carry ``schema`` (currently 1); ``Checkpoint.from_document`` reads every version we ever wrote
(old versions are test fixtures).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from bson import Timestamp
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.errors import TransientError
from shared.lease import Lease, LeaseLostError, owner_id
from shared.mongo_errors import is_transient, summary

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from shared.clock import Clock

SCHEMA_VERSION = 1
# new: never ran; running: a pass is under way; idle: the last pass ended normally; retrying: the last pass failed
# and the next one retries; stopped / failed: needs an operator (lifecycle event / lost resume token); dropped: a
# collection of a scoped stream that is gone from the source (discovery noticed).
StreamStatus = Literal["new", "running", "idle", "retrying", "stopped", "failed", "dropped"]
# streaming: the change stream is read from resume_token; copying: an initial sync / resnapshot is under way,
# its progress in ``snapshot`` (a ``CopyProgress``).
Phase = Literal["streaming", "copying"]
_MAX_GAPS_KEPT = 100
_WRITE_ATTEMPTS = 3  # tries of one fenced write that fails for a transient reason
_WRITE_BACKOFF = 0.5  # seconds, times the attempt number, between them


@dataclass(frozen=True)
class CopyProgress:
    """A copy's state as saved on the checkpoint (the ``snapshot`` field): why it runs, where the change stream
    resumes once it is done, and how far it got."""

    reason: str
    requested_at: float | None = None
    handoff_token: Mapping[str, Any] | None = None  # captured before the first document is copied
    last_id: Any = None  # the last _id the estuary acknowledged; the copy resumes after it
    copied: int = 0
    total_estimate: int | None = None
    estuary_was_empty: bool = False  # then nothing needs reconciling: all it holds came from this copy
    started_at: float | None = None  # when the hand-off point was captured
    finished_at: float | None = None

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> CopyProgress:
        return cls(
            reason=str(doc.get("reason") or ""),
            requested_at=doc.get("requested_at"),
            handoff_token=doc.get("handoff_token"),
            last_id=doc.get("last_id"),
            copied=int(doc.get("copied") or 0),
            total_estimate=doc.get("total_estimate"),
            estuary_was_empty=bool(doc.get("estuary_was_empty", False)),
            started_at=doc.get("started_at"),
            finished_at=doc.get("finished_at"),
        )


@dataclass
class Checkpoint:
    """A stream's saved state, as read from the store."""

    stream: str
    resume_token: Mapping[str, Any] | None = None
    start_after: bool = False  # the token is an invalidate event's: reopen with start_after
    last_event_at: float | None = None
    updated_at: float | None = None
    status: StreamStatus = "new"
    last_error: dict[str, Any] | None = None
    counters: dict[str, int] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    phase: Phase = "streaming"
    snapshot: CopyProgress | None = None  # the last copy's progress (the current one while phase is "copying")
    token_saved_at: float | None = None  # when resume_token was last written: its age is what ages out
    source_bytes_per_s: float | None = None  # recent change volume seen on the source (for the age warning)
    last_cluster_time: Timestamp | None = None  # of the last applied event: where on_history_lost: rewind reopens
    last_rewind: dict[str, Any] | None = None  # {to: {t, i}, at, by, reason}: the last restart at a cluster time

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Checkpoint:
        """Read a stored document of any schema version (there is one so far)."""
        lease = doc.get("lease") or {}
        return cls(
            stream=str(doc["_id"]),
            resume_token=doc.get("resume_token"),
            start_after=bool(doc.get("start_after", False)),
            last_event_at=doc.get("last_event_at"),
            updated_at=doc.get("updated_at"),
            status=doc.get("status", "new"),
            last_error=doc.get("last_error"),
            counters=dict(doc.get("counters") or {}),
            gaps=list(doc.get("gaps") or []),
            lease_owner=lease.get("owner"),
            lease_expires_at=lease.get("expires_at"),
            phase=doc.get("phase", "streaming"),
            snapshot=CopyProgress.from_document(doc["snapshot"]) if doc.get("snapshot") else None,
            token_saved_at=doc.get("token_saved_at", doc.get("updated_at")),
            source_bytes_per_s=doc.get("source_bytes_per_s"),
            last_cluster_time=_cluster_time(doc.get("last_cluster_time")),
            last_rewind=doc.get("last_rewind"),
        )


class Held(NamedTuple):
    """A taken lease and the checkpoint as it stood when it was taken."""

    lease: Lease
    checkpoint: Checkpoint


class CheckpointStore:
    """Reads and writes stream checkpoints; every write after ``acquire`` is fenced by the lease."""

    def __init__(self, collection: Collection[Any], *, clock: Clock) -> None:
        self._collection = collection
        self._clock = clock

    def acquire(self, stream: str, owner: str, duration: float) -> Held | None:
        """Take the stream's lease if it is free or expired; ``None`` when another worker holds it."""
        now = self._clock.time()
        try:
            doc = self._collection.find_one_and_update(
                # Spelled with $and (the same query as {_id, $or}): nx-27017 drops the _id of the latter form.
                {
                    "$and": [
                        {"_id": stream},
                        {"$or": [{"lease": {"$exists": False}}, {"lease.expires_at": {"$lt": now}}]},
                    ]
                },
                {
                    "$set": {"lease.owner": owner, "lease.expires_at": now + duration, "schema": SCHEMA_VERSION},
                    "$inc": {"lease.epoch": 1},
                    "$setOnInsert": {"status": "new", "created_at": now},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return None  # the document exists and its lease is held: the upsert's insert collided
        if doc is None or doc.get("lease", {}).get("owner") != owner:
            return None
        lease = Lease(stream, owner, int(doc["lease"]["epoch"]), float(doc["lease"]["expires_at"]))
        return Held(lease, Checkpoint.from_document(doc))

    def save(
        self,
        lease: Lease,
        *,
        duration: float,
        resume_token: Mapping[str, Any] | None,
        start_after: bool = False,
        last_event_at: float | None = None,
        counters: Mapping[str, int] | None = None,
        status: StreamStatus = "running",
        last_cluster_time: Timestamp | None = None,
    ) -> Lease:
        """Move the token (after the estuary acknowledged), add to the counters, renew the lease."""
        now = self._clock.time()
        update: dict[str, Any] = {
            "$set": {
                "resume_token": resume_token,
                "start_after": start_after,
                "token_saved_at": now,
                "updated_at": now,
                "status": status,
                "lease.expires_at": now + duration,
            }
        }
        if last_event_at is not None:
            update["$set"]["last_event_at"] = last_event_at
        if last_cluster_time is not None:
            update["$set"]["last_cluster_time"] = _stored(last_cluster_time)
        increments = {f"counters.{name}": n for name, n in (counters or {}).items() if n}
        if increments:
            update["$inc"] = increments
        self._fenced(lease, update)
        return Lease(lease.stream, lease.owner, lease.epoch, now + duration)

    def renew(self, lease: Lease, *, duration: float) -> Lease:
        """Extend the lease without moving anything else (a write is about to start with little of it left)."""
        now = self._clock.time()
        self._fenced(lease, {"$set": {"lease.expires_at": now + duration}})
        return Lease(lease.stream, lease.owner, lease.epoch, now + duration)

    def set_status(
        self,
        lease: Lease,
        status: StreamStatus,
        *,
        error: Mapping[str, Any] | None = None,
        clear_error: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Record how the stream stands (and why), without moving the token."""
        fields: dict[str, Any] = {"status": status, "updated_at": self._clock.time(), **(extra or {})}
        if error is not None:
            fields["last_error"] = {**error, "at": self._clock.time()}
        update: dict[str, Any] = {"$set": fields}
        if clear_error:
            update["$unset"] = {"last_error": ""}
        self._fenced(lease, update)

    def begin_snapshot(self, lease: Lease, *, reason: str) -> CopyProgress:
        """Ask for a copy of the source (initial sync, resnapshot, operator reset); the pass captures where the
        change stream resumes before it copies anything."""
        now = self._clock.time()
        snapshot = {"reason": reason, "requested_at": now, "handoff_token": None, "last_id": None, "copied": 0}
        self._fenced(
            lease,
            {"$set": {"phase": "copying", "snapshot": snapshot, "updated_at": now}, "$inc": {"counters.snapshots": 1}},
        )
        return CopyProgress.from_document(snapshot)

    def start_copy(
        self, lease: Lease, *, handoff_token: Mapping[str, Any], total_estimate: int, estuary_was_empty: bool
    ) -> None:
        """Record the change-stream position captured before the copy, and the size to expect."""
        now = self._clock.time()
        fields = {
            "snapshot.handoff_token": handoff_token,
            "snapshot.total_estimate": total_estimate,
            "snapshot.estuary_was_empty": estuary_was_empty,
            "snapshot.started_at": now,
            "token_saved_at": now,
            "updated_at": now,
        }
        self._fenced(lease, {"$set": fields})

    def save_copy_progress(self, lease: Lease, *, last_id: Any, copied: int, duration: float) -> Lease:
        """Move the copy's position (after the estuary acknowledged the batch) and renew the lease."""
        now = self._clock.time()
        fields = {"snapshot.last_id": last_id, "updated_at": now, "lease.expires_at": now + duration}
        self._fenced(lease, {"$set": fields, "$inc": {"snapshot.copied": copied, "counters.copied": copied}})
        return Lease(lease.stream, lease.owner, lease.epoch, now + duration)

    def finish_copy(self, lease: Lease, *, handoff_token: Mapping[str, Any]) -> None:
        """The copy is complete: stream the changes from the position captured before it began."""
        now = self._clock.time()
        fields = {
            "phase": "streaming",
            "resume_token": handoff_token,
            "start_after": False,
            "token_saved_at": now,
            "snapshot.finished_at": now,
            "updated_at": now,
        }
        self._fenced(lease, {"$set": fields})

    def record_gap(self, lease: Lease, *, since: float | None, reason: str, until: float | None = None) -> None:
        """Remember that events between ``since`` and ``until`` (now) were not replicated; forget the dead token.

        The list is read and rewritten whole, keeping the newest gaps: the lease makes this worker the only writer
        (and nx-27017 stores a ``$push``-ed sub-document as a string).
        """
        now = self._clock.time()
        doc = self._collection.find_one(_fence(lease), {"gaps": 1})
        if doc is None:
            raise _lease_lost(lease)
        gap = {"from": since, "to": now if until is None else until, "reason": reason, "recorded_at": now}
        gaps = [*(doc.get("gaps") or []), gap]
        self._fenced(
            lease,
            {
                "$set": {
                    "resume_token": None,
                    "start_after": False,
                    "token_saved_at": None,
                    "updated_at": now,
                    "gaps": gaps[-_MAX_GAPS_KEPT:],
                },
                "$inc": {"counters.gaps": 1},
            },
        )

    def record_rewind(
        self, lease: Lease, *, position: Mapping[str, Any], to: Timestamp, by: str, reason: str | None = None
    ) -> None:
        """Restart the stream at cluster time ``to`` (``position``: ``streams.at_time(to)``), so the events from then
        on are applied again; kept in ``last_rewind``, counted. The position is as old as the time it names."""
        now = self._clock.time()
        rewind = {"to": _stored(to), "at": now, "by": by, "reason": reason}
        fields = {
            "resume_token": position,
            "start_after": False,
            "token_saved_at": float(to.time),
            "phase": "streaming",
            "last_rewind": rewind,
            "updated_at": now,
        }
        self._fenced(lease, {"$set": fields, "$inc": {"counters.rewinds": 1}})

    def release(self, lease: Lease) -> None:
        """Give the stream back at the end of a pass; a lost lease is not an error here."""
        self._collection.update_one(_fence(lease), {"$set": {"lease.expires_at": 0.0}})

    def read(self, stream: str) -> Checkpoint | None:
        doc = self._collection.find_one({"_id": stream})
        return Checkpoint.from_document(doc) if doc else None

    def units(self, stream: str) -> list[Checkpoint]:
        """The checkpoints of a scoped stream's collections (``stream/...``), in name order."""
        low = f"{stream}/"
        high = low[:-1] + chr(ord("/") + 1)  # every _id that starts with "stream/" sorts in [low, high)
        docs = self._collection.find({"_id": {"$gte": low, "$lt": high}}).sort("_id", 1)
        return [_readable(doc) for doc in docs]

    def _fenced(self, lease: Lease, update: Mapping[str, Any]) -> None:
        """One conditional write; a transient failure (throttling 16500, an election) is tried again a few times
        before the pass gives up on it (a retried ``$inc`` may count twice if the first try did land: counters are
        statistics, the position is a ``$set``)."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                result = self._collection.update_one(_fence(lease), update)
                break
            except PyMongoError as exc:
                if not is_transient(exc):
                    raise
                if attempt == _WRITE_ATTEMPTS:
                    raise TransientError(f"checkpoint write failed: {summary(exc)}") from exc
                self._clock.sleep(_WRITE_BACKOFF * attempt)
        if result.matched_count == 0:
            raise _lease_lost(lease)


@contextmanager
def hold_lease(store: CheckpointStore, stream: str, *, duration: float, role: str) -> Iterator[Held | None]:
    """Hold ``stream``'s lease for the block (``None`` when another worker holds it) and give it back at the end.

    Every checkpoint write inside the block is fenced by the lease; ``save`` and ``save_copy_progress`` renew it.
    """
    held = store.acquire(stream, owner_id(role), duration)
    if held is None:
        yield None
        return
    try:
        yield held
    finally:
        store.release(held.lease)


def _readable(doc: Mapping[str, Any]) -> Checkpoint:
    """The checkpoint, or one marked ``failed`` that says why it cannot be read: one damaged document must not hide
    the other collections of its stream."""
    try:
        return Checkpoint.from_document(doc)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        message = f"the checkpoint document cannot be read ({type(exc).__name__}: {exc}); fix or delete it"
        return Checkpoint(stream=str(doc["_id"]), status="failed", last_error={"message": message})


def _stored(cluster_time: Timestamp) -> dict[str, int]:
    return {"t": cluster_time.time, "i": cluster_time.inc}  # numbers: nx-27017 cannot store a BSON Timestamp


def _cluster_time(value: Any) -> Timestamp | None:
    return Timestamp(int(value["t"]), int(value["i"])) if isinstance(value, Mapping) else None


def _fence(lease: Lease) -> dict[str, Any]:
    return {"_id": lease.stream, "lease.owner": lease.owner, "lease.epoch": lease.epoch}


def _lease_lost(lease: Lease) -> LeaseLostError:
    return LeaseLostError(
        f"stream '{lease.stream}': lease epoch {lease.epoch} was taken over by another worker",
        hint="expected after timer overlap or a slow pass; the other worker continues from the last checkpoint",
    )
