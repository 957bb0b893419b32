"""The queue message contract between the timer fan-out and the worker."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.config import ReplicatorConfig
from shared.errors import ReplicatorError
from shared.work_queue import BadMessageError, PassRequest, parse_pass_request, pass_requests


def config(*streams: tuple[str, bool]) -> ReplicatorConfig:
    return ReplicatorConfig.model_validate(
        {
            "checkpoints": {"connection_uri": "mongodb://h/", "database": "replicator"},
            "streams": [
                {
                    "name": name,
                    "enabled": enabled,
                    "source": {"connection_uri": "mongodb://h/", "database": "shop", "collection": name},
                    "estuary": {"connection_uri": "mongodb://h/", "database": "replica", "collection": name},
                }
                for name, enabled in streams
            ],
        }
    )


def body(**fields: Any) -> str:
    return json.dumps({"stream": "orders", "correlation_id": "tick-1", "enqueued_at": 1_767_225_600.5, **fields})


def test_a_message_should_round_trip_through_its_text():
    request = PassRequest("orders", "3f2a-invocation", 1_767_225_600.25)
    assert parse_pass_request(request.to_message()) == request
    assert parse_pass_request(request.to_message().encode()) == request  # the host may hand over bytes


def test_messages_should_be_compact_versioned_json():
    (message,) = pass_requests(config(("orders", True)), correlation_id="tick-1", now=1_767_225_600.0)
    assert message == '{"v":1,"stream":"orders","correlation_id":"tick-1","enqueued_at":1767225600.0}'


def test_pass_requests_should_make_one_message_per_enabled_stream_only():
    cfg = config(("orders", True), ("archive", False), ("customers", True))
    messages = pass_requests(cfg, correlation_id="tick-1", now=1_767_225_600.0)
    requests = [parse_pass_request(m) for m in messages]
    assert [r.stream for r in requests] == ["orders", "customers"]
    assert {r.correlation_id for r in requests} == {"tick-1"}
    assert {r.enqueued_at for r in requests} == {1_767_225_600.0}


def test_pass_requests_should_be_empty_when_every_stream_is_disabled():
    assert pass_requests(config(("orders", False)), correlation_id="tick-1", now=0.0) == []


def test_a_message_without_a_version_should_be_read_as_version_one():
    assert parse_pass_request(body()).stream == "orders"  # what a person writes by hand
    assert parse_pass_request(body(v=1)).stream == "orders"


def test_unknown_fields_should_be_ignored_so_a_newer_writer_can_add_some():
    assert parse_pass_request(body(priority="high")) == PassRequest("orders", "tick-1", 1_767_225_600.5)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("", "is not JSON (Expecting value at line 1, column 1)"),
        ("orders", "is not JSON"),
        ('{"stream": "orders",', "is not JSON"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        ("[1, 2]", "must be a JSON object, not an array"),
        ('"orders"', "must be a JSON object, not a string"),
        ("{}", "'stream' is missing; 'correlation_id' is missing; 'enqueued_at' is missing"),
        (body(stream=7), "'stream' must be a non-empty string, not a number"),
        (body(stream="  "), "'stream' must be a non-empty string, not an empty string"),
        (body(correlation_id=None), "'correlation_id' must be a non-empty string, not null"),
        (body(enqueued_at="yesterday"), "'enqueued_at' must be a number of Unix seconds, not a string"),
        (body(enqueued_at=True), "'enqueued_at' must be a number of Unix seconds, not a boolean"),
        (body(enqueued_at=-5), "'enqueued_at' must be Unix seconds between 0 and 1e+11, not -5"),
        ('{"stream":"o","correlation_id":"c","enqueued_at":NaN}', "'enqueued_at' must be Unix seconds"),
        ('{"stream":"o","correlation_id":"c","enqueued_at":' + "9" * 5000 + "}", "is not JSON this app can read"),
        ("[" * 100_000, "is not JSON this app can read (RecursionError)"),
        (body(v=2), "has format version 2, but this app reads version 1"),
        (body(v=True), "has format version true"),
    ],
)
def test_a_bad_body_should_raise_a_terminal_error_saying_what_is_wrong(raw: str | bytes, says: str):
    with pytest.raises(BadMessageError) as caught:
        parse_pass_request(raw)
    error = caught.value
    assert isinstance(error, ReplicatorError)
    assert not error.transient  # retrying cannot repair a message
    assert error.message.startswith("queue message ")
    assert says in error.message
    assert error.hint is not None
    assert '"stream"' in error.hint


def test_a_bad_body_should_be_quoted_only_in_part_and_without_secrets():
    long_body = json.dumps({"stream": "orders", "note": "x" * 10_000})
    with pytest.raises(BadMessageError) as caught:
        parse_pass_request(long_body)
    assert len(caught.value.message) < 400
    assert f"({len(long_body)} characters)" in caught.value.message

    with pytest.raises(BadMessageError) as caught:
        parse_pass_request('{"stream": "mongodb://app:s3cret-pw@cluster/"}')
    assert "s3cret-pw" not in str(caught.value)
    assert "mongodb://app:***@cluster/" in caught.value.message
