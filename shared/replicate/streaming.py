"""The streaming phase of a pass: read a batch of changes, apply it, save the position; again, until the pass ends.

The position moves only after the estuary acknowledged the batch, and also after empty polls (every
``_IDLE_SAVE_INTERVAL``), so an idle stream's token does not age out of the change log. A lifecycle event (drop,
rename, dropDatabase, invalidate) follows ``on_invalidate``: ``stop`` halts the stream for an operator, ``ignore``
moves past it. A lost resume token is not handled here: ``HistoryLostError`` goes up to the pass, whose
``on_history_lost`` policy decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.replicate.outcome import StreamHaltedError
from shared.replicate.retry import retry_transient
from shared.streams import Batch, ChangeStreamReader
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bson.raw_bson import RawBSONDocument
    from pymongo.collection import Collection

    from shared.clock import Clock
    from shared.config import StreamConfig
    from shared.estuary import ApplyResult, EstuaryWriter
    from shared.lease import HeldLease
    from shared.position import CheckpointStore
    from shared.replicate.outcome import PassResult, PassTimer, TimeOutcome
    from shared.telemetry import ReplicationMetrics

_IDLE_SAVE_INTERVAL = 5.0  # seconds between checkpoint writes of the post-batch token while no events arrive
_RENEW_MARGIN = 2.0  # seconds of lease kept beyond write_timeout when a write starts

_log = get_logger(__name__)


def open_reader(
    stream: StreamConfig,
    source: Collection[RawBSONDocument],
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
        source: Collection[RawBSONDocument],
        writer: EstuaryWriter,
        checkpoints: CheckpointStore,
        held: HeldLease,
        clock: Clock,
        metrics: ReplicationMetrics,
        result: PassResult,
        token: Mapping[str, Any] | None,
        start_after: bool,
    ) -> None:
        self._stream = stream
        self._source = source
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
        """Stream until ``timer`` ends the pass; raises ``HistoryLostError`` and ``StreamHaltedError``."""
        active_at = self._clock.monotonic()
        while not timer.expired(active_at):
            batch = self._reader.next_batch(self._stream.batch_size)
            if batch.events:
                self._apply(batch)
                active_at = self._clock.monotonic()
            elif self._clock.monotonic() - self._saved_at >= _IDLE_SAVE_INTERVAL:
                self._save(batch, kind="idle")
            if batch.lifecycle is not None:
                self._lifecycle(batch.lifecycle)
        return timer.outcome

    def close(self) -> None:
        self._reader.close()

    def _apply(self, batch: Batch) -> None:
        started = self._clock.monotonic()

        def attempt() -> ApplyResult:
            self._keep_lease()
            return self._writer.apply(batch.events)

        applied = retry_transient(attempt, what="batch", stream=self._stream.name, clock=self._clock)
        self._save(batch, kind="batch", applied=applied)
        self._count(batch, applied)
        self._metrics.batch_duration.record(self._clock.monotonic() - started, self._attributes)
        if batch.last_event_at is not None:
            lag = max(0.0, self._clock.time() - batch.last_event_at)
            self._result.lag_seconds = lag
            self._metrics.lag.record(lag, self._attributes)

    def _save(self, batch: Batch, *, kind: str, applied: ApplyResult | None = None) -> None:
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
            start_after=self._reader.start_after,
            last_event_at=batch.last_event_at,
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
        self._save(Batch(resume_token=event["_id"]), kind="lifecycle")
