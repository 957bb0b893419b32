"""The change-stream reader: batches of raw events from a saved position, reopening when the cursor dies.

Events stay ``RawBSONDocument`` end to end (documents are not decoded and re-encoded on the way to the
estuary). A batch ends when it is full, when no event arrived within the poll interval, or just before a
lifecycle event (drop, rename, dropDatabase, invalidate), which is handed over separately for the stream's
policy. The reader's position only moves when it hands out a batch; the pass saves that position after the
estuary acknowledged the batch, so reopening (after a failover, a restart, a cursor that silently ended) from
the position never skips an event.

A position is a resume token, or a cluster time (``at_time``: a rewind, an operator's ``reset --at``), which opens
the stream with ``startAtOperationTime``: the events from that time on, the first of them possibly applied before
(replays are idempotent). The first token the server hands out replaces it.

Azure DocumentDB facts (https://learn.microsoft.com/azure/documentdb/change-streams): resume with
``resumeAfter``; cursors must be reopened after a failover; cursor lifetime is about 10 minutes. Opening at a cluster
time needs its historical change streams (a preview); nx-27017 accepts ``startAtOperationTime`` and starts from now.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bson import Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure, PyMongoError

from shared.errors import ReplicatorError, TransientError
from shared.mongo_errors import is_history_lost, is_transient, summary
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from pymongo.change_stream import ChangeStream

    from shared.clock import Clock

LIFECYCLE_EVENTS = frozenset({"drop", "rename", "dropDatabase", "invalidate"})
_IDLE_SLEEP = 0.05  # when a server returns an empty poll at once instead of waiting (max_await ignored)
_MAX_REOPENS = 3
_START_AT = "startAtOperationTime"  # the key of a position that is a cluster time (see ``at_time``)
# How a server that cannot open a change stream at a cluster time refuses the option itself (not the time); any
# other refusal that names startAtOperationTime counts too (MongoDB's 40415 "... is an unknown field" does).
_START_AT_REFUSALS = frozenset(
    {
        115,  # CommandNotSupported
        238,  # NotImplemented
    }
)

_log = get_logger(__name__)


class HistoryLostError(ReplicatorError):
    """The stream cannot start from its position (the change log moved past it); the stream's policy decides.

    ``at`` is the cluster time when the position was one (a rewind, ``reset --at``), ``None`` for a resume token.
    """

    def __init__(self, message: str, *, hint: str | None = None, at: Timestamp | None = None) -> None:
        super().__init__(message, hint=hint)
        self.at = at


@dataclass
class Batch:
    """Events to apply, the position after them, and the lifecycle event that cut the batch short, if any."""

    events: list[RawBSONDocument] = field(default_factory=list)
    resume_token: Mapping[str, Any] | None = None
    last_event_at: float | None = None
    last_cluster_time: Timestamp | None = None  # of the last event: where a rewind reopens
    lifecycle: RawBSONDocument | None = None


class Watched(Protocol):
    """What a change stream is opened on: a collection, or (``cursor: single``) a whole database or cluster."""

    def watch(
        self,
        *,
        pipeline: list[dict[str, Any]],
        full_document: str | None,
        resume_after: Mapping[str, Any] | None,
        start_after: Mapping[str, Any] | None,
        start_at_operation_time: Timestamp | None,
        max_await_time_ms: int | None,
    ) -> ChangeStream[RawBSONDocument]: ...


class ChangeStreamReader:
    """Reads one collection's change stream in batches, from ``resume_token`` (a token, or a cluster time made by
    ``at_time``; from now when ``None``)."""

    def __init__(
        self,
        collection: Watched,
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
        self._stream: ChangeStream[RawBSONDocument] | None = None
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
            cluster_time = event.get("clusterTime")
            batch.last_cluster_time = cluster_time if isinstance(cluster_time, Timestamp) else batch.last_cluster_time
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

    def check_start(self) -> None:
        """Open the stream at the position and close it again; raises ``HistoryLostError`` when the source cannot
        start there (the change log no longer reaches it, or the server refuses to start at a cluster time)."""
        try:
            self._open()
        finally:
            self.close()

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
            if (lost := self._unresumable(exc)) is not None:
                raise lost from exc
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

    def _open(self) -> ChangeStream[RawBSONDocument]:
        if self._stream is not None:
            return self._stream
        at = position_time(self._position)
        token = self._position if at is None else None
        try:
            self._stream = self._collection.watch(
                pipeline=self._pipeline,
                full_document=None if self._full_document == "default" else self._full_document,
                resume_after=token if token is not None and not self._start_after else None,
                start_after=token if token is not None and self._start_after else None,
                start_at_operation_time=at,
                max_await_time_ms=int(self._poll_interval * 1000),
            )
        except PyMongoError as exc:
            if (lost := self._unresumable(exc)) is not None:
                raise lost from exc
            raise
        return self._stream

    def _unresumable(self, exc: PyMongoError) -> HistoryLostError | None:
        """The failure as a ``HistoryLostError`` when the stream cannot start from the position, else ``None``."""
        at = position_time(self._position)
        if is_history_lost(exc):
            return _history_lost(exc) if at is None else _time_lost(exc, at)
        if at is not None and _refuses_start_at(exc):
            return HistoryLostError(
                f"the source refused to open the change stream at {describe_time(at)} (startAtOperationTime): "
                f"{summary(exc)}",
                hint="this server does not open change streams at a cluster time (on Azure DocumentDB that needs its "
                "historical change streams, a preview feature): restart with reset --from now or --from resnapshot, "
                "and set rewind_fallback for on_history_lost: rewind",
                at=at,
            )
        return None


def at_time(cluster_time: Timestamp) -> dict[str, Any]:
    """A position that is a cluster time: the stream opens there with ``startAtOperationTime``. Stored as numbers
    (a checkpoint store may not keep a BSON Timestamp: nx-27017 does not)."""
    return {_START_AT: {"t": cluster_time.time, "i": cluster_time.inc}}


def position_time(position: Mapping[str, Any] | None) -> Timestamp | None:
    """The cluster time of a position made by ``at_time``; ``None`` for a resume token or no position."""
    value = position.get(_START_AT) if position is not None else None
    if isinstance(value, Timestamp):
        return value
    if isinstance(value, Mapping):
        return Timestamp(int(value["t"]), int(value["i"]))
    return None


def rewind_time(last_cluster_time: Timestamp | None, last_event_at: float | None, margin: float) -> Timestamp | None:
    """Where a rewind reopens: ``margin`` seconds before the cluster time of the last applied event (checkpoints
    written before it was kept: the event's time, in seconds); ``None`` when no event was applied."""
    seconds = float(last_cluster_time.time) if last_cluster_time is not None else last_event_at
    if seconds is None or seconds - margin < 1:
        return None
    return Timestamp(math.floor(seconds - margin), 0)


def describe_time(cluster_time: Timestamp) -> str:
    """``2027-01-15 08:00:00 UTC (cluster time 1800000000.0)``, for messages."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cluster_time.time))
    return f"{when} (cluster time {cluster_time.time}.{cluster_time.inc})"


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
        "continue from now with a recorded gap, or rewind to reopen at the last applied event's time where the "
        "server keeps history by time",
    )


def _time_lost(exc: PyMongoError, at: Timestamp) -> HistoryLostError:
    return HistoryLostError(
        f"the change log no longer reaches {describe_time(at)}, where the stream was to start ({summary(exc)})",
        hint="restart later (reset --at a later time), from now (reset --from now: the span is a recorded gap) or "
        "copy the collection again (reset --from resnapshot)",
        at=at,
    )


def _refuses_start_at(exc: PyMongoError) -> bool:
    """Whether the server refused the ``startAtOperationTime`` option itself (not the time it names)."""
    return isinstance(exc, OperationFailure) and (
        exc.code in _START_AT_REFUSALS or _START_AT.lower() in str(exc).lower()
    )
