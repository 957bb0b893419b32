"""The one error hierarchy: every failure a user can see carries a message, a hint and a kind.

The kind decides the outcome in exactly one place per entry point (``shared.cli.main`` for exit codes,
``function_app.py`` for retry-or-finish): *transient* errors are worth retrying (network, throttling,
token service hiccups), *terminal* ones are not until a person changes something (configuration, an
identity that is not registered). Unknown exceptions are treated as transient by the callers, like dlt does:
retrying a surprise is cheaper than dropping work.

No message may contain a token, a password or the secret part of a connection string; build messages from
redacted values only (see ``shared.redaction``).
"""

from __future__ import annotations

from collections.abc import Sequence


class ReplicatorError(Exception):
    """Root of every error the replicator raises on purpose.

    ``message`` says what happened, ``hint`` what to check next. ``transient`` tells callers whether trying
    again later, unchanged, can succeed.
    """

    transient: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nTip: {self.hint}"


class TransientError(ReplicatorError):
    """Retrying later, unchanged, may succeed (network, throttling, a token service that is restarting)."""

    transient = True


class ConfigError(ReplicatorError):
    """The configuration cannot be used; ``problems`` lists every ``path: message`` found, not just the first."""

    def __init__(self, problems: Sequence[str], *, source: str | None = None, hint: str | None = None) -> None:
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid configuration{where}:\n{lines}", hint=hint)
        self.problems = list(problems)


class AuthError(ReplicatorError):
    """Base of Entra ID authentication failures (the message names the identity and scope involved)."""


class CredentialUnavailableError(AuthError):
    """We could not even ask for a token: the environment lacks a managed identity or a developer login."""


class AuthenticationRefusedError(AuthError):
    """We asked and were refused, by Entra (unknown identity, bad scope) or by the server (token rejected)."""


class TokenServiceError(AuthError, TransientError):
    """The token service failed in a way that may pass (timeout, 5xx, throttling).

    ``retry_after`` is the earliest useful retry in seconds when the service (or a cache in front of it)
    says so; ``None`` leaves the delay to the backoff policy.
    """

    def __init__(self, message: str, *, hint: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after
