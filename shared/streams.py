"""The change-stream reader: batches of raw events from a saved position, reopening when the cursor dies.

Events stay ``RawBSONDocument`` end to end (documents are not decoded and re-encoded on the way to the
estuary). A batch ends when it is full, when no event arrived within the poll interval, or just before a
lifecycle event (drop, rename, dropDatabase, invalidate), which is handed over separately for the stream's
policy. The reader's position only moves when it hands out a batch; the pass saves that position after the
estuary acknowledged the batch, so reopening (after a failover, a restart, a cursor that silently ended) from
the position never skips an event.

Azure DocumentDB facts (https://learn.microsoft.com/azure/documentdb/change-streams): resume with
``resumeAfter``; cursors must be reopened after a failover; cursor lifetime is about 10 minutes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson import Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError

from shared.errors import ReplicatorError, TransientError
from shared.mongo_errors import is_history_lost, is_transient, summary
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from pymongo.change_stream import CollectionChangeStream
    from pymongo.collection import Collection

    from shared.clock import Clock

LIFECYCLE_EVENTS = frozenset({"drop", "rename", "dropDatabase", "invalidate"})
_IDLE_SLEEP = 0.05  # when a server returns an empty poll at once instead of waiting (max_await ignored)
_MAX_REOPENS = 3

_log = get_logger(__name__)


class HistoryLostError(ReplicatorError):
    """The saved resume token cannot be resumed (the change log moved past it); the stream's policy decides."""


@dataclass
class Batch:
    """Events to apply, the position after them, and the lifecycle event that cut the batch short, if any."""

    events: list[RawBSONDocument] = field(default_factory=list)
    resume_token: Mapping[str, Any] | None = None
    last_event_at: float | None = None
    lifecycle: RawBSONDocument | None = None


class ChangeStreamReader:
    """Reads one collection's change stream in batches, from ``resume_token`` (or from now when ``None``)."""

    def __init__(
        self,
        collection: Collection[RawBSONDocument],
        *,
        resume_token: Mapping[str, Any] | None,
        start_after: bool,
        pipeline: Sequence[Mapping[str, Any]],
        full_document: str,
        poll_interval: float,
        clock: Clock,
    ) -> None:
        self._collection = collection
        self._position = resume_token
        self._start_after = start_after
        self._pipeline = [dict(stage) for stage in pipeline]
        self._full_document = full_document
        self._poll_interval = poll_interval
        self._clock = clock
        self._stream: CollectionChangeStream[RawBSONDocument] | None = None
        self._reopens = 0

    @property
    def position(self) -> Mapping[str, Any] | None:
        return self._position

    @property
    def start_after(self) -> bool:
        """Whether the position is an invalidate event's token (reopen with ``start_after``)."""
        return self._start_after

    def next_batch(self, max_events: int) -> Batch:
        """Up to ``max_events`` events; waits at most about one poll interval when there are none."""
        batch = Batch(resume_token=self._position)
        deadline = self._clock.monotonic() + self._poll_interval
        while len(batch.events) < max_events:
            event = self._try_next()
            if event is None:
                if batch.events or self._clock.monotonic() >= deadline:
                    break
                self._clock.sleep(_IDLE_SLEEP)
                continue
            if event["operationType"] in LIFECYCLE_EVENTS:
                batch.lifecycle = event
                break
            batch.events.append(event)
            batch.resume_token = event["_id"]
            batch.last_event_at = event_time(event) or batch.last_event_at
        if not batch.events and batch.lifecycle is None and self._stream is not None:
            batch.resume_token = self._stream.resume_token or self._position  # post-batch token: idle progress
        if batch.resume_token != self._position:
            self._position, self._start_after = batch.resume_token, False  # a token of the new stream
        return batch

    def current_position(self) -> Mapping[str, Any]:
        """Open the stream and say where it stands: the hand-off point of a copy that starts after this call.

        A server gives a new stream a post-batch token; if it has none yet, one poll gives it, or gives the first
        event after "now", whose own token is as good a hand-off (the copy that follows sees its effect).
        """
        stream = self._open()
        token = stream.resume_token
        if token is None:
            event = self._try_next()
            token = event["_id"] if event is not None else stream.resume_token
        if token is None:
            raise TransientError("the change stream gave no resume token to start from; retrying later")
        self._position = token
        return token

    def skip_to(self, event: RawBSONDocument, *, start_after: bool) -> None:
        """Move past a lifecycle event (policy 'ignore'); after an invalidate the stream must be reopened."""
        self._position = event["_id"]
        self._start_after = start_after
        if start_after:
            self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _try_next(self) -> RawBSONDocument | None:
        try:
            stream = self._open()  # a reopen that fails counts against the bound like a read that fails
            event = stream.try_next()
        except PyMongoError as exc:
            self.close()
            if is_history_lost(exc):
                raise _history_lost(exc) from exc
            if not is_transient(exc):
                raise
            if self._reopens >= _MAX_REOPENS:
                raise TransientError(f"change stream kept failing: {summary(exc)}") from exc
            self._reopens += 1
            _log.warning("change stream interrupted (%s), reopening from the saved position", type(exc).__name__)
            return None
        self._reopens = 0
        if event is None and not stream.alive:
            # The cursor ended without an error (a server restart can do that): reopen from the position.
            _log.info("change stream cursor ended, reopening from the saved position")
            self.close()
        return event

    def _open(self) -> CollectionChangeStream[RawBSONDocument]:
        if self._stream is not None:
            return self._stream
        token = self._position
        try:
            self._stream = self._collection.watch(
                pipeline=self._pipeline,
                full_document=None if self._full_document == "default" else self._full_document,
                resume_after=token if token is not None and not self._start_after else None,
                start_after=token if token is not None and self._start_after else None,
                max_await_time_ms=int(self._poll_interval * 1000),
            )
        except PyMongoError as exc:
            if is_history_lost(exc):
                raise _history_lost(exc) from exc
            raise
        return self._stream


def event_time(event: Mapping[str, Any]) -> float | None:
    """When the event happened (epoch seconds): ``wallTime`` (MongoDB 6+), else ``clusterTime``."""
    for name in ("wallTime", "clusterTime"):
        value = event.get(name)
        if isinstance(value, Timestamp):
            return float(value.time)
        if isinstance(value, dt.datetime):
            return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return None


def _history_lost(exc: PyMongoError) -> HistoryLostError:
    return HistoryLostError(
        f"the saved resume token can no longer be resumed ({summary(exc)})",
        hint="the change log moved past it (on DocumentDB it holds 400 MB); set on_history_lost: start_now to "
        "continue from now with a recorded gap",
    )
