"""What the timer does on every tick, and how healthy a stream's saved position is.

* ``schedule``: the timer's work: one queue message per enabled stream, and a look at every stream's token age
  first, so a token about to fall out of the change log is reported while passes fail, not after;
* ``token_health``: how old a stream's saved resume token is against how long the source's change log holds
  changes at the rate this stream has recently seen (DocumentDB keeps 400 MB of changes for the whole cluster,
  so the estimate is optimistic when other collections write a lot: it is an early warning, not a guarantee).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pymongo.errors import PyMongoError

from shared.errors import ReplicatorError
from shared.telemetry import get_logger
from shared.work_queue import pass_requests

if TYPE_CHECKING:
    from shared.config import ReplicatorConfig
    from shared.position import Checkpoint, CheckpointStore
    from shared.telemetry import ReplicationMetrics

HealthLevel = Literal["ok", "warning", "critical", "unknown"]
_WARNING_RATIO, _CRITICAL_RATIO = 0.5, 0.8

_log = get_logger(__name__)


@dataclass(frozen=True)
class TokenHealth:
    """A stream's saved token: its age, the change log's estimated window, and what that means."""

    stream: str
    level: HealthLevel
    age_s: float | None = None
    window_s: float | None = None  # change log size / recent change rate

    @property
    def ratio(self) -> float | None:
        return None if self.age_s is None or not self.window_s else self.age_s / self.window_s


def token_health(checkpoint: Checkpoint, *, change_log_mb: int, now: float) -> TokenHealth:
    """``warning`` from half the estimated window, ``critical`` from 80 %; ``unknown`` without a rate yet."""
    if checkpoint.resume_token is None or checkpoint.token_saved_at is None:
        return TokenHealth(checkpoint.stream, "unknown")
    age = max(0.0, now - checkpoint.token_saved_at)
    rate = checkpoint.source_bytes_per_s
    if not rate:
        return TokenHealth(checkpoint.stream, "unknown", age_s=age)
    window = change_log_mb * 1024 * 1024 / rate
    ratio = age / window
    level: HealthLevel = "critical" if ratio >= _CRITICAL_RATIO else "warning" if ratio >= _WARNING_RATIO else "ok"
    return TokenHealth(checkpoint.stream, level, age_s=age, window_s=window)


def check_token_ages(
    config: ReplicatorConfig, *, checkpoints: CheckpointStore, metrics: ReplicationMetrics, now: float
) -> list[TokenHealth]:
    """Measure every enabled stream's token age, record it, and log the ones at risk."""
    results = []
    for stream in config.streams:
        checkpoint = checkpoints.read(stream.name) if stream.enabled else None
        if checkpoint is None:
            continue
        health = token_health(checkpoint, change_log_mb=stream.change_log_mb, now=now)
        results.append(health)
        if health.age_s is not None:
            metrics.token_age.record(health.age_s, {"stream": stream.name, "level": health.level})
        if health.level in ("warning", "critical"):
            _log.log(
                logging.ERROR if health.level == "critical" else logging.WARNING,
                "stream %s: its saved resume token is %.0f s old; at the recent change rate the %d MB change log "
                "holds about %.0f s, so it may soon be lost: make sure its passes run (status shows why not)",
                stream.name,
                health.age_s or 0.0,
                stream.change_log_mb,
                health.window_s or 0.0,
                extra={"event": "token_aging", "stream": stream.name, "level": health.level},
            )
    return results


def schedule(
    config: ReplicatorConfig,
    *,
    checkpoints: CheckpointStore,
    metrics: ReplicationMetrics,
    correlation_id: str,
    now: float,
) -> list[str]:
    """The timer tick: check token ages (never at the expense of scheduling), then one request per stream."""
    try:
        check_token_ages(config, checkpoints=checkpoints, metrics=metrics, now=now)
    except (PyMongoError, ReplicatorError) as exc:
        _log.warning("could not check token ages this tick: %s", exc, extra={"event": "token_check_failed"})
    return pass_requests(config, correlation_id=correlation_id, now=now)
