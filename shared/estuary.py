"""The estuary writer: idempotent bulk apply of change events, with bounded retries and dead letters.

At-least-once delivery, exactly-once state: every event becomes a write keyed by the document's ``_id``
(a replace-with-upsert of the post-image, or a delete), so applying a batch twice (after a crash between the
write and the checkpoint, or by a worker that lost its lease) leaves the same estuary. Several events on one
``_id`` in a batch collapse to the last. An update whose post-image is gone (the document was deleted since)
is skipped; its delete follows in the stream.

A write the estuary refuses because of the document itself (duplicate key on a unique index, validation,
too large) is retried a bounded number of times, then parked in the dead-letter collection with the event,
the error and the attempts, and the batch goes on. A write failing for a transient reason (network, election,
throttling, re-authentication) fails the whole batch with ``TransientError``: nothing is parked, the pass
retries it, and the checkpoint does not move until it succeeds. ``write_unordered`` is that policy, for every
write to the estuary (streaming apply, the snapshot copy, dead-letter replay).

Nothing a source document contains may stop a stream: an event whose write cannot even be built (a field that
does not decode, a document too large to send) is parked with the reason, and the batch goes on.

With ``ApplyLanes`` (``apply_concurrency`` above 1) a batch's writes are split by document key into groups written at
once, for estuaries that take concurrent writers: one write per document per batch (events collapse), so each
document's changes keep their order; refusals are retried and parked per document as without lanes, and nothing is
parked until every group has been written.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import bson
from bson.errors import BSONError, InvalidDocument
from bson.raw_bson import RawBSONDocument
from pymongo import DeleteMany, DeleteOne, InsertOne, ReplaceOne
from pymongo.errors import BulkWriteError, PyMongoError

from shared.errors import TransientError
from shared.mongo_errors import is_transient, is_transient_code, summary
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from shared.config import TransformConfig
    from shared.dead_letters import Parking

WriteOp = InsertOne[Any] | ReplaceOne[Any] | DeleteOne | DeleteMany
# What one document can raise on the way to a write (its bytes, its fields, its size), as opposed to the server or
# the network: the document is parked and the batch goes on.
DOCUMENT_ERRORS = (BSONError, ValueError, TypeError, KeyError, OverflowError)
_WRITES = frozenset({"insert", "update", "replace"})
_T = TypeVar("_T")

_log = get_logger(__name__)


@dataclass
class ApplyResult:
    """What one batch did to the estuary."""

    applied: Counter[str] = field(default_factory=Counter)  # by operation type
    skipped: int = 0  # updates whose post-image is gone, and event types that change no document
    collapsed: int = 0  # events superseded by a later event on the same _id in the batch
    dead_lettered: int = 0


@dataclass(frozen=True)
class Refusal:
    """Why the estuary refused one write of a bulk write: the server's code and message."""

    code: int | None
    message: str


Writes = Callable[[Sequence[WriteOp]], dict[int, Refusal]]  # writes a bulk; the refused writes by index


@dataclass(frozen=True)
class _Planned:
    event: RawBSONDocument
    op: WriteOp
    key: bytes  # document_key(event)


class ApplyLanes:
    """Runs the key groups of a batch at once: the caller's thread writes the first, a pool of ``concurrency - 1``
    threads the others. Threads are made on first use and ended by ``close``."""

    def __init__(self, concurrency: int, *, name: str) -> None:
        self.concurrency = concurrency
        self._name = name
        self._pool: ThreadPoolExecutor | None = None

    def run(self, work: Sequence[Callable[[], _T]]) -> list[_T]:
        """Every call's result, in order. Every call has ended before an error is raised (the first, in order), so no
        write of the batch is still running when the batch is retried or the pass ends."""
        if len(work) <= 1:
            return [call() for call in work]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency - 1, thread_name_prefix=self._name)
        # Each call in a copy of this context: log records keep the invocation's correlation id.
        futures = [self._pool.submit(contextvars.copy_context().run, call) for call in work[1:]]
        try:
            first = work[0]()
        finally:
            wait(futures)
        return [first, *(future.result() for future in futures)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class Applies(Protocol):
    """Applies a batch of change events (``EstuaryWriter``; for a single database- or cluster-wide change stream,
    ``replicate.routing.Router``, which hands each collection's events to its own writer)."""

    def apply(self, events: Sequence[RawBSONDocument], *, lanes: ApplyLanes | None = None) -> ApplyResult: ...


class EstuaryWriter:
    """Applies batches of change events to one estuary collection, through ``write`` (the estuary fence's ``write``,
    or ``write_unordered`` bound to the collection where nothing needs fencing)."""

    def __init__(
        self,
        write: Writes,
        dead_letters: Parking,
        *,
        stream: str,
        max_attempts: int,
        transform: TransformConfig | None = None,
    ) -> None:
        self._write = write
        self._dead_letters = dead_letters
        self._stream = stream
        self._max_attempts = max_attempts
        self._transform = transform

    def apply(self, events: Sequence[RawBSONDocument], *, lanes: ApplyLanes | None = None) -> ApplyResult:
        """Write the batch (in ``lanes``' groups at once, if given); returns only when every event is applied,
        skipped or parked."""
        result = ApplyResult()
        planned = self._plan(events, result)
        if lanes is None or lanes.concurrency < 2:
            groups, refused = [planned], [self._write_all(planned)]
        else:
            groups = _by_key(planned, lanes.concurrency)
            refused = lanes.run([partial(self._write_all, group) for group in groups])
        for group, failures in zip(groups, refused, strict=True):
            for index, refusal in failures.items():
                self._dead_letters.park(
                    self._stream,
                    group[index].event,
                    code=refusal.code,
                    message=refusal.message,
                    attempts=self._max_attempts,
                )
                result.dead_lettered += 1
            for i, p in enumerate(group):
                if i not in failures:
                    result.applied[p.event["operationType"]] += 1
        return result

    def _write_all(self, planned: Sequence[_Planned]) -> dict[int, Refusal]:
        """Write ``planned``, again for the refused writes up to ``max_attempts``; the refusals left, by index."""
        failures = self._write([p.op for p in planned])
        attempts = 1
        while failures and attempts < self._max_attempts:
            _log.warning(
                "stream %s: estuary refused %d document(s) (attempt %d of %d)",
                self._stream,
                len(failures),
                attempts,
                self._max_attempts,
                extra={"event": "apply_refused", "stream": self._stream},
            )
            attempts += 1
            indexes = sorted(failures)
            again = self._write([planned[i].op for i in indexes])
            failures = {indexes[j]: refusal for j, refusal in again.items()}
        return failures

    def _plan(self, events: Sequence[RawBSONDocument], result: ApplyResult) -> list[_Planned]:
        latest: dict[bytes, RawBSONDocument] = {}
        for event in events:
            try:
                key = document_key(event)
            except DOCUMENT_ERRORS as exc:
                self._park_unwritable(event, exc, result)
                continue
            if key in latest:
                del latest[key]  # keep the order of last occurrence
                result.collapsed += 1
            latest[key] = event
        planned = []
        for key, event in latest.items():
            try:
                op = self._op(event)
            except DOCUMENT_ERRORS as exc:
                self._park_unwritable(event, exc, result)
                continue
            if op is None:
                result.skipped += 1
            else:
                planned.append(_Planned(event, op, key))
        return planned

    def _park_unwritable(self, event: RawBSONDocument, error: Exception, result: ApplyResult) -> None:
        """Park an event whose write cannot even be built (its document, not the estuary, is the problem)."""
        message = f"the change could not be turned into a write: {type(error).__name__}: {error}"
        self._dead_letters.park(self._stream, event, code=None, message=message, attempts=1)
        result.dead_lettered += 1

    def _op(self, event: RawBSONDocument) -> WriteOp | None:
        kind = event["operationType"]
        key = event["documentKey"]
        if kind == "delete":
            return DeleteOne(key)
        if kind in _WRITES:
            document = event.get("fullDocument")
            if document is None:
                return None  # deleted since: its delete event follows
            return ReplaceOne(key, transformed(document, self._transform), upsert=True)
        return None


def _by_key(planned: Sequence[_Planned], groups: int) -> list[list[_Planned]]:
    """``planned`` in at most ``groups`` groups (none empty) by document key: a document's writes in one group."""
    split: list[list[_Planned]] = [[] for _ in range(groups)]
    for p in planned:
        split[hash(p.key) % groups].append(p)
    return [group for group in split if group]


def write_unordered(collection: Collection[Any], ops: Sequence[WriteOp]) -> dict[int, Refusal]:
    """Run one unordered bulk write; return the writes the estuary refused for good, by index in ``ops``.

    The one bulk-write error policy: a write concern error, a write error with a transient code, or a transient
    failure of the command fails the whole batch with ``TransientError`` (nothing is parked; the caller retries
    the batch); any other write error is a refusal of that document (duplicate key, validation, too large).
    """
    if not ops:
        return {}
    try:
        collection.bulk_write(list(ops), ordered=False)
    except InvalidDocument as exc:  # refused before sending (too large to encode): find which, one at a time
        if len(ops) == 1:
            return {0: Refusal(None, summary(exc))}
        return {i: refusal for i, op in enumerate(ops) for refusal in write_unordered(collection, [op]).values()}
    except BulkWriteError as exc:
        return refusals(exc)
    except PyMongoError as exc:
        if is_transient(exc):
            raise TransientError(f"estuary write failed: {summary(exc)}") from exc
        raise
    return {}


def refusals(error: BulkWriteError) -> dict[int, Refusal]:
    """The documents a bulk write refused for good, by index; ``TransientError`` when any failure is transient."""
    details = error.details
    if details.get("writeConcernErrors"):
        raise TransientError(f"estuary write concern failed: {details['writeConcernErrors'][0]}") from error
    refused = {e["index"]: Refusal(e.get("code"), str(e.get("errmsg", ""))) for e in details.get("writeErrors", [])}
    if any(is_transient_code(refusal.code) for refusal in refused.values()):
        raise TransientError("estuary refused writes for a transient reason (throttling, election)") from error
    return refused


def transformed(document: RawBSONDocument, transform: TransformConfig | None) -> Mapping[str, Any]:
    """The document as the estuary stores it: the raw bytes as they are, or with the field mapping applied."""
    if transform is None:
        return document  # raw bytes go straight back on the wire
    rename, drop = transform.rename, set(transform.drop)
    return {rename.get(name, name): value for name, value in document.items() if name not in drop}


def document_key(event: Mapping[str, Any]) -> bytes:
    """A change event's ``documentKey`` as exact BSON bytes (types and field order count): equal for every event
    on one document, so a batch collapses them and a replay knows which document a refusal was about."""
    key = event["documentKey"]
    return bytes(key.raw) if isinstance(key, RawBSONDocument) else bson.encode(key)
