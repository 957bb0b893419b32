"""What a MongoDB error means for the replicator: pure functions over error codes, each code named.

Three questions, asked in three places: can the change stream resume from its token (``is_history_lost``), is
a failure worth retrying unchanged (``is_transient``), and is a write refused because of the document itself
(``is_document_error``), which bounded retries and the dead-letter collection handle.
"""

from __future__ import annotations

from pymongo.errors import ConnectionFailure, OperationFailure

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


def is_document_error(code: int | None) -> bool:
    """A per-document write refusal (duplicate key, validation, too large, bad field name, ...): not transient."""
    return not is_transient_code(code)
