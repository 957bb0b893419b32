"""The replicator's logic, usable from Azure Functions (``function_app.py``) and the command line.

Data flows one way: configuration -> clients (auth) -> read -> apply -> checkpoint.

The public names are imported on first use (PEP 562), not with the package: the Functions worker imports
``function_app`` to index the app on every cold start, and azure-identity, pymongo, OpenTelemetry and the
configuration models would triple that time before any function has run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.auth.mongo_client import ClientFactory, default_factory, get_client
    from shared.config import MongoConfig, ReplicatorConfig, StreamConfig
    from shared.config_loader import get_config, load_config
    from shared.diagnostics import AuthReport, run_test_auth
    from shared.errors import (
        AuthenticationRefusedError,
        AuthError,
        ConfigError,
        CredentialUnavailableError,
        ReplicatorError,
        TokenServiceError,
        TransientError,
    )
    from shared.operations import schedule, token_health
    from shared.replicate import PassResult, Replicator, reset_stream
    from shared.replicate.replay import replay  # not from shared.replicate: mypy takes that for the submodule
    from shared.services import Services, build_services

_EXPORTS = {
    "shared.auth.mongo_client": ("ClientFactory", "default_factory", "get_client"),
    "shared.config": ("MongoConfig", "ReplicatorConfig", "StreamConfig"),
    "shared.config_loader": ("get_config", "load_config"),
    "shared.diagnostics": ("AuthReport", "run_test_auth"),
    "shared.errors": (
        "AuthError",
        "AuthenticationRefusedError",
        "ConfigError",
        "CredentialUnavailableError",
        "ReplicatorError",
        "TokenServiceError",
        "TransientError",
    ),
    "shared.operations": ("schedule", "token_health"),
    "shared.replicate": ("PassResult", "Replicator", "reset_stream"),
    "shared.replicate.replay": ("replay",),
    "shared.services": ("Services", "build_services"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AuthError",
    "AuthReport",
    "AuthenticationRefusedError",
    "ClientFactory",
    "ConfigError",
    "CredentialUnavailableError",
    "MongoConfig",
    "PassResult",
    "Replicator",
    "ReplicatorConfig",
    "ReplicatorError",
    "Services",
    "StreamConfig",
    "TokenServiceError",
    "TransientError",
    "build_services",
    "default_factory",
    "get_client",
    "get_config",
    "load_config",
    "replay",
    "reset_stream",
    "run_test_auth",
    "schedule",
    "token_health",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first asked for."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'shared' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return [*globals(), *__all__]
