"""Server errors as MongoDB reports them: a failed command (``ok: 0``) or a failed write inside an ``ok: 1`` reply.

Codes and names come from src/mongo/base/error_codes.yml of the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BAD_VALUE = 2
FAILED_TO_PARSE = 9
TYPE_MISMATCH = 14
NAMESPACE_NOT_FOUND = 26
INDEX_NOT_FOUND = 27
PATH_NOT_VIABLE = 28
CURSOR_NOT_FOUND = 43
NAMESPACE_EXISTS = 48
COMMAND_NOT_FOUND = 59
IMMUTABLE_FIELD = 66
DOCUMENT_VALIDATION_FAILURE = 121
NO_SUCH_TRANSACTION = 251
CHANGE_STREAM_HISTORY_LOST = 286
UNSUPPORTED_OP_QUERY_COMMAND = 352
BSON_OBJECT_TOO_LARGE = 10334
DUPLICATE_KEY = 11000
UNRECOGNIZED_PIPELINE_STAGE = 40324
INTERNAL_ERROR = 1

_CODE_NAMES = {
    BAD_VALUE: "BadValue",
    FAILED_TO_PARSE: "FailedToParse",
    TYPE_MISMATCH: "TypeMismatch",
    NAMESPACE_NOT_FOUND: "NamespaceNotFound",
    INDEX_NOT_FOUND: "IndexNotFound",
    PATH_NOT_VIABLE: "PathNotViable",
    CURSOR_NOT_FOUND: "CursorNotFound",
    NAMESPACE_EXISTS: "NamespaceExists",
    COMMAND_NOT_FOUND: "CommandNotFound",
    IMMUTABLE_FIELD: "ImmutableField",
    DOCUMENT_VALIDATION_FAILURE: "DocumentValidationFailure",
    NO_SUCH_TRANSACTION: "NoSuchTransaction",
    CHANGE_STREAM_HISTORY_LOST: "ChangeStreamHistoryLost",
    UNSUPPORTED_OP_QUERY_COMMAND: "UnsupportedOpQueryCommand",
    BSON_OBJECT_TOO_LARGE: "BSONObjectTooLarge",
    DUPLICATE_KEY: "DuplicateKey",
    UNRECOGNIZED_PIPELINE_STAGE: "Location40324",
    INTERNAL_ERROR: "InternalError",
}


def code_name(code: int) -> str:
    """The server's name for ``code`` (``Location<code>`` for the unnamed ones, as the server does)."""
    return _CODE_NAMES.get(code, f"Location{code}")


class CommandError(Exception):
    """The whole command fails: the reply is ``{ok: 0, errmsg, code, codeName, errorLabels?}``."""

    def __init__(self, code: int, message: str, *, labels: Sequence[str] = (), name: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.labels = tuple(labels)
        self.name = name or code_name(code)

    def reply(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"ok": 0.0, "errmsg": self.message, "code": self.code, "codeName": self.name}
        if self.labels:
            answer["errorLabels"] = list(self.labels)
        return answer


class WriteFailedError(Exception):
    """One write of an insert/update/delete fails: reported in ``writeErrors``; the command itself succeeds."""

    def __init__(self, code: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def write_error(self, index: int) -> dict[str, Any]:
        return {"index": index, "code": self.code, "errmsg": self.message, **self.details}

    def as_command_error(self) -> CommandError:
        """How findAndModify reports the same failure: as a failed command."""
        return CommandError(self.code, self.message)
