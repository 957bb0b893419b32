"""Structured logs: correlation ids on auth events, no secret in any line, JSON lines on request."""

from __future__ import annotations

import io
import json
import logging

from shared.auth.tokens import RetryPolicy, TokenProvider
from shared.errors import TokenServiceError
from shared.telemetry import JsonFormatter, configure_telemetry, correlation, get_logger
from tests.conftest import FakeTokenSource


def capture(logger_name: str = "shared") -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler, stream


def test_auth_events_should_carry_the_correlation_id_and_no_token(clock, metrics):
    source = FakeTokenSource(clock, outcomes=[TokenServiceError("503"), 3600.0])
    provider = TokenProvider(
        source,
        scope="https://ossrdbms-aad.database.windows.net/.default",
        identity="uai",
        refresh_before_expiry=300,
        retry=RetryPolicy(),
        clock=clock,
        metrics=metrics.auth,
    )
    handler, stream = capture()
    try:
        with correlation("invocation-42"):
            token = provider.get_token()
    finally:
        logging.getLogger("shared").removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    events = {line.get("event") for line in lines}
    assert {"token_retry", "token_acquired"} <= events
    assert all(line["correlation_id"] == "invocation-42" for line in lines if line.get("event"))
    assert token.token not in stream.getvalue()


def test_logger_should_scrub_a_connection_string_password_when_a_message_quotes_one():
    handler, stream = capture()
    try:
        get_logger("shared.test").warning("could not reach %s", "mongodb://admin:Sup3rS3cret@db/")
    finally:
        logging.getLogger("shared").removeHandler(handler)
    assert "Sup3rS3cret" not in stream.getvalue()
    assert "admin:***@db" in stream.getvalue()


def test_correlation_should_generate_an_id_when_none_is_given_and_restore_the_previous_one():
    with correlation("outer"):
        with correlation() as inner:
            assert inner != "outer"
            assert len(inner) == 32
        handler, stream = capture()
        try:
            get_logger("shared.test").info("hello")
        finally:
            logging.getLogger("shared").removeHandler(handler)
    assert json.loads(stream.getvalue())["correlation_id"] == "outer"


def test_telemetry_should_stay_unconfigured_without_an_application_insights_connection_string():
    assert configure_telemetry({}) is False
