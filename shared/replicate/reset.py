"""The operator's override: restart a stream from now (the skipped span recorded as a gap) or copy it again.

Either way the stream's ``stopped`` / ``failed`` status and its last error are cleared, under the stream's lease,
so a reset never races a running pass: while one holds the lease, the reset is refused with a hint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from shared.errors import ReplicatorError
from shared.position import hold_lease
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from shared.config import StreamConfig
    from shared.position import Checkpoint, CheckpointStore

ResetMode = Literal["now", "resnapshot"]

_log = get_logger(__name__)


def reset_stream(stream: StreamConfig, mode: ResetMode, *, checkpoints: CheckpointStore) -> Checkpoint:
    """Restart ``stream`` from now (recording the skipped span as a gap) or copy it again; clears its error."""
    name = stream.name
    with hold_lease(checkpoints, name, duration=stream.lease_duration, role="operator-reset") as held:
        if held is None:
            raise ReplicatorError(
                f"a pass of stream {name} is running, so it cannot be reset now",
                hint="try again when it ends (python -m shared status shows the stream), or stop the Function App "
                "first",
            )
        lease, checkpoint = held
        if mode == "resnapshot":
            checkpoints.begin_snapshot(lease, reason="operator reset")
        elif checkpoint.resume_token is not None or checkpoint.phase == "copying":
            since = checkpoint.last_event_at or checkpoint.token_saved_at
            checkpoints.record_gap(lease, since=since, reason="operator reset: restarted from now")
        checkpoints.set_status(
            lease, "idle", clear_error=True, extra={} if mode == "resnapshot" else {"phase": "streaming"}
        )
    _log.warning("stream %s reset (%s) by an operator", name, mode, extra={"event": "stream_reset", "stream": name})
    reset = checkpoints.read(name)
    if reset is None:  # pragma: no cover - the document was just written
        raise ReplicatorError(f"stream {name}: its checkpoint disappeared during the reset")
    return reset
