"""One pass of one stream: lease -> read -> apply -> checkpoint, until the time budget or the stream is idle.

This is the only module that joins configuration, clients, the change-stream reader, the estuary writer and
the checkpoint store. The rules it keeps:

* the checkpoint moves only after the estuary acknowledged the batch, and also after empty polls (so an idle
  stream's token does not age out of the change log);
* a worker that lost its lease stops before writing anything more; a stream whose lease is held elsewhere
  ends the pass quietly;
* a lost resume token follows ``on_history_lost`` (``fail``: the stream stops, loudly; ``start_now``: a gap is
  recorded and reported); lifecycle events follow ``on_invalidate``; nothing is skipped silently;
* any other failure is recorded on the checkpoint (``status`` shows it) and re-raised, so the Functions queue
  retries the message and finally moves it to ``-poison``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError

from shared.dead_letters import DeadLetters
from shared.errors import ConfigError, ReplicatorError, TransientError
from shared.estuary import ApplyResult, EstuaryWriter
from shared.position import Checkpoint, CheckpointStore, Lease, LeaseLostError
from shared.snapshot import CopyBatch, MixedIdTypesError, SnapshotCopier
from shared.streams import Batch, ChangeStreamReader, HistoryLostError
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pymongo.collection import Collection

    from shared.auth.mongo_client import ClientFactory
    from shared.clock import Clock
    from shared.config import MongoConfig, ReplicatorConfig, StreamConfig
    from shared.telemetry import ReplicationMetrics

PassOutcome = Literal["idle", "budget", "interrupted", "lease_held", "lease_lost", "stopped", "failed"]

CHECKPOINTS_COLLECTION = "checkpoints"
DEAD_LETTERS_COLLECTION = "dead_letters"
_IDLE_SAVE_INTERVAL = 5.0  # seconds between checkpoint writes of the post-batch token while no events arrive
_APPLY_ATTEMPTS = 3  # tries of a batch that failed for a transient reason, within one pass
_RAW = CodecOptions(document_class=RawBSONDocument)

_T = TypeVar("_T")

_log = get_logger(__name__)


@dataclass
class PassResult:
    """What one pass did; ``outcome`` says why it ended."""

    stream: str
    outcome: PassOutcome
    events: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    batches: int = 0
    copied: int = 0  # documents copied by an initial sync / resnapshot in this pass
    lag_seconds: float | None = None
    seconds: float = 0.0
    detail: str | None = None


class Replicator:
    """Runs passes for the configured streams with shared clients (one instance per process is enough)."""

    def __init__(
        self, config: ReplicatorConfig, *, factory: ClientFactory, clock: Clock, metrics: ReplicationMetrics
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self._factory = factory
        store = config.checkpoints
        database = factory.client(store)[store.database or ""]
        self.checkpoints = CheckpointStore(database[store.collection or CHECKPOINTS_COLLECTION], clock=clock)
        self.dead_letters = DeadLetters(database[DEAD_LETTERS_COLLECTION], clock=clock)

    def stream(self, name: str) -> StreamConfig:
        for stream in self.config.streams:
            if stream.name == name:
                return stream
        known = ", ".join(s.name for s in self.config.streams)
        raise ConfigError([f"no stream named '{name}' (configured: {known})"])

    def run_pass(self, name: str, *, stop: threading.Event | None = None) -> PassResult:
        """One pass of the stream ``name``; raises when it failed in a way worth retrying."""
        stream = self.stream(name)
        started = self.clock.monotonic()
        acquired = self.checkpoints.acquire(name, _owner(), stream.lease_duration)
        if acquired is None:
            _log.info("stream %s: lease held by another worker, nothing to do", name, extra={"stream": name})
            result = PassResult(name, "lease_held")
        else:
            lease, checkpoint = acquired
            try:
                result = _Pass(self, stream, lease, checkpoint, stop or threading.Event()).run()
            finally:
                self.checkpoints.release(lease)
        result.seconds = self.clock.monotonic() - started
        self.metrics.passes.add(1, {"stream": name, "outcome": result.outcome})
        _log.info(
            "stream %s: pass ended (%s): %d events, %d applied, %d dead-lettered, %d batches in %.1fs",
            name,
            result.outcome,
            result.events,
            result.applied,
            result.dead_lettered,
            result.batches,
            result.seconds,
            extra={"event": "pass_ended", "stream": name, "outcome": result.outcome},
        )
        return result

    def collection(self, endpoint: MongoConfig) -> Collection[RawBSONDocument]:
        """The endpoint's collection through the shared client, reading raw BSON (no decode / re-encode)."""
        database = self._factory.client(endpoint)[endpoint.database or ""]
        # pymongo's stubs type a collection by the client's document class, not by the codec options given here.
        raw: Collection[RawBSONDocument] = database.get_collection(endpoint.collection or "", codec_options=_RAW)  # type: ignore[assignment]
        return raw


class _Pass:
    """The state of one running pass."""

    def __init__(
        self, owner: Replicator, stream: StreamConfig, lease: Lease, checkpoint: Checkpoint, stop: threading.Event
    ) -> None:
        self.r = owner
        self.stream = stream
        self.lease = lease
        self.checkpoint = checkpoint
        self.stop = stop
        self.result = PassResult(stream.name, "idle")
        self.saved_at = float("-inf")
        self.started = owner.clock.monotonic()
        self.bytes_read = 0
        self.attributes = {"stream": stream.name}
        self.writer = EstuaryWriter(
            owner.collection(stream.estuary),
            owner.dead_letters,
            stream=stream.name,
            max_attempts=stream.max_apply_attempts,
            transform=stream.transform,
        )
        self.reader = self._reader(checkpoint.resume_token, start_after=checkpoint.start_after)

    def run(self) -> PassResult:
        try:
            if self.checkpoint.status in ("stopped", "failed"):
                error = self.checkpoint.last_error or {}
                self.result.outcome, self.result.detail = self.checkpoint.status, error.get("message")
            else:
                self._loop()
                if self.result.outcome not in ("stopped", "failed"):
                    self.r.checkpoints.set_status(self.lease, "idle", extra=self._rate_fields())
        except LeaseLostError as exc:
            _log.warning("stream %s: %s", self.stream.name, exc.message, extra=self.attributes)
            self.result.outcome = "lease_lost"
        except Exception as exc:
            self._record_failure(exc)
            raise
        finally:
            self.reader.close()
        return self.result

    def _loop(self) -> None:
        clock = self.r.clock
        deadline = clock.monotonic() + self.stream.time_budget
        # A stream without a saved position (first pass, or after a gap) saves where it starts at once, so the
        # next pass resumes there instead of at a later "now".
        self.saved_at = clock.monotonic() if self.checkpoint.resume_token is not None else float("-inf")
        self.r.checkpoints.set_status(self.lease, "running")
        if self.stream.initial_sync and self.checkpoint.status == "new" and self.checkpoint.resume_token is None:
            self._begin_copy("initial_sync")
        if self.checkpoint.phase == "copying" and not self._copy(deadline):
            return
        active_at = clock.monotonic()
        while not self._should_end(deadline, active_at):
            try:
                batch = self.reader.next_batch(self.stream.batch_size)
            except HistoryLostError as exc:
                if self._history_lost(exc, deadline):
                    active_at = clock.monotonic()
                    continue
                return
            if batch.events:
                self._apply(batch)
                active_at = clock.monotonic()
            elif clock.monotonic() - self.saved_at >= _IDLE_SAVE_INTERVAL:
                self._save(batch, kind="idle")
            if batch.lifecycle is not None and not self._lifecycle(batch.lifecycle):
                return

    # ------------------------------------------------------------------------------------------ copying

    def _begin_copy(self, reason: str) -> None:
        self.r.checkpoints.begin_snapshot(self.lease, reason=reason)
        self.checkpoint.phase, self.checkpoint.snapshot = "copying", {"reason": reason}
        _log.warning(
            "stream %s: copying the source collection (%s)",
            self.stream.name,
            reason,
            extra={**self.attributes, "event": "copy_started"},
        )

    def _copy(self, deadline: float) -> bool:
        """Copy the source into the estuary, resuming where the last pass stopped; True when the copy is done."""
        snapshot, store = self.checkpoint.snapshot, self.r.checkpoints
        copier = SnapshotCopier(
            self.r.collection(self.stream.source),
            self.r.collection(self.stream.estuary),
            self.r.dead_letters,
            stream=self.stream.name,
            transform=self.stream.transform,
            batch_size=self.stream.batch_size,
        )
        handoff = snapshot.get("handoff_token")
        if handoff is None:
            try:
                copier.check_id_types()
            except MixedIdTypesError as exc:
                store.set_status(self.lease, "failed", error={"message": exc.message, "hint": exc.hint})
                self.result.outcome, self.result.detail = "failed", exc.message
                return False
            capture = self._reader(None, start_after=False)
            try:
                handoff = capture.current_position()
            finally:
                capture.close()
            snapshot["estuary_was_empty"] = copier.estuary_is_empty()
            store.start_copy(
                self.lease,
                handoff_token=handoff,
                total_estimate=copier.estimate(),
                estuary_was_empty=snapshot["estuary_was_empty"],
            )
        copier.reconcile = not snapshot.get("estuary_was_empty", False)
        last_id = snapshot.get("last_id")
        failures = 0
        while not self._should_end(deadline, active_at=self.r.clock.monotonic()):
            try:
                with contextlib.closing(copier.batches(last_id)) as batches:
                    for batch in batches:
                        last_id = self._copied(batch, last_id)
                        if batch.done:
                            self._finish_copy(handoff)
                            return True
                        if self._should_end(deadline, active_at=self.r.clock.monotonic()):
                            return False
            except TransientError as exc:
                failures += 1
                if failures >= _APPLY_ATTEMPTS:
                    raise
                _log.warning("stream %s: copy interrupted (%s), resuming", self.stream.name, exc.message)
                self.r.clock.sleep(2.0 ** (failures - 1))
        return False

    def _copied(self, batch: CopyBatch, last_id: Any) -> Any:
        """Save one copied batch's position (after the estuary acknowledged it); returns the new position."""
        last_id = batch.last_id if batch.copied else last_id
        self.lease = self.r.checkpoints.save_copy_progress(
            self.lease, last_id=last_id, copied=batch.copied, duration=self.stream.lease_duration
        )
        self.result.copied += batch.copied
        self.result.dead_lettered += batch.dead_lettered
        self.r.metrics.documents_copied.add(batch.copied, self.attributes)
        return last_id

    def _finish_copy(self, handoff: Mapping[str, Any]) -> None:
        self.r.checkpoints.finish_copy(self.lease, handoff_token=handoff)
        self.checkpoint.phase, self.checkpoint.resume_token = "streaming", handoff
        self.reader.close()
        self.reader = self._reader(handoff, start_after=False)
        self.saved_at = self.r.clock.monotonic()
        _log.warning(
            "stream %s: copy finished (%d documents this pass); streaming changes from the hand-off point",
            self.stream.name,
            self.result.copied,
            extra={**self.attributes, "event": "copy_finished"},
        )

    # ------------------------------------------------------------------------------------------ streaming

    def _should_end(self, deadline: float, active_at: float) -> bool:
        """Interrupted, out of time, or idle for ``idle_timeout``: record why and say so."""
        now = self.r.clock.monotonic()
        if self.stop.is_set():
            self.result.outcome = "interrupted"
        elif now >= deadline:
            self.result.outcome = "budget"
        elif now - active_at >= self.stream.idle_timeout:
            self.result.outcome = "idle"
        else:
            return False
        return True

    def _apply(self, batch: Batch) -> None:
        clock = self.r.clock
        started = clock.monotonic()
        applied = self._with_retries(lambda: self.writer.apply(batch.events))
        self._save(batch, kind="batch", applied=applied)
        self._count(batch, applied)
        self.r.metrics.batch_duration.record(clock.monotonic() - started, self.attributes)
        if batch.last_event_at is not None:
            lag = max(0.0, clock.time() - batch.last_event_at)
            self.result.lag_seconds = lag
            self.r.metrics.lag.record(lag, self.attributes)

    def _save(self, batch: Batch, *, kind: str, applied: ApplyResult | None = None) -> None:
        counters = {}
        if applied is not None:
            counters = {
                "events": len(batch.events),
                "applied": sum(applied.applied.values()),
                "skipped": applied.skipped + applied.collapsed,
                "dead_lettered": applied.dead_lettered,
            }
        self.lease = self.r.checkpoints.save(
            self.lease,
            duration=self.stream.lease_duration,
            resume_token=batch.resume_token,
            start_after=self.reader.start_after,
            last_event_at=batch.last_event_at,
            counters=counters,
        )
        self.saved_at = self.r.clock.monotonic()
        self.r.metrics.checkpoint_saves.add(1, {**self.attributes, "kind": kind})

    def _count(self, batch: Batch, applied: ApplyResult) -> None:
        metrics, result = self.r.metrics, self.result
        result.batches += 1
        result.events += len(batch.events)
        self.bytes_read += sum(len(event.raw) for event in batch.events)
        result.applied += sum(applied.applied.values())
        result.skipped += applied.skipped + applied.collapsed
        result.dead_lettered += applied.dead_lettered
        for event in batch.events:
            metrics.events_read.add(1, {**self.attributes, "operation": event["operationType"]})
        for operation, n in applied.applied.items():
            metrics.events_applied.add(n, {**self.attributes, "operation": operation})
        if applied.skipped + applied.collapsed:
            metrics.events_skipped.add(applied.skipped + applied.collapsed, self.attributes)
        if applied.dead_lettered:
            metrics.events_dead_lettered.add(applied.dead_lettered, self.attributes)

    def _with_retries(self, apply: Callable[[], _T]) -> _T:
        for attempt in range(1, _APPLY_ATTEMPTS + 1):
            try:
                return apply()
            except TransientError as exc:
                if attempt == _APPLY_ATTEMPTS:
                    raise
                delay = 2.0 ** (attempt - 1)
                _log.warning(
                    "stream %s: batch failed (%s), retrying in %.0fs",
                    self.stream.name,
                    exc.message,
                    delay,
                    extra=self.attributes,
                )
                self.r.clock.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _history_lost(self, exc: HistoryLostError, deadline: float) -> bool:
        """Apply ``on_history_lost``; returns whether the pass goes on (streaming)."""
        name, policy = self.stream.name, self.stream.on_history_lost
        log_extra = {**self.attributes, "event": "history_lost"}
        if policy == "fail":
            _log.error("stream %s: %s; stream stopped", name, exc.message, extra=log_extra)
            self.r.checkpoints.set_status(self.lease, "failed", error={"message": exc.message, "hint": exc.hint})
            self.result.outcome, self.result.detail = "failed", exc.message
            return False
        self.reader.close()
        if policy == "resnapshot":
            _log.error(
                "stream %s: %s; copying the collection again (on_history_lost: resnapshot)",
                name,
                exc.message,
                extra=log_extra,
            )
            self.r.checkpoints.set_status(
                self.lease, "running", error={"message": exc.message, "recovery": "resnapshot"}
            )
            self._begin_copy(f"resnapshot after: {exc.message}")
            return self._copy(deadline)
        since = self.checkpoint.last_event_at or self.checkpoint.updated_at
        self.r.checkpoints.record_gap(self.lease, self.checkpoint, since=since, reason=exc.message)
        self.r.metrics.gaps.add(1, self.attributes)
        _log.error(
            "stream %s: %s; continuing from now (on_history_lost: start_now), gap recorded",
            name,
            exc.message,
            extra={**self.attributes, "event": "gap_recorded"},
        )
        self.reader = self._reader(None, start_after=False)
        self.saved_at = float("-inf")
        return True

    def _lifecycle(self, event: RawBSONDocument) -> bool:
        """Apply ``on_invalidate`` to a drop / rename / dropDatabase / invalidate; returns whether to go on."""
        kind = event["operationType"]
        if self.stream.on_invalidate == "stop":
            message = f"the source reported '{kind}': stream stopped (on_invalidate: stop)"
            _log.error("stream %s: %s", self.stream.name, message, extra={**self.attributes, "event": "lifecycle"})
            self.r.checkpoints.set_status(self.lease, "stopped", error={"message": message, "event": kind})
            self.result.outcome, self.result.detail = "stopped", message
            return False
        _log.warning("stream %s: ignoring '%s' (on_invalidate: ignore)", self.stream.name, kind, extra=self.attributes)
        self.reader.skip_to(event, start_after=kind == "invalidate")
        self._save(Batch(resume_token=event["_id"]), kind="lifecycle")
        return True

    def _rate_fields(self) -> dict[str, float]:
        """The source's recent change volume (bytes/s, smoothed over passes), for the token-age warning."""
        elapsed = self.r.clock.monotonic() - self.started
        if elapsed <= 0:
            return {}
        rate = self.bytes_read / elapsed
        previous = self.checkpoint.source_bytes_per_s
        return {"source_bytes_per_s": rate if previous is None else (previous + rate) / 2}

    def _record_failure(self, exc: Exception) -> None:
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        _log.error(
            "stream %s: pass failed: %s", self.stream.name, message, extra={**self.attributes, "event": "pass_failed"}
        )
        try:
            self.r.checkpoints.set_status(
                self.lease, "retrying", error={"message": message, "type": type(exc).__name__}
            )
        except (PyMongoError, ReplicatorError) as record_error:  # best effort: the original error matters
            _log.warning("stream %s: could not record the failure: %s", self.stream.name, record_error)

    def _reader(self, token: Any, *, start_after: bool) -> ChangeStreamReader:
        return ChangeStreamReader(
            self.r.collection(self.stream.source),
            resume_token=token,
            start_after=start_after,
            pipeline=self.stream.pipeline,
            full_document=self.stream.full_document,
            poll_interval=self.stream.poll_interval,
            clock=self.r.clock,
        )


def _owner() -> str:
    """A lease owner id unique to this pass; the host part helps an operator find the worker."""
    host = os.environ.get("WEBSITE_INSTANCE_ID", "")[:12] or socket.gethostname()
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
