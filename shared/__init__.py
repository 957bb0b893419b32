"""The replicator's logic, usable from Azure Functions (``function_app.py``) and the command line.

Data flows one way: configuration -> clients (auth) -> read -> apply -> checkpoint.
"""

from __future__ import annotations

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
from shared.replicate import PassResult, Replicator, replay, reset_stream
from shared.services import Services, build_services

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
