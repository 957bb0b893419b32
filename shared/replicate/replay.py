"""Dead-letter replay: write the *current* source state of parked documents, holding the stream's lease.

A parked event's post-image may be older than what the estuary has received since, so instead of the event the
replay writes the document as the source has it now (or deletes it when the source no longer has it), through
the same ``EstuaryWriter`` as a pass, while holding the stream's lease so that no pass writes at the same time.
A record is removed only after the estuary acknowledged its write; a write refused again stays parked (its
attempts grow). The replay claims the stream's estuary fence like a pass does, and writes through it. A stream
with a pipeline is not replayed: the current document would bypass its filter.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bson.raw_bson import RawBSONDocument

from shared.estuary import EstuaryWriter, document_key
from shared.fence import EstuaryFence
from shared.lease import HeldLease
from shared.position import hold_lease
from shared.raw_bson import raw_document
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymongo.collection import Collection

    from shared.clock import Clock
    from shared.config import StreamConfig
    from shared.dead_letters import DeadLetters, ParkedEvent
    from shared.position import CheckpointStore

ReplayOutcome = Literal["done", "lease_held", "lease_expiring", "pipeline"]

REPLAY_BATCH = 100  # parked events replayed (source reads, one bulk write, one delete) at a time
_LEASE_MARGIN = 1 / 3  # of the lease left unused: no batch starts later, so none ends after the lease

_log = get_logger(__name__)


@dataclass
class ReplayResult:
    """What replaying one stream's dead letters did; ``outcome`` says why it ended."""

    stream: str
    outcome: ReplayOutcome = "done"
    replayed: int = 0  # the current source document was written to the estuary
    source_gone: int = 0  # the source no longer has the document: deleted from the estuary
    still_refused: int = 0  # refused again: still parked, its attempts grew
    remaining: int = 0  # parked for the stream afterwards
    detail: str | None = None


def replay(
    stream: StreamConfig,
    *,
    dead_letters: DeadLetters,
    checkpoints: CheckpointStore,
    source: Collection[RawBSONDocument],
    estuary: Collection[Any],
    clock: Clock,
    limit: int | None = None,
    batch_size: int = REPLAY_BATCH,
) -> ReplayResult:
    """Apply the current source state of ``stream``'s parked documents, holding the stream's lease.

    Ends early (outcome ``lease_expiring``) before the lease could run out, so no pass ever writes at the same
    time; running it again goes on where it stopped. ``limit`` replays at most that many. Transient failures
    raise (``TransientError``) with the lease released and nothing of the failed batch removed.
    """
    result = ReplayResult(stream.name)
    if stream.pipeline:
        result.outcome, result.remaining = "pipeline", dead_letters.count(stream.name)
        result.detail = (
            "the stream filters or reshapes its events with a pipeline, which replaying the current source "
            "documents would bypass; not replayed"
        )
        return result
    with hold_lease(checkpoints, stream.name, duration=stream.lease_duration, role="dead-letters-replay") as held:
        if held is None:
            result.outcome, result.remaining = "lease_held", dead_letters.count(stream.name)
            result.detail = f"a pass of stream {stream.name} is running; try again when it ends"
            return result
        deadline = held.lease.expires_at - stream.lease_duration * _LEASE_MARGIN
        fence = EstuaryFence(
            estuary,
            stream=stream.name,
            held=HeldLease(held.lease, clock=clock),
            mode=stream.fencing,
            write_timeout=stream.estuary_write_timeout,
            clock=clock,
        )
        refusals = _Refusals(dead_letters)
        writer = EstuaryWriter(
            fence.write,
            refusals,
            stream=stream.name,
            max_attempts=stream.max_apply_attempts,
            transform=stream.transform,
        )
        left = limit
        size = min(batch_size, limit) if limit else batch_size
        with closing(dead_letters.iter_parked(stream.name, size)) as batches:
            for batch in batches:
                if clock.time() >= deadline:
                    result.outcome = "lease_expiring"
                    break
                chunk = batch if left is None else batch[:left]
                _replay_batch(chunk, source, writer, refusals, dead_letters, result)
                if left is not None:
                    left -= len(chunk)
                    if left <= 0:
                        break
    result.remaining = dead_letters.count(stream.name)
    _log.info(
        "stream %s: dead letters replayed (%s): %d written, %d deleted (gone from the source), %d still refused, "
        "%d left",
        stream.name,
        result.outcome,
        result.replayed,
        result.source_gone,
        result.still_refused,
        result.remaining,
        extra={"event": "dead_letters_replayed", "stream": stream.name},
    )
    return result


class _Refusals:
    """The dead letters as the replay's writer sees them: parked as usual, and the documents remembered."""

    def __init__(self, dead_letters: DeadLetters) -> None:
        self._dead_letters = dead_letters
        self.document_keys: set[bytes] = set()

    def park(self, stream: str, event: RawBSONDocument, *, code: int | None, message: str, attempts: int) -> None:
        self._dead_letters.park(stream, event, code=code, message=message, attempts=attempts)
        self.document_keys.add(document_key(event))


def _replay_batch(
    batch: Sequence[ParkedEvent],
    source: Collection[RawBSONDocument],
    writer: EstuaryWriter,
    refusals: _Refusals,
    dead_letters: DeadLetters,
    result: ReplayResult,
) -> None:
    usable = [p for p in batch if "_id" in p.document_key]
    for p in batch:
        if "_id" not in p.document_key:  # never written by park; left for a person rather than guessed at
            _log.warning("stream %s: dead letter %s has no document key; left parked", p.stream, p.ref)
            result.still_refused += 1
    events = _current_events(source, usable) if usable else []
    refusals.document_keys.clear()
    writer.apply(events)
    done = []
    for parked, event in zip(usable, events, strict=True):
        # Events on one document collapse to one write: each stays parked if that write was refused.
        if document_key(event) in refusals.document_keys:
            result.still_refused += 1
            continue
        done.append(parked.ref)
        if event["operationType"] == "delete":
            result.source_gone += 1
        else:
            result.replayed += 1
    dead_letters.remove(done)


def _current_events(source: Collection[RawBSONDocument], batch: Sequence[ParkedEvent]) -> list[RawBSONDocument]:
    """For each parked event, a change event carrying its document's current state (a delete when it is gone)."""
    found = list(source.find({"$or": [dict(p.document_key) for p in batch]}))
    events = []
    for parked in batch:
        key = parked.document_key
        current = next((doc for doc in found if all(name in doc and doc[name] == v for name, v in key.items())), None)
        if current is None:  # the server's equality, not Python's, decides that a document is gone
            current = source.find_one(dict(key))
        body: dict[str, Any] = {"_id": parked.token, "documentKey": key}
        if current is None:
            body["operationType"] = "delete"
        else:
            body["operationType"], body["fullDocument"] = "replace", current
        events.append(raw_document(body))
    return events
