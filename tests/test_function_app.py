"""The Functions bindings, called the way the host calls them (the host itself cannot run here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import azure.functions as func
import pytest

import function_app
from shared.auth.mongo_client import default_factory
from shared.config_loader import get_config
from tests.conftest import stack_config, write_config


@dataclass
class Invocation:
    """The part of ``func.Context`` the handlers use."""

    invocation_id: str = "3f2a-invocation"


@pytest.fixture(autouse=True)
def fresh_process_state() -> Iterator[None]:
    get_config.cache_clear()
    yield
    get_config.cache_clear()
    default_factory().close()


def call_test_auth() -> func.HttpResponse:
    handler = function_app.test_auth.build().get_user_function()
    request = func.HttpRequest(method="GET", url="/api/test-auth", body=b"")
    response: func.HttpResponse = handler(request, Invocation())
    return response


def test_the_app_should_expose_test_auth_behind_a_function_key():
    (function,) = function_app.app.get_functions()
    trigger = json.loads(function.get_function_json())["bindings"][0]
    assert (trigger["type"], trigger["authLevel"], trigger["route"]) == ("httpTrigger", "FUNCTION", "test-auth")


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


def test_importing_the_app_should_not_read_configuration(monkeypatch):
    monkeypatch.setenv("REPLICATOR_CONFIG", "/nonexistent/config.yaml")
    import importlib

    importlib.reload(function_app)  # a broken setting must not make the functions disappear at import
    assert [f.get_function_name() for f in function_app.app.get_functions()] == ["test_auth"]
