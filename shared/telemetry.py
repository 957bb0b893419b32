"""Metrics, structured logs and the correlation id that ties an invocation's log lines together.

Metrics are OpenTelemetry instruments; they reach Application Insights only when
``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set (``configure_telemetry``). Without it nothing is configured
and the instruments are no-ops, which is also what keeps local runs and tests free of exporters. Tests pass a
private ``MeterProvider`` with an ``InMemoryMetricReader`` to the components they check.

Every logger made by ``get_logger`` stamps records with the current correlation id and scrubs secrets.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from shared.redaction import RedactingFilter

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

METER_NAME = "cosmos_mongo_replicator"
APPINSIGHTS_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"

_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)


# ---------------------------------------------------------------------------------------------- correlation


def current_correlation_id() -> str | None:
    return _correlation.get()


@contextmanager
def correlation(correlation_id: str | None = None) -> Iterator[str]:
    """Run a block under a correlation id (the Functions invocation id when there is one, else a new one)."""
    value = correlation_id or uuid.uuid4().hex
    token = _correlation.set(value)
    try:
        yield value
    finally:
        _correlation.reset(token)


class _CorrelationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = _correlation.get() or "-"
        return True


_FILTERS: tuple[logging.Filter, ...] = (_CorrelationFilter(), RedactingFilter())


def get_logger(name: str) -> logging.Logger:
    """A logger whose records carry the correlation id and never a secret."""
    logger = logging.getLogger(name)
    for f in _FILTERS:
        if f not in logger.filters:
            logger.addFilter(f)
    return logger


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, correlation id, message and the ``extra=`` fields."""

    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            out["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(*, level: int = logging.INFO, json_lines: bool = False) -> None:
    """Console logging for the command line; the Functions host installs its own handlers."""
    handler = logging.StreamHandler()
    handler.addFilter(_FILTERS[0])
    handler.addFilter(_FILTERS[1])
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(correlation_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("shared").setLevel(level)


def configure_telemetry(environ: Mapping[str, str] | None = None) -> bool:
    """Send metrics, logs and traces to Application Insights when its connection string is set.

    ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` (``Authorization=AAD;ClientId=...``) makes the exporter
    authenticate with the managed identity; azure-monitor-opentelemetry reads it itself
    (https://learn.microsoft.com/azure/azure-monitor/app/azure-ad-authentication).
    """
    env = os.environ if environ is None else environ
    if not env.get(APPINSIGHTS_SETTING):
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor  # heavy: imported only when used

    configure_azure_monitor(logger_name="shared")
    return True


# ---------------------------------------------------------------------------------------------- metrics


def _default_meter() -> Meter:
    """The global provider's meter; OpenTelemetry is imported here, on first use, not when a function app indexes."""
    from opentelemetry import metrics

    return metrics.get_meter(METER_NAME)


class AuthMetrics:
    """The Entra auth instruments (names follow the feature list's ``replicator_mongo_*`` convention).

    Attributes stay low-cardinality: the identity label (client id or "system-assigned"), the credential
    kind, the error type, the auth method.
    """

    def __init__(self, meter: Meter | None = None) -> None:
        m = meter or _default_meter()
        self.auth_attempts = m.create_counter(
            "replicator_mongo_auth_attempts_total", description="Requests to the token source, retries included."
        )
        self.auth_success = m.create_counter(
            "replicator_mongo_auth_success_total", description="Token source requests that returned a token."
        )
        self.auth_failures = m.create_counter(
            "replicator_mongo_auth_failures_total", description="Token source requests that failed, by error_type."
        )
        self.auth_duration = m.create_histogram(
            "replicator_mongo_auth_duration_seconds", unit="s", description="Duration of one token source request."
        )
        self.auth_retries = m.create_counter(
            "replicator_mongo_auth_retry_attempts_total", description="Token source requests that were retries."
        )
        self.token_refresh = m.create_counter(
            "replicator_mongo_token_refresh_total",
            description="Token acquisitions, by reason (initial, expiring, rejected by the server).",
        )
        self.token_refresh_failures = m.create_counter(
            "replicator_mongo_token_refresh_failures_total", description="Token acquisitions that failed for good."
        )
        self.cache_hits = m.create_counter(
            "replicator_mongo_token_cache_hits_total", description="Token requests served from the provider cache."
        )
        self.cache_misses = m.create_counter(
            "replicator_mongo_token_cache_misses_total", description="Token requests that needed a new token."
        )
        self.active_connections = m.create_up_down_counter(
            "replicator_mongo_active_connections", description="Open MongoDB connections, by auth_method."
        )


class ReplicationMetrics:
    """Per-stream replication instruments; every data point carries the ``stream`` attribute."""

    def __init__(self, meter: Meter | None = None) -> None:
        m = meter or _default_meter()
        self.events_read = m.create_counter(
            "replicator_events_read_total", description="Change events read, by stream and operation."
        )
        self.events_applied = m.create_counter(
            "replicator_events_applied_total", description="Writes acknowledged by the estuary, by operation."
        )
        self.events_skipped = m.create_counter(
            "replicator_events_skipped_total", description="Events that needed no write (collapsed, no post-image)."
        )
        self.events_dead_lettered = m.create_counter(
            "replicator_events_dead_lettered_total", description="Events parked in the dead-letter collection."
        )
        self.batch_duration = m.create_histogram(
            "replicator_batch_duration_seconds", unit="s", description="Apply plus checkpoint time of one batch."
        )
        self.lag = m.create_histogram(
            "replicator_replication_lag_seconds", unit="s", description="Now minus the last applied event's time."
        )
        self.checkpoint_saves = m.create_counter(
            "replicator_checkpoint_saves_total", description="Checkpoint writes, by kind (batch, idle, lifecycle)."
        )
        self.passes = m.create_counter("replicator_passes_total", description="Passes, by outcome.")
        self.documents_copied = m.create_counter(
            "replicator_documents_copied_total", description="Documents copied by initial sync / resnapshot."
        )
        self.token_age = m.create_histogram(
            "replicator_token_age_seconds", unit="s", description="Age of each stream's saved resume token (per tick)."
        )
        self.gaps = m.create_counter(
            "replicator_gaps_total", description="Recorded gaps (history lost with on_history_lost: start_now)."
        )
