"""Azure Functions bindings (Python v2 model). Bindings only: every handler calls one function of ``shared``.

Three functions:

* ``schedule_passes`` (timer, ``%REPLICATOR_SCHEDULE%``): checks every stream's token age, then one queue message
  per enabled stream;
* ``replicate_stream`` (queue ``%REPLICATOR_QUEUE%``): one pass of the stream named in the message;
* ``test_auth`` (HTTP GET): the same report as ``python -m shared test-auth --json``.

Outcome mapping lives here and nowhere else. HTTP: a configuration error or a failed check becomes 503 with the
reasons as JSON (never a secret), success is 200. Queue: a transient or unexpected error raises, so the host
retries the message (``maxDequeueCount`` in host.json) and then moves it to ``<queue>-poison``; a terminal
error (bad message, unknown stream, invalid configuration, a refused identity) cannot be fixed by a retry, so
it is logged and the invocation ends cleanly; the pass itself records its status on the stream's checkpoint.

Indexing (the worker imports this module on every cold start) loads only ``azure.functions`` and light modules of
``shared``; its other names (pymongo, azure-identity, OpenTelemetry, the configuration models) load on first use.
"""

from __future__ import annotations

import functools
import json
import time
import typing
from typing import TYPE_CHECKING, Any

import azure.functions as func

import shared
from shared.clock import SystemClock
from shared.errors import ConfigError, ReplicatorError
from shared.telemetry import configure_telemetry, correlation, get_logger
from shared.work_queue import BadMessageError, parse_pass_request

if TYPE_CHECKING:
    from shared.services import Services

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

# The storage account of the host itself (AzureWebJobsStorage, or its identity-based __queueServiceUri form).
_QUEUE_CONNECTION = "AzureWebJobsStorage"
# Pass outcomes that leave the stream stopped until a person acts (status shows why).
_NEEDS_ATTENTION = frozenset({"stopped", "failed"})

_log = get_logger("shared.functions")  # under "shared": the logger Application Insights exports


@functools.cache
def _telemetry_configured() -> bool:
    """Configure Application Insights once per worker process, on first use rather than at import."""
    return configure_telemetry()


@functools.cache
def _services() -> Services:
    """The process's services, built on first use (never at import: a bad setting must not hide functions)."""
    return shared.build_services(shared.get_config(), factory=shared.default_factory())


@app.timer_trigger(arg_name="timer", schedule="%REPLICATOR_SCHEDULE%")
@app.queue_output(arg_name="passes", queue_name="%REPLICATOR_QUEUE%", connection=_QUEUE_CONNECTION)
def schedule_passes(
    timer: func.TimerRequest,
    # typing.List, not list: the Python worker does not recognise list[str] as a list of messages and refuses to
    # load the function ("invalid non-type annotation"); Microsoft's samples use typing.List for this reason.
    passes: func.Out[typing.List[str]],  # noqa: UP006
    context: func.Context,
) -> None:
    """Fan out: one pass request per enabled stream (per group of collections of a scoped stream), correlated by
    this invocation's id."""
    _telemetry_configured()
    with correlation(context.invocation_id):
        try:
            services = _services()
            messages = shared.schedule(
                services.config,
                checkpoints=services.checkpoints,
                discovery=services.discovery,
                metrics=services.metrics,
                correlation_id=context.invocation_id,
                now=time.time(),
            )
        except ConfigError as exc:
            _log.error("no passes scheduled: %s", exc)
            return
        if messages:
            passes.set(messages)
        _log.info(
            "enqueued %d pass request(s)%s",
            len(messages),
            " (the timer was past due)" if timer.past_due else "",
            extra={"event": "passes_enqueued", "count": len(messages)},
        )


@app.queue_trigger(arg_name="message", queue_name="%REPLICATOR_QUEUE%", connection=_QUEUE_CONNECTION)
def replicate_stream(message: func.QueueMessage, context: func.Context) -> None:
    """Run one pass of the requested stream; raise only when a retry of the message can help."""
    _telemetry_configured()
    # The host passes azure.functions.queue.QueueMessage, which adds dequeue_count to the documented type.
    dequeue_count = getattr(message, "dequeue_count", None)
    try:
        request = parse_pass_request(message.get_body())
    except BadMessageError as exc:
        _log.error("dropped queue message %s (dequeue count %s): %s", message.id, dequeue_count, exc)
        return
    with correlation(request.correlation_id):
        _log.info(
            "pass request for stream %s: message %s, dequeue count %s, waited %.1fs (invocation %s)",
            request.stream,
            message.id,
            dequeue_count,
            time.time() - request.enqueued_at,
            context.invocation_id,
            extra={"stream": request.stream, "dequeue_count": dequeue_count},
        )
        try:
            results = _services().replicator.run_requested(request.stream, request.collections)
        except ReplicatorError as exc:
            if exc.transient:
                raise
            _log.error("stream %s: pass not run or ended for good: %s", request.stream, exc)
            return
        for result in results:
            if result.outcome in _NEEDS_ATTENTION:
                _log.error(
                    "stream %s is %s and needs attention: %s (python -m shared status shows the checkpoint)",
                    result.stream,
                    result.outcome,
                    result.detail or "no detail recorded",
                    extra={"stream": result.stream, "outcome": result.outcome},
                )


@app.route(route="test-auth", methods=["GET"])
def test_auth(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Get a token and ping every configured endpoint; the same report as ``python -m shared test-auth --json``."""
    _telemetry_configured()
    with correlation(context.invocation_id):
        try:
            report = shared.run_test_auth(shared.get_config(), shared.default_factory(), clock=SystemClock())
        except ConfigError as exc:
            return _json({"ok": False, "problems": exc.problems, "hint": exc.hint}, status=503)
    return _json(report.to_dict(), status=200 if report.ok else 503)


def _json(body: dict[str, Any], *, status: int) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, indent=2), status_code=status, mimetype="application/json")
