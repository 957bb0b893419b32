"""The copy phase of a pass: initial sync or resnapshot, resumable, handing over to the change stream when done.

Before the first document is copied, the change stream's current position is captured (the hand-off point) and
saved with the copy's progress; then ``SnapshotCopier`` copies the source in ``_id`` order, and the position of
every batch the estuary acknowledged is saved, so a later pass resumes after it. When the last batch is in, the
checkpoint switches to streaming from the hand-off point: the changes made during the copy are replayed, harmlessly
(idempotent writes of current post-images). Source ``_id`` values of mixed types halt the stream: ranges over them
would skip documents.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from shared.replicate.outcome import StreamHaltedError
from shared.replicate.retry import retry_transient
from shared.replicate.streaming import open_reader
from shared.snapshot import CopyBatch, MixedIdTypesError, SnapshotCopier
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bson.raw_bson import RawBSONDocument
    from pymongo.collection import Collection

    from shared.clock import Clock
    from shared.config import StreamConfig
    from shared.dead_letters import Parking
    from shared.estuary import Writes
    from shared.lease import HeldLease, Lease
    from shared.position import CheckpointStore, CopyProgress
    from shared.replicate.outcome import PassResult, PassTimer
    from shared.telemetry import ReplicationMetrics

_log = get_logger(__name__)


def begin_copy(checkpoints: CheckpointStore, lease: Lease, *, stream: str, reason: str) -> CopyProgress:
    """Put the stream in the copying phase (initial sync, resnapshot); the copy itself starts with ``Copy.run``."""
    progress = checkpoints.begin_snapshot(lease, reason=reason)
    _log.warning(
        "stream %s: copying the source collection (%s)",
        stream,
        reason,
        extra={"stream": stream, "event": "copy_started"},
    )
    return progress


class Copy:
    """Copies one stream's source into its estuary during one pass, saving its progress after every batch."""

    def __init__(
        self,
        stream: StreamConfig,
        *,
        source: Collection[RawBSONDocument],
        estuary: Collection[Any],
        write: Writes,
        dead_letters: Parking,
        checkpoints: CheckpointStore,
        held: HeldLease,
        clock: Clock,
        metrics: ReplicationMetrics,
        result: PassResult,
    ) -> None:
        self._stream = stream
        self._source = source
        self._checkpoints = checkpoints
        self._held = held
        self._clock = clock
        self._metrics = metrics
        self._result = result
        self._attributes = {"stream": stream.name}
        self._copier = SnapshotCopier(
            source,
            estuary,
            dead_letters,
            write=write,
            stream=stream.name,
            transform=stream.transform,
            batch_size=stream.batch_size,
        )
        self._last_id: Any = None

    def run(self, progress: CopyProgress, timer: PassTimer) -> Mapping[str, Any] | None:
        """The hand-off token once the copy is complete; ``None`` when the pass must end first (the next resumes).

        Raises ``StreamHaltedError`` for a source whose ``_id`` values mix types.
        """
        handoff, estuary_was_empty = progress.handoff_token, progress.estuary_was_empty
        if handoff is None:
            handoff, estuary_was_empty = self._start()
        self._copier.reconcile = not estuary_was_empty
        self._last_id = progress.last_id
        done = retry_transient(lambda: self._copy(timer), what="copy", stream=self._stream.name, clock=self._clock)
        if not done:
            return None
        self._checkpoints.finish_copy(self._held.lease, handoff_token=handoff)
        _log.warning(
            "stream %s: copy finished (%d documents this pass); streaming changes from the hand-off point",
            self._stream.name,
            self._result.copied,
            extra={**self._attributes, "event": "copy_finished"},
        )
        return handoff

    def _start(self) -> tuple[Mapping[str, Any], bool]:
        """Check the ``_id`` types, capture the hand-off point and save it; returns it and whether the estuary was
        empty (then there is nothing to reconcile)."""
        try:
            self._copier.check_id_types()
        except MixedIdTypesError as exc:
            raise StreamHaltedError("failed", exc.message, hint=exc.hint) from exc
        capture = open_reader(self._stream, self._source, clock=self._clock, token=None)
        try:
            handoff = capture.current_position()
        finally:
            capture.close()
        estuary_was_empty = self._copier.estuary_is_empty()
        self._checkpoints.start_copy(
            self._held.lease,
            handoff_token=handoff,
            total_estimate=self._copier.estimate(),
            estuary_was_empty=estuary_was_empty,
        )
        return handoff, estuary_was_empty

    def _copy(self, timer: PassTimer) -> bool:
        """Copy batches after the last acknowledged ``_id``; True once the last one is in, False when time is up."""
        if timer.expired(active_at=self._clock.monotonic()):
            return False
        with contextlib.closing(self._copier.batches(self._last_id)) as batches:
            for batch in batches:
                self._copied(batch)
                if batch.done:
                    return True
                if timer.expired(active_at=self._clock.monotonic()):
                    return False
        return False

    def _copied(self, batch: CopyBatch) -> None:
        """Save one copied batch's position (after the estuary acknowledged it) and count it."""
        if batch.copied:
            self._last_id = batch.last_id
        renewed = self._checkpoints.save_copy_progress(
            self._held.lease, last_id=self._last_id, copied=batch.copied, duration=self._stream.lease_duration
        )
        self._held.renewed(renewed)
        self._result.copied += batch.copied
        self._result.dead_lettered += batch.dead_lettered
        self._metrics.documents_copied.add(batch.copied, self._attributes)
