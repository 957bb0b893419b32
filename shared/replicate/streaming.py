"""The streaming phase of a pass: read a batch of changes, apply it, save the position; again, until the pass ends.

The position moves only after the estuary acknowledged the batch, and also after empty polls (every
``IDLE_SAVE_INTERVAL``), so an idle stream's token does not age out of the change log. A lifecycle event (drop,
rename, dropDatabase, invalidate) follows ``on_invalidate``: ``stop`` halts the stream for an operator, ``ignore``
moves past it. A lost resume token is not handled here: ``HistoryLostError`` goes up to the pass, whose
``on_history_lost`` policy decides.

Reading and writing overlap: while the pass thread writes a batch, a helper thread reads the next one (one batch
ahead; after a batch of more than ``READ_AHEAD_MAX_BYTES`` the next is read only once it is written, so memory stays
within one batch and that much); the estuary and the source work at the same time instead of in turns. The pass
thread alone renews the lease and saves the position, after the estuary acknowledged; what the helper read (a
batch, a lifecycle event, a lost history) reaches the pass thread in order, after the batch before it was applied.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from shared.estuary import ApplyLanes
from shared.replicate.outcome import StreamHaltedError
from shared.replicate.retry import retry_transient
from shared.streams import Batch, ChangeStreamReader
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from bson.raw_bson import RawBSONDocument

    from shared.clock import Clock
    from shared.config import StreamConfig
    from shared.estuary import Applies, ApplyResult
    from shared.lease import HeldLease
    from shared.position import CheckpointStore
    from shared.replicate.outcome import PassResult, PassTimer, TimeOutcome
    from shared.streams import Watched
    from shared.telemetry import ReplicationMetrics

IDLE_SAVE_INTERVAL = 5.0  # seconds between checkpoint writes of the post-batch token while no events arrive
_RENEW_MARGIN = 2.0  # seconds of lease kept beyond write_timeout when a write starts
READ_AHEAD_MAX_BYTES = 64 * 1024 * 1024  # a batch of more event bytes is written before the next one is read

_log = get_logger(__name__)


def open_reader(
    stream: StreamConfig,
    source: Watched,
    *,
    clock: Clock,
    token: Mapping[str, Any] | None,
    start_after: bool = False,
) -> ChangeStreamReader:
    """A reader of ``stream``'s change stream from ``token`` (``None``: from now), as the stream is configured."""
    return ChangeStreamReader(
        source,
        resume_token=token,
        start_after=start_after,
        pipeline=stream.pipeline,
        full_document=stream.full_document,
        poll_interval=stream.poll_interval,
        clock=clock,
    )


class Streamer:
    """Applies one stream's change events to its estuary for one pass, saving the position after every batch."""

    def __init__(
        self,
        stream: StreamConfig,
        *,
        source: Watched,
        writer: Applies,
        checkpoints: CheckpointStore,
        held: HeldLease,
        clock: Clock,
        metrics: ReplicationMetrics,
        result: PassResult,
        token: Mapping[str, Any] | None,
        start_after: bool,
        idle_save_interval: float = IDLE_SAVE_INTERVAL,
    ) -> None:
        """``idle_save_interval``: 0 for a pass that ends at its first empty poll (a scoped stream's collection), so
        that poll's post-batch token is saved and an idle collection's position keeps up with the change log."""
        self._stream = stream
        self._source = source
        self._idle_save_interval = idle_save_interval
        self._writer = writer
        self._checkpoints = checkpoints
        self._held = held
        self._clock = clock
        self._metrics = metrics
        self._result = result
        self._attributes = {"stream": stream.name}
        self.bytes_read = 0  # raw size of the events read, for the source's change rate
        # The checkpoint's own position counts as saved; a stream without one saves where it starts at once, so the
        # next pass resumes there instead of at a later "now".
        self._reader = open_reader(stream, source, clock=clock, token=token, start_after=start_after)
        self._saved_at = clock.monotonic() if token is not None else float("-inf")

    def restart_at(self, token: Mapping[str, Any] | None, *, saved: bool) -> None:
        """Read from ``token`` (``None``: from now) from here on; ``saved``: the checkpoint holds it already."""
        self._reader.close()
        self._reader = open_reader(self._stream, self._source, clock=self._clock, token=token)
        self._saved_at = self._clock.monotonic() if saved else float("-inf")

    def run(self, timer: PassTimer) -> TimeOutcome:
        """Stream until ``timer`` ends the pass; raises ``HistoryLostError`` and ``StreamHaltedError``.

        A batch starts the read of the next one before it is written (``reads_ahead``). When the pass ends with a read
        still in flight, its batch is dropped unapplied and the reader goes back to the last applied position.
        """
        name = self._stream.name
        ahead = _ReadAhead(lambda: self._reader.next_batch(self._stream.batch_size), name=f"read-{name}")
        lanes = ApplyLanes(self._stream.apply_concurrency, name=f"apply-{name}")
        resume_from: tuple[Mapping[str, Any] | None, bool] = (self._reader.position, self._reader.start_after)
        try:
            active_at = self._clock.monotonic()
            while not timer.expired(active_at):
                batch = ahead.take()
                start_after = self._reader.start_after  # of this batch's position: nothing is being read now
                if reads_ahead(batch):
                    resume_from = (self._reader.position, start_after)
                    ahead.start()
                if batch.events:
                    self._apply(batch, lanes, start_after=start_after)
                    active_at = self._clock.monotonic()
                elif self._clock.monotonic() - self._saved_at >= self._idle_save_interval:
                    self._save(batch, kind="idle", start_after=start_after)
                if batch.lifecycle is not None:
                    self._lifecycle(batch.lifecycle)
        finally:
            dropped = ahead.close()
            lanes.close()
        if dropped:
            self._reopen(*resume_from)
        return timer.outcome

    def close(self) -> None:
        self._reader.close()

    def _reopen(self, token: Mapping[str, Any] | None, start_after: bool) -> None:
        """Read from ``token`` again (the checkpoint holds it already)."""
        self._reader.close()
        self._reader = open_reader(self._stream, self._source, clock=self._clock, token=token, start_after=start_after)

    def _apply(self, batch: Batch, lanes: ApplyLanes, *, start_after: bool) -> None:
        started = self._clock.monotonic()

        def attempt() -> ApplyResult:
            self._keep_lease()
            return self._writer.apply(batch.events, lanes=lanes)

        applied = retry_transient(attempt, what="batch", stream=self._stream.name, clock=self._clock)
        self._save(batch, kind="batch", start_after=start_after, applied=applied)
        self._count(batch, applied)
        self._metrics.batch_duration.record(self._clock.monotonic() - started, self._attributes)
        if batch.last_event_at is not None:
            lag = max(0.0, self._clock.time() - batch.last_event_at)
            self._result.lag_seconds = lag
            self._metrics.lag.record(lag, self._attributes)

    def _save(self, batch: Batch, *, kind: str, start_after: bool, applied: ApplyResult | None = None) -> None:
        counters = {}
        if applied is not None:
            counters = {
                "events": len(batch.events),
                "applied": sum(applied.applied.values()),
                "skipped": applied.skipped + applied.collapsed,
                "dead_lettered": applied.dead_lettered,
            }
        renewed = self._checkpoints.save(
            self._held.lease,
            duration=self._stream.lease_duration,
            resume_token=batch.resume_token,
            start_after=start_after,
            last_event_at=batch.last_event_at,
            last_cluster_time=batch.last_cluster_time,
            counters=counters,
        )
        self._held.renewed(renewed)
        self._saved_at = self._clock.monotonic()
        self._metrics.checkpoint_saves.add(1, {**self._attributes, "kind": kind})

    def _keep_lease(self) -> None:
        """Renew the lease before a write that could otherwise outlast it (a retry after a slow attempt)."""
        if self._held.remaining() < self._stream.estuary_write_timeout + _RENEW_MARGIN:
            self._held.renewed(self._checkpoints.renew(self._held.lease, duration=self._stream.lease_duration))

    def _count(self, batch: Batch, applied: ApplyResult) -> None:
        metrics, result = self._metrics, self._result
        result.batches += 1
        result.events += len(batch.events)
        self.bytes_read += sum(len(event.raw) for event in batch.events)
        result.applied += sum(applied.applied.values())
        result.skipped += applied.skipped + applied.collapsed
        result.dead_lettered += applied.dead_lettered
        for event in batch.events:
            metrics.events_read.add(1, {**self._attributes, "operation": event["operationType"]})
        for operation, n in applied.applied.items():
            metrics.events_applied.add(n, {**self._attributes, "operation": operation})
        if applied.skipped + applied.collapsed:
            metrics.events_skipped.add(applied.skipped + applied.collapsed, self._attributes)
        if applied.dead_lettered:
            metrics.events_dead_lettered.add(applied.dead_lettered, self._attributes)

    def _lifecycle(self, event: RawBSONDocument) -> None:
        """Apply ``on_invalidate`` to a drop / rename / dropDatabase / invalidate."""
        kind = event["operationType"]
        if self._stream.on_invalidate == "stop":
            message = f"the source reported '{kind}': stream stopped (on_invalidate: stop)"
            _log.error("stream %s: %s", self._stream.name, message, extra={**self._attributes, "event": "lifecycle"})
            raise StreamHaltedError("stopped", message, details={"event": kind})
        _log.warning(
            "stream %s: ignoring '%s' (on_invalidate: ignore)", self._stream.name, kind, extra=self._attributes
        )
        self._reader.skip_to(event, start_after=kind == "invalidate")
        self._save(Batch(resume_token=event["_id"]), kind="lifecycle", start_after=self._reader.start_after)


def reads_ahead(batch: Batch) -> bool:
    """Whether the next batch is read while ``batch`` is written: not after a lifecycle event (its policy may move or
    reopen the reader first), nor after more than ``READ_AHEAD_MAX_BYTES`` of events."""
    if not batch.events or batch.lifecycle is not None:
        return False
    return sum(len(event.raw) for event in batch.events) <= READ_AHEAD_MAX_BYTES


class _ReadAhead:
    """Reads the next batch on a helper thread while the pass thread writes the previous one.

    The change-stream cursor is never used by two threads at once (pymongo's cursors are not thread-safe): the
    helper reads only between ``start`` and the ``take`` that collects its batch, and the pass thread touches the
    reader only while no read is in flight. A read's error is raised by ``take``, on the pass thread.
    """

    def __init__(self, read: Callable[[], Batch], *, name: str) -> None:
        self._read = read
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[Batch] | None = None

    def start(self) -> None:
        """Begin reading the next batch (in a copy of this context: log records keep the correlation id)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._pending = self._pool.submit(contextvars.copy_context().run, self._read)

    def take(self) -> Batch:
        """The batch read ahead, or one read now."""
        pending, self._pending = self._pending, None
        return self._read() if pending is None else pending.result()

    def close(self) -> bool:
        """Wait for a read in flight (about one poll interval at most), drop it, end the helper thread; whether a
        read was dropped."""
        pending, self._pending = self._pending, None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        return pending is not None
