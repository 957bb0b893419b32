"""What the timer does on every tick, and how healthy a stream's saved position is.

* ``schedule``: the timer's work: a survey of every scoped stream's collections (``discovery``), one queue message
  per enabled single-collection stream and per group of a scoped stream's collections, and a look at every
  stream's token age first, so a token about to fall out of the change log is reported while passes fail, not after;
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
from shared.mongo_errors import explain
from shared.telemetry import get_logger
from shared.work_queue import PassRequest, pass_requests

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from shared.config import ReplicatorConfig, StreamConfig
    from shared.discovery import Discovery, Survey
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
    config: ReplicatorConfig,
    *,
    checkpoints: CheckpointStore,
    metrics: ReplicationMetrics,
    now: float,
    surveys: Iterable[Survey] = (),
) -> list[TokenHealth]:
    """Measure every enabled stream's token age (each surveyed collection's, for a scoped stream), record it, and
    log the ones at risk."""
    results = []
    for stream, checkpoint in _saved_positions(config, checkpoints, {s.stream: s for s in surveys}):
        health = token_health(checkpoint, change_log_mb=stream.change_log_mb, now=now)
        results.append(health)
        name = checkpoint.stream
        if health.age_s is not None:
            metrics.token_age.record(health.age_s, {"stream": name, "level": health.level})
        if health.level in ("warning", "critical"):
            _log.log(
                logging.ERROR if health.level == "critical" else logging.WARNING,
                "stream %s: its saved resume token is %.0f s old; at the recent change rate the %d MB change log "
                "holds about %.0f s, so it may soon be lost: make sure its passes run (status shows why not)",
                name,
                health.age_s or 0.0,
                stream.change_log_mb,
                health.window_s or 0.0,
                extra={"event": "token_aging", "stream": name, "level": health.level},
            )
    return results


def _saved_positions(
    config: ReplicatorConfig, checkpoints: CheckpointStore, surveys: dict[str, Survey]
) -> Iterator[tuple[StreamConfig, Checkpoint]]:
    """Each enabled stream's checkpoint, or each active collection's for a surveyed scoped stream."""
    for stream in config.streams:
        if not stream.enabled:
            continue
        survey = surveys.get(stream.name)
        if survey is not None:
            yield from ((stream, survey.checkpoints[m]) for m in survey.active if m in survey.checkpoints)
            continue
        checkpoint = checkpoints.read(stream.name) if stream.scope == "collection" else None
        if checkpoint is not None:
            yield stream, checkpoint


def schedule(
    config: ReplicatorConfig,
    *,
    checkpoints: CheckpointStore,
    discovery: Discovery,
    metrics: ReplicationMetrics,
    correlation_id: str,
    now: float,
) -> list[str]:
    """The timer tick: survey the scoped streams, check token ages (neither at the expense of scheduling the
    others), then one request per single-collection stream and per group of a scoped stream's collections."""
    surveys = {stream.name: survey for stream, survey in _surveys(config, discovery)}
    try:
        check_token_ages(config, checkpoints=checkpoints, metrics=metrics, now=now, surveys=surveys.values())
    except (PyMongoError, ReplicatorError) as exc:
        _log.warning("could not check token ages this tick: %s", exc, extra={"event": "token_check_failed"})
    messages = pass_requests(config, correlation_id=correlation_id, now=now)
    for stream in config.streams:
        if stream.name in surveys:
            groups = discovery.plan(stream, surveys[stream.name])
            messages += [PassRequest(stream.name, correlation_id, now, tuple(g)).to_message() for g in groups]
    return messages


def _surveys(config: ReplicatorConfig, discovery: Discovery) -> Iterator[tuple[StreamConfig, Survey]]:
    """A survey of each enabled scoped stream; one whose source cannot be listed is logged and skipped this tick."""
    for stream in config.streams:
        if not stream.enabled or stream.scope == "collection" or stream.cursor == "single":
            continue
        try:
            yield stream, discovery.survey(stream)
        except (PyMongoError, ReplicatorError) as exc:
            _log.error(
                "stream %s: could not list its collections, so none gets a pass this tick: %s",
                stream.name,
                explain(exc)[0],
                extra={"event": "discovery_failed", "stream": stream.name},
            )
