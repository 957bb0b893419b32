"""The Functions bindings, called the way the host calls them (the host itself cannot run here).

The queue between the timer and the worker is a real Azure Storage queue (Azurite). The tests play the host's
part with ``azure-storage-queue``: they write the timer's output with base64 encoding and read it back with
base64 decoding, which is what the host does with the default ``messageEncoding``, delete a message when the
handler returns and leave it for a retry when it raises.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import socket
import threading
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.meta import get_binding_registry
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy
from pymongo import MongoClient

import function_app
from localdev.standins.azurite import Azurite
from localdev.standins.stack import LocalStack
from shared.auth.mongo_client import default_factory
from shared.config_loader import get_config
from tests.conftest import stack_config, write_config

SCHEDULE = "0 */1 * * * *"


@dataclass
class Invocation:
    """The part of ``func.Context`` the handlers use."""

    invocation_id: str = "3f2a-invocation"


@pytest.fixture(autouse=True)
def fresh_process_state() -> Iterator[None]:
    get_config.cache_clear()
    function_app._services.cache_clear()
    yield
    function_app._services.cache_clear()
    get_config.cache_clear()
    default_factory().close()


def call_test_auth() -> func.HttpResponse:
    handler = function_app.test_auth.build().get_user_function()
    request = func.HttpRequest(method="GET", url="/api/test-auth", body=b"")
    response: func.HttpResponse = handler(request, Invocation())
    return response


# ---------------------------------------------------------------------------------------------- the app


@functools.cache
def functions_of(app: func.FunctionApp) -> list[Any]:
    """The host's view of the app; azure-functions allows one ``get_functions()`` per app object (then raises)."""
    return app.get_functions()


def bindings(function: Any) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in json.loads(function.get_function_json())["bindings"]}


def test_the_app_should_expose_exactly_the_timer_the_queue_worker_and_test_auth():
    functions = {f.get_function_name(): bindings(f) for f in functions_of(function_app.app)}
    assert functions == {
        "schedule_passes": {
            "timer": {"direction": "IN", "type": "timerTrigger", "name": "timer", "schedule": "%REPLICATOR_SCHEDULE%"},
            "passes": {
                "direction": "OUT",
                "type": "queue",
                "name": "passes",
                "queueName": "%REPLICATOR_QUEUE%",
                "connection": "AzureWebJobsStorage",
            },
        },
        "replicate_stream": {
            "message": {
                "direction": "IN",
                "type": "queueTrigger",
                "name": "message",
                "queueName": "%REPLICATOR_QUEUE%",
                "connection": "AzureWebJobsStorage",
            }
        },
        "test_auth": {
            "req": {
                "direction": "IN",
                "type": "httpTrigger",
                "name": "req",
                "methods": ["GET"],
                "authLevel": "FUNCTION",
                "route": "test-auth",
            },
            "$return": {"direction": "OUT", "type": "http", "name": "$return"},
        },
    }


def test_every_handler_annotation_should_be_one_the_python_worker_accepts():
    """The worker resolves annotations with typing.get_type_hints and asks each binding's converter about them.

    This is where ``func.Out[list[str]]`` fails (the worker refuses to load the function), and where an
    annotation imported only under TYPE_CHECKING would fail to resolve.
    """
    registry = get_binding_registry()
    for function in functions_of(function_app.app):
        hints = typing.get_type_hints(function.get_user_function())
        declared = bindings(function)
        assert set(hints) - {"context", "return"} == set(declared) - {"$return"}, function.get_function_name()
        for name, binding in declared.items():
            if name == "$return":
                continue
            converter = registry.get(binding["type"])
            if binding["direction"] == "OUT":
                assert typing.get_origin(hints[name]) is func.Out
                (payload,) = typing.get_args(hints[name])
                assert converter.check_output_type_annotation(payload), f"{function.get_function_name()}.{name}"
            else:
                assert converter.check_input_type_annotation(hints[name]), f"{function.get_function_name()}.{name}"


def test_the_app_should_expose_test_auth_behind_a_function_key():
    (function,) = [f for f in functions_of(function_app.app) if f.get_function_name() == "test_auth"]
    trigger = json.loads(function.get_function_json())["bindings"][0]
    assert (trigger["type"], trigger["authLevel"], trigger["route"]) == ("httpTrigger", "FUNCTION", "test-auth")


def test_importing_the_app_should_not_read_configuration(monkeypatch):
    monkeypatch.setenv("REPLICATOR_CONFIG", "/nonexistent/config.yaml")
    import importlib

    importlib.reload(function_app)  # a broken setting must not make the functions disappear at import
    assert sorted(f.get_function_name() for f in functions_of(function_app.app)) == [
        "replicate_stream",
        "schedule_passes",
        "test_auth",
    ]


# ---------------------------------------------------------------------------------------------- test-auth


def test_test_auth_function_should_return_200_and_the_report_when_every_endpoint_works(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATOR_CONFIG", str(write_config(tmp_path, stack_config(stack))))
    response = call_test_auth()
    body = json.loads(response.get_body())
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert body["ok"] is True
    assert body["endpoints"][0]["token"]["principal_id"] == "0b1c2d3e-0000-4000-8000-0000000000b2"
    assert not any(token in response.get_body().decode() for token in stack.stub.issued_tokens)


def test_test_auth_function_should_return_503_with_the_problems_when_the_config_is_invalid(tmp_path, monkeypatch):
    path = write_config(tmp_path, {"checkpoints": {"connection_uri": "mongodb://h/"}, "streams": []})
    monkeypatch.setenv("REPLICATOR_CONFIG", str(path))
    response = call_test_auth()
    body = json.loads(response.get_body())
    assert response.status_code == 503
    assert body["ok"] is False
    assert "checkpoints.database: is required for the checkpoint store" in body["problems"]


# ---------------------------------------------------------------------------------------------- timer, queue, worker


class Collected(func.Out[list[str]]):
    """The host's side of the timer's queue output binding."""

    def __init__(self) -> None:
        self.value: list[str] | None = None

    def set(self, val: list[str]) -> None:
        self.value = val

    def get(self) -> list[str]:
        return self.value or []


class HostQueue:
    """The Functions host's part around ``%REPLICATOR_QUEUE%``, on a real Azurite queue."""

    def __init__(self, connection_string: str, name: str) -> None:
        self.name = name
        # The default messageEncoding (base64): the output binding encodes, the trigger decodes.
        self._writer = QueueClient.from_connection_string(
            connection_string, name, message_encode_policy=TextBase64EncodePolicy()
        )
        self._reader = QueueClient.from_connection_string(
            connection_string, name, message_decode_policy=TextBase64DecodePolicy()
        )
        self.raw = QueueClient.from_connection_string(connection_string, name)  # the bytes on the wire
        self._writer.create_queue()

    def tick(self, invocation_id: str) -> list[str]:
        """Run the timer function once and write its output to the queue; return the messages."""
        passes = Collected()
        schedule_passes(TimerRequest(past_due=False), passes, Invocation(invocation_id))
        for text in passes.get():
            self._writer.send_message(text)
        return passes.get()

    def receive(self, *, visibility_timeout: int = 60) -> list[tuple[QueueMessage, Any]]:
        """Dequeue what is visible, as the trigger hands it to the worker (with the dequeue count)."""
        out = []
        for received in self._reader.receive_messages(max_messages=32, visibility_timeout=visibility_timeout):
            message = QueueMessage(
                id=received.id,
                body=received.content,
                dequeue_count=received.dequeue_count,
                pop_receipt=received.pop_receipt,
            )
            out.append((message, received))
        return out

    def deliver(self, message: QueueMessage, received: Any) -> None:
        """Call the worker; delete the message when it returns, leave it for a retry when it raises."""
        replicate_stream(message, Invocation(f"worker-{message.id}"))
        self._reader.delete_message(received)


schedule_passes: Callable[..., None] = function_app.schedule_passes.build().get_user_function()
replicate_stream: Callable[..., None] = function_app.replicate_stream.build().get_user_function()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with Azurite(tmp_path_factory.mktemp("azurite")) as started:
        yield started


@pytest.fixture
def host_queue(azurite: Azurite, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> HostQueue:
    name = "passes-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]  # noqa: S324 (a name)
    monkeypatch.setenv("REPLICATOR_SCHEDULE", SCHEDULE)
    monkeypatch.setenv("REPLICATOR_QUEUE", name)
    return HostQueue(azurite.connection_string, name)


@pytest.fixture
def direct(stack: LocalStack) -> Iterator[MongoClient[dict[str, Any]]]:
    """The stand-in server without the proxy, to write source data and read the estuary."""
    client: MongoClient[dict[str, Any]] = MongoClient(stack.nx.uri)
    yield client
    client.close()


def use_config(monkeypatch: pytest.MonkeyPatch, directory: Path, data: dict[str, Any]) -> None:
    monkeypatch.setenv("REPLICATOR_CONFIG", str(write_config(directory, data)))


def fast_stream(**overrides: Any) -> dict[str, Any]:
    return {"poll_interval": "0.1s", "idle_timeout": "1.5s", "time_budget": "30s", "lease_duration": "10s", **overrides}


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def lease_held() -> bool:
    checkpoint = function_app._services().checkpoints.read("orders")
    return checkpoint is not None and (checkpoint.lease_expires_at or 0) > time.time()


def test_timer_queue_and_worker_should_replicate_end_to_end_and_a_duplicate_should_end_quietly(
    stack: LocalStack, direct, host_queue: HostQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
):
    config = stack_config(stack, **fast_stream())
    archive = {"source": stack.plain_endpoint("shop", "archive"), "estuary": stack.plain_endpoint("replica", "archive")}
    config["streams"].append({"name": "archive", "enabled": False, **archive})
    use_config(monkeypatch, tmp_path, config)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="shared")  # the command line's configure_logging may have raised it
    source, estuary = direct["shop"]["orders"], direct["replica"]["orders"]

    # Tick 1: one message for the one enabled stream, base64 on the wire; its pass saves the starting position.
    (text,) = host_queue.tick("tick-1")
    assert json.loads(text)["stream"] == "orders"
    (on_the_wire,) = host_queue.raw.peek_messages()
    assert base64.b64decode(on_the_wire.content).decode() == text
    assert on_the_wire.content != text
    for message, received in host_queue.receive():
        assert message.dequeue_count == 1
        host_queue.deliver(message, received)
    checkpoint = function_app._services().checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.resume_token is not None

    # Changes after the saved position; tick 2's message arrives twice (timer overlap, a duplicate delivery).
    source.insert_many([{"_id": f"o{i}", "total": i} for i in range(5)])
    source.update_one({"_id": "o1"}, {"$set": {"total": 100}})
    host_queue.tick("tick-2")
    host_queue.tick("tick-2")
    (first, first_received), (second, second_received) = host_queue.receive()
    errors: list[BaseException] = []

    def run_first() -> None:
        try:
            host_queue.deliver(first, first_received)
        except BaseException as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=run_first)
    worker.start()
    wait_for(lease_held)
    host_queue.deliver(second, second_received)  # returns: no exception for the host to retry
    worker.join(30)

    assert errors == []
    assert sorted(estuary.find(), key=str) == sorted(source.find(), key=str)
    assert estuary.find_one({"_id": "o1"}) == {"_id": "o1", "total": 100}
    assert list(host_queue.raw.peek_messages()) == []  # every message was completed
    held = [r for r in caplog.records if getattr(r, "outcome", None) == "lease_held"]
    assert len(held) == 1
    assert held[0].correlation_id == "tick-2"  # the timer invocation's id follows the message
    dequeued = [r for r in caplog.records if r.name == "shared.functions" and "dequeue count 1" in r.getMessage()]
    assert len(dequeued) == 3
    enqueued = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "passes_enqueued"]
    assert enqueued == ["enqueued 1 pass request(s)"] * 3


def dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_a_failing_pass_should_raise_so_the_host_retries_the_message_and_record_its_status(
    stack: LocalStack, direct, host_queue: HostQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    unreachable = f"mongodb://127.0.0.1:{dead_port()}/?serverSelectionTimeoutMS=300&connectTimeoutMS=300"
    estuary = {"connection_uri": unreachable, "database": "replica", "collection": "orders"}
    use_config(monkeypatch, tmp_path, stack_config(stack, estuary=estuary, **fast_stream(idle_timeout="0.5s")))
    host_queue.tick("tick-1")
    for message, received in host_queue.receive():
        host_queue.deliver(message, received)  # no events yet: the estuary is not needed
    direct["shop"]["orders"].insert_one({"_id": "o1"})

    host_queue.tick("tick-2")
    ((message, received),) = host_queue.receive(visibility_timeout=1)
    with pytest.raises(Exception, match="estuary"):
        host_queue.deliver(message, received)

    checkpoint = function_app._services().checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.status == "retrying"
    assert "estuary" in (checkpoint.last_error or {}).get("message", "")
    time.sleep(1.2)  # the visibility timeout: the host would now deliver it again
    ((again, _),) = host_queue.receive()
    assert (again.id, again.dequeue_count) == (message.id, 2)


def test_a_malformed_message_should_be_logged_and_dropped_without_raising(caplog):
    caplog.set_level(logging.INFO)
    replicate_stream(QueueMessage(id="m-1", body=b"not json", dequeue_count=1), Invocation())
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "dropped queue message m-1 (dequeue count 1): queue message is not JSON" in record.getMessage()


def test_a_message_for_an_unknown_stream_should_be_logged_and_dropped_without_raising(
    stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
):
    use_config(monkeypatch, tmp_path, stack_config(stack))
    body = '{"stream":"refunds","correlation_id":"tick-9","enqueued_at":1767225600}'
    replicate_stream(QueueMessage(id="m-2", body=body, dequeue_count=1), Invocation())
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "no stream named 'refunds' (configured: orders)" in record.getMessage()
    assert record.correlation_id == "tick-9"


def test_the_timer_should_log_and_enqueue_nothing_when_the_configuration_is_invalid(tmp_path, monkeypatch, caplog):
    use_config(monkeypatch, tmp_path, {"checkpoints": {"connection_uri": "mongodb://h/"}, "streams": []})
    passes = Collected()
    schedule_passes(TimerRequest(past_due=True), passes, Invocation("tick-3"))
    assert passes.value is None
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith("no passes scheduled: invalid configuration")
    assert record.correlation_id == "tick-3"
