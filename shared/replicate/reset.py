"""The operator's override: restart a stream from now (the skipped span recorded as a gap), at a point in time
(the events since applied again), or copy it again.

Every way the stream's ``stopped`` / ``failed`` status and its last error are cleared, under the stream's lease,
so a reset never races a running pass: while one holds the lease, the reset is refused with a hint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from shared.errors import ConfigError, ReplicatorError
from shared.position import hold_lease
from shared.replicate.streaming import open_reader
from shared.streams import HistoryLostError, at_time, describe_time
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from bson import Timestamp

    from shared.clock import Clock
    from shared.config import StreamConfig
    from shared.position import Checkpoint, CheckpointStore, Held
    from shared.streams import Watched

ResetMode = Literal["now", "resnapshot"]

_log = get_logger(__name__)


def reset_stream(stream: StreamConfig, mode: ResetMode, *, checkpoints: CheckpointStore) -> Checkpoint:
    """Restart ``stream`` from now (recording the skipped span as a gap) or copy it again; clears its error."""
    name = stream.name
    if mode == "resnapshot" and stream.cursor == "single":
        raise ConfigError(
            [f"stream '{name}' reads one change stream for all its collections, which copies nothing"],
            hint="reset it --from now or --at TIME; for copies, use cursor: per_collection",
        )
    with _operator_lease(stream, checkpoints) as (lease, checkpoint):
        if mode == "resnapshot":
            checkpoints.begin_snapshot(lease, reason="operator reset")
        elif checkpoint.resume_token is not None or checkpoint.phase == "copying":
            since = checkpoint.last_event_at or checkpoint.token_saved_at
            checkpoints.record_gap(lease, since=since, reason="operator reset: restarted from now")
        checkpoints.set_status(
            lease, "idle", clear_error=True, extra={} if mode == "resnapshot" else {"phase": "streaming"}
        )
    _log.warning("stream %s reset (%s) by an operator", name, mode, extra={"event": "stream_reset", "stream": name})
    return _read(checkpoints, name)


def reset_stream_at(
    stream: StreamConfig,
    at: Timestamp,
    *,
    checkpoints: CheckpointStore,
    source: Watched,
    clock: Clock,
) -> Checkpoint:
    """Restart ``stream`` at cluster time ``at``: the next pass opens its change stream there (startAtOperationTime)
    and applies the events since again; clears its error. A span between the last applied event and ``at`` (or a
    copy under way) is recorded as a gap.

    Nothing changes when ``at`` is in the future or the source cannot start there (its change log no longer reaches
    it, or it does not open change streams at a cluster time): the error says which.
    """
    name, when = stream.name, describe_time(at)
    if at.time > clock.time():
        raise ReplicatorError(f"{when} is in the future", hint="give a time in the past, such as the incident's start")
    try:
        open_reader(stream, source, clock=clock, token=at_time(at)).check_start()
    except HistoryLostError as exc:
        raise ReplicatorError(f"stream {name} cannot restart at {when}: {exc.message}", hint=exc.hint) from exc
    with _operator_lease(stream, checkpoints) as (lease, checkpoint):
        reason = gap_reason_at(at)
        applied = checkpoint.last_event_at if checkpoint.last_event_at is not None else checkpoint.token_saved_at
        if checkpoint.phase == "copying":
            checkpoints.record_gap(lease, since=applied, reason=f"{reason}, the copy under way abandoned")
        elif checkpoint.resume_token is not None and applied is not None and _before(checkpoint, applied, at):
            checkpoints.record_gap(lease, since=applied, until=float(at.time), reason=reason)
        checkpoints.record_rewind(lease, position=at_time(at), to=at, by="operator", reason="reset --at")
        checkpoints.set_status(lease, "idle", clear_error=True)
    _log.warning(
        "stream %s reset by an operator: restarts at %s", name, when, extra={"event": "stream_reset", "stream": name}
    )
    return _read(checkpoints, name)


def gap_reason_at(at: Timestamp) -> str:
    """The reason of the gap ``reset_stream_at`` records when ``at`` is after the last applied event."""
    return f"operator reset: restarted at {describe_time(at)}"


def _before(checkpoint: Checkpoint, applied: float, at: Timestamp) -> bool:
    """Whether the last applied event came before ``at`` (so the events between were never applied)."""
    if checkpoint.last_cluster_time is not None:
        return checkpoint.last_cluster_time < at
    return applied < at.time


@contextmanager
def _operator_lease(stream: StreamConfig, checkpoints: CheckpointStore) -> Iterator[Held]:
    with hold_lease(checkpoints, stream.name, duration=stream.lease_duration, role="operator-reset") as held:
        if held is None:
            raise ReplicatorError(
                f"a pass of stream {stream.name} is running, so it cannot be reset now",
                hint="try again when it ends (python -m shared status shows the stream), or stop the Function App "
                "first",
            )
        yield held


def _read(checkpoints: CheckpointStore, name: str) -> Checkpoint:
    reset = checkpoints.read(name)
    if reset is None:  # pragma: no cover - the document was just written
        raise ReplicatorError(f"stream {name}: its checkpoint disappeared during the reset")
    return reset
