"""What a MongoDB error means for the replicator: pure functions over error codes, each code named.

Three questions: can the change stream resume from its token (``is_history_lost``), is a failure worth retrying
unchanged (``is_transient``, ``is_transient_code`` for one write of a bulk write; any other write error is a
refusal of the document itself, which bounded retries and the dead-letter collection handle), and what should a
person read about it (``explain``: one sentence and a tip, the same for every command and for ``test-auth``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from shared import mongo_uri
from shared.errors import ReplicatorError
from shared.redaction import redact_text

if TYPE_CHECKING:
    from shared.config import MongoConfig

# Authentication and authorisation (src/mongo/base/error_codes.yml).
UNAUTHORIZED = 13
AUTHENTICATION_FAILED = 18
# A unique index refused a write: the snapshot copy replaces documents the estuary already has.
DUPLICATE_KEY = 11000
# A server that cannot run a multi-document transaction: a standalone ("Transaction numbers are only allowed on a
# replica set member or mongos"), or an operation a transaction does not allow.
ILLEGAL_OPERATION = 20
OPERATION_NOT_SUPPORTED_IN_TRANSACTION = 263
_NO_TRANSACTION_CODES = frozenset({ILLEGAL_OPERATION, OPERATION_NOT_SUPPORTED_IN_TRANSACTION})

# The saved resume token no longer resumes: the change log moved past it or it is not a valid token.
CHANGE_STREAM_HISTORY_LOST = 286
CHANGE_STREAM_FATAL_ERROR = 280
INVALID_RESUME_TOKEN = 260
_HISTORY_LOST_CODES = frozenset({CHANGE_STREAM_HISTORY_LOST, CHANGE_STREAM_FATAL_ERROR, INVALID_RESUME_TOKEN})
# Azure DocumentDB words it rather than coding it (https://learn.microsoft.com/azure/documentdb/change-streams:
# the change log is capped, and an aged-out token cannot be resumed).
_HISTORY_LOST_TEXT = (
    "expired resume token",
    "resume token was not found",
    "resume point may no longer be in the oplog",
)

# Failures that pass on their own: elections, restarts, network, throttling, re-authentication.
_TRANSIENT_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        189,  # PrimarySteppedDown
        262,  # ExceededTimeLimit
        391,  # ReauthenticationRequired
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
        16500,  # Azure Cosmos DB "request rate is large" (throttling)
        50,  # MaxTimeMSExpired
    }
)
_TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError", "ResumableChangeStreamError")


def is_history_lost(error: BaseException) -> bool:
    """Whether the change stream cannot resume from the saved token (policy decides: fail or start now)."""
    if not isinstance(error, OperationFailure):
        return False
    if error.code in _HISTORY_LOST_CODES:
        return True
    text = str(error).lower()
    return any(phrase in text for phrase in _HISTORY_LOST_TEXT)


def is_transient(error: BaseException) -> bool:
    """Whether retrying soon, unchanged, is likely to succeed (network, election, throttling, re-auth).

    Everything else still fails only the current pass: the next pass tries again, and the error is recorded
    on the stream's checkpoint so that ``status`` shows it.
    """
    if isinstance(error, ConnectionFailure):
        return True
    if isinstance(error, OperationFailure) and not is_history_lost(error):
        return error.code in _TRANSIENT_CODES or any(error.has_error_label(lbl) for lbl in _TRANSIENT_LABELS)
    return False


def is_transient_code(code: int | None) -> bool:
    """For one write error inside a bulk result (which carries a code, not an exception)."""
    return code in _TRANSIENT_CODES


def transactions_unsupported(error: BaseException) -> bool:
    """Whether the server refused to run a transaction at all (rather than failing one)."""
    return isinstance(error, OperationFailure) and (
        error.code in _NO_TRANSACTION_CODES or "transaction numbers are only allowed" in str(error).lower()
    )


_REGISTER_DOCS = "https://learn.microsoft.com/azure/documentdb/how-to-connect-role-based-access-control"
_UNREACHABLE_HINT = "check the cluster's firewall rules / private endpoint, DNS, and that TLS settings match the server"
_MAX_DETAIL = 300  # characters of an unrecognised error's text
# pymongo's server selection error starts with "<host:port>: <reason>" per server ("[::1]:27017" for IPv6).
_FAILED_ADDRESS = re.compile(r"(?:^|,)\s*((?:\[[0-9A-Fa-f:.]+\]|[\w.-]+):\d+): ")


def summary(error: BaseException) -> str:
    """``Type code: message``, for messages that are recorded and shown: without pymongo's "full error" dump of the
    server's reply (raw bytes, documents) and redacted, so it never carries a secret or a document's contents."""
    text = str(error).split(", full error:", 1)[0]
    code = f" {error.code}" if isinstance(error, OperationFailure) and error.code is not None else ""
    return f"{type(error).__name__}{code}: {redact_text(text)}"[:_MAX_DETAIL]


def explain(
    error: BaseException, endpoint: MongoConfig | None = None, *, principal: str | None = None
) -> tuple[str, str | None]:
    """One sentence about what failed and what to check next, for the errors users actually meet.

    ``endpoint`` (when the caller knows which connection failed) and ``principal`` (the token's object id) make the
    tip precise. Never contains a secret: unrecognised errors are redacted and cut short.
    """
    if isinstance(error, ReplicatorError):
        return error.message, error.hint
    if isinstance(error, OperationFailure) and error.code == AUTHENTICATION_FAILED:
        return _authentication_failed(endpoint, principal)
    if isinstance(error, OperationFailure) and error.code == UNAUTHORIZED:
        database = f"database '{endpoint.database}'" if endpoint else "the database"
        return (
            "authenticated, but not allowed to run the command (Unauthorized)",
            f"grant the user a role on {database} (readWrite for estuary and checkpoints)",
        )
    if isinstance(error, ServerSelectionTimeoutError):
        return f"could not reach {_unreachable(error, endpoint)}", _UNREACHABLE_HINT
    if isinstance(error, ConfigurationError):
        return f"connection string problem: {redact_text(str(error))}", None
    return summary(error), None


def _authentication_failed(endpoint: MongoConfig | None, principal: str | None) -> tuple[str, str | None]:
    if endpoint is None:
        return (
            "the server refused the credentials (AuthenticationFailed)",
            "python -m shared test-auth says which endpoint, and what to register or fix",
        )
    if endpoint.auth_method == "entra":
        who = f"principal (object id) {principal}" if principal else "the identity's principal"
        return (
            "the server refused the Entra token (AuthenticationFailed)",
            f"register {who} on the cluster as a Microsoft Entra ID user and make sure the cluster allows "
            f"MicrosoftEntraID in authConfig.allowedModes; also check the scope ({endpoint.scope}); {_REGISTER_DOCS}",
        )
    return "the server refused the user name or password (AuthenticationFailed)", "check connection_uri's credentials"


def _unreachable(error: PyMongoError, endpoint: MongoConfig | None) -> str:
    """The hosts that could not be reached: the endpoint's, or those pymongo names before its topology dump."""
    if endpoint is not None:
        return ", ".join(mongo_uri.hosts(endpoint.connection_uri))
    summary = str(error).split(", Timeout:", 1)[0]  # "<host:port>: <reason>,<host:port>: <reason>, Timeout: ..."
    hosts = dict.fromkeys(_FAILED_ADDRESS.findall(summary))
    return ", ".join(hosts) if hosts else "the MongoDB server"
