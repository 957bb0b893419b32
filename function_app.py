"""Azure Functions bindings (Python v2 model). Bindings only: every handler calls one function of ``shared``.

Outcome mapping lives here and nowhere else: a configuration error or a failed check becomes HTTP 503 with
the reasons as JSON (never a secret), success is 200.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import azure.functions as func

from shared import ConfigError, default_factory, get_config, run_test_auth
from shared.clock import SystemClock
from shared.telemetry import configure_telemetry, correlation

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@functools.cache
def _telemetry_configured() -> bool:
    """Configure Application Insights once per worker process, on first use rather than at import."""
    return configure_telemetry()


@app.route(route="test-auth", methods=["GET"])
def test_auth(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Get a token and ping every configured endpoint; the same report as ``python -m shared test-auth --json``."""
    _telemetry_configured()
    with correlation(context.invocation_id):
        try:
            report = run_test_auth(get_config(), default_factory(), clock=SystemClock())
        except ConfigError as exc:
            return _json({"ok": False, "problems": exc.problems, "hint": exc.hint}, status=503)
    return _json(report.to_dict(), status=200 if report.ok else 503)


def _json(body: dict[str, Any], *, status: int) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, indent=2), status_code=status, mimetype="application/json")
