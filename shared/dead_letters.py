"""The dead-letter collection: events the estuary refused for good, parked with the error and the attempts.

A parked event is ``{_id: {stream, token}, ref, stream, operation, document_key, document_key_text, event,
error: {code, message}, attempts, parked_at, format}`` in the ``dead_letters`` collection of the checkpoint store's
database. It is keyed by (stream, event token), so parking the same event again (a batch applied twice, a replay
refused again) updates the one record: ``error`` and ``parked_at`` are the latest, ``attempts`` adds up, ``event``
stays the change event first refused. ``ref`` is a short string derived from ``_id``; records are indexed, found and
deleted by it rather than by the compound ``_id``, because equality on a sub-document ``_id`` is not answered by every
MongoDB-compatible server, while a scalar is, and prints well.

The event and its document key are kept as their exact BSON bytes (``Binary``, format 2): whatever a source
document holds (any BSON type, ``$``-prefixed or dotted field names), the record stores, on any MongoDB-compatible
server, and gives it back unchanged; ``document_key_text`` is its Extended JSON for people. An event too large to
keep in a record (near 16 MB) is parked without its body (``event_omitted`` says why), so parking never stops a
stream. Records of format 1 (event and key as sub-documents) are still read.

This module is the store (park, count, list, remove, purge); replaying parked events is orchestration and lives
in ``shared.replicate.replay``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import bson
from bson import json_util
from bson.binary import Binary
from bson.errors import InvalidDocument
from bson.raw_bson import RawBSONDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from shared.mongo_errors import is_transient
from shared.raw_bson import RAW, raw_document
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from shared.clock import Clock

# Everything but the event: listing and replaying never load a document's contents.
_SUMMARY = {"ref": 1, "stream": 1, "operation": 1, "document_key": 1, "error": 1, "attempts": 1, "parked_at": 1}
# MongoDB quotes the duplicated values in E11000 messages: `... index: email_1 dup key: { email: "a@b.c" }`.
_DUP_KEY_VALUES = re.compile(r"dup key: \{.*\}", re.DOTALL)
FORMAT_VERSION = 2
_KEY_TEXT_CHARS = 200  # of document_key_text

_log = get_logger(__name__)


def parked_ref(stream: str, token: Mapping[str, Any]) -> str:
    """The record's short id: a hash of the stream and of the event token's BSON (16 hex digits)."""
    raw = token.raw if isinstance(token, RawBSONDocument) else bson.encode(token)
    return hashlib.sha256(stream.encode() + b"\0" + raw).hexdigest()[:16]


def without_values(message: str) -> str:
    """An error message without the document values servers quote in it (the duplicated key of an E11000)."""
    return _DUP_KEY_VALUES.sub("dup key: { ... }", message)


@dataclass(frozen=True)
class ParkedEvent:
    """A dead letter without its event (which holds the document, maybe personal data)."""

    ref: str
    stream: str
    token: Mapping[str, Any]  # the refused change event's _id, as stored
    operation: str
    document_key: Mapping[str, Any]
    error_code: int | None
    error_message: str
    attempts: int
    parked_at: float | None

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ParkedEvent:
        ident, error = doc["_id"], doc.get("error") or {}
        return cls(
            ref=doc.get("ref") or parked_ref(ident["stream"], ident["token"]),
            stream=str(ident["stream"]),
            token=ident["token"],
            operation=str(doc.get("operation")),
            document_key=_stored_document(doc.get("document_key")),
            error_code=error.get("code"),
            error_message=str(error.get("message", "")),
            attempts=int(doc.get("attempts") or 0),
            parked_at=doc.get("parked_at"),
        )


class Parking(Protocol):
    """Where a writer puts what the estuary refused for good (``DeadLetters``, or a wrapper that also watches)."""

    def park(self, stream: str, event: RawBSONDocument, *, code: int | None, message: str, attempts: int) -> None: ...


class DeadLetters:
    """Parks events the estuary refused for good, and lists, replays and purges them."""

    def __init__(self, collection: Collection[Any], *, clock: Clock) -> None:
        self._collection: Collection[Any] = collection.with_options(codec_options=RAW)
        self._clock = clock
        self._indexed = False

    def park(self, stream: str, event: RawBSONDocument, *, code: int | None, message: str, attempts: int) -> None:
        """Park ``event`` after ``attempts`` refused writes, or add them to its record if it is parked already."""
        self._ensure_index()
        token = event["_id"]
        ref = parked_ref(stream, token)
        record = _record(stream, event)
        update = {
            "$set": {"error": {"code": code, "message": message[:2000]}, "parked_at": self._clock.time()},
            "$inc": {"attempts": attempts},
            "$setOnInsert": record,
        }
        try:
            self._upsert(ref, update)
        except (InvalidDocument, OperationFailure) as exc:
            if isinstance(exc, OperationFailure) and is_transient(exc):
                raise
            # Too large to keep with its body (or refused for it): park what identifies it, without the body.
            record.pop("event", None)
            record["event_omitted"] = f"{len(event.raw)} bytes: {type(exc).__name__}: {str(exc)[:200]}"
            _log.warning("stream %s: dead letter %s parked without its event (%s)", stream, ref, type(exc).__name__)
            self._upsert(ref, update)

    def _upsert(self, ref: str, update: Mapping[str, Any]) -> None:
        try:
            self._collection.update_one({"ref": ref}, update, upsert=True)
        except DuplicateKeyError:
            # The _id exists without this ref: a record parked before refs existed, or one inserted by a worker
            # racing this one. Give it its ref (a no-op in the race) and update it.
            self._collection.update_one(
                {"_id": update["$setOnInsert"]["_id"], "ref": {"$exists": False}}, {"$set": {"ref": ref}}
            )
            self._collection.update_one({"ref": ref}, update, upsert=True)

    def count(self, stream: str | None = None) -> int:
        """How many events are parked, for one stream or in all."""
        return self._collection.count_documents(_of(stream))

    def streams(self) -> dict[str, int]:
        """How many events each stream has parked, by stream name (streams with none are absent)."""
        groups = self._collection.aggregate([{"$group": {"_id": "$stream", "parked": {"$sum": 1}}}])
        return {str(g["_id"]): int(g["parked"]) for g in sorted(groups, key=lambda g: str(g["_id"]))}

    def newest(self, stream: str, limit: int) -> list[ParkedEvent]:
        """The ``limit`` most recently parked events of ``stream``, newest first."""
        cursor = self._collection.find({"stream": stream}, _SUMMARY).sort([("parked_at", -1), ("_id", -1)])
        return [ParkedEvent.from_document(doc) for doc in cursor.limit(limit)]

    def iter_parked(self, stream: str, batch: int) -> Generator[list[ParkedEvent], None, None]:
        """Every parked event of ``stream`` in ``_id`` order, ``batch`` at a time, so memory stays bounded.

        One cursor in ``_id`` order: deleting or re-parking records already yielded is safe (an ``_id`` never
        changes, so no record is yielded twice). Close the generator to end early.
        """
        cursor = self._collection.find({"stream": stream}, _SUMMARY, batch_size=batch).sort("_id", 1)
        with cursor:
            chunk: list[ParkedEvent] = []
            for doc in cursor:
                chunk.append(ParkedEvent.from_document(doc))
                if len(chunk) == batch:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    def remove(self, refs: Iterable[str]) -> int:
        """Delete these records (by ``ref``); returns how many were deleted."""
        wanted = list(refs)
        if not wanted:
            return 0
        self._ensure_index()
        return self._collection.delete_many({"ref": {"$in": wanted}}).deleted_count

    def purge(self, stream: str | None = None) -> int:
        """Delete every parked event of ``stream`` (of all streams when ``None``); returns how many."""
        deleted = self._collection.delete_many(_of(stream)).deleted_count
        _log.info(
            "dead letters purged: %d of %s",
            deleted,
            f"stream {stream}" if stream else "every stream",
            extra={"event": "dead_letters_purged", "stream": stream},
        )
        return deleted

    def _ensure_index(self) -> None:
        """Index ``ref`` once per process (a no-op when it exists); without it everything works, only slower."""
        if self._indexed:
            return
        try:
            self._collection.create_index("ref")
        except OperationFailure as exc:  # e.g. an identity allowed to write documents but not to create indexes
            _log.warning("dead letters: could not index 'ref' (%s); lookups will scan the collection", exc)
        self._indexed = True


def _of(stream: str | None) -> dict[str, Any]:
    return {} if stream is None else {"stream": stream}


def _record(stream: str, event: RawBSONDocument) -> dict[str, Any]:
    """What a new record holds besides its error and counts; any part of the event that does not decode is kept as
    bytes anyway (a dead letter must be parkable whatever the event holds)."""
    key = _field(event, "documentKey")
    return {
        "_id": {"stream": stream, "token": event["_id"]},
        "stream": stream,
        "operation": str(_field(event, "operationType")),
        "document_key": Binary(bson.encode(key)) if key is not None else None,
        "document_key_text": _text(key),
        "event": Binary(bytes(event.raw)),
        "format": FORMAT_VERSION,
    }


def _field(event: RawBSONDocument, name: str) -> Any:
    try:
        return event.get(name)
    except (bson.errors.BSONError, ValueError, OverflowError):
        return None


def _text(key: Any) -> str:
    if key is None:
        return "-"
    try:
        return json_util.dumps(key, json_options=json_util.RELAXED_JSON_OPTIONS)[:_KEY_TEXT_CHARS]
    except (bson.errors.BSONError, ValueError, TypeError, OverflowError):
        return "(not renderable)"


def _stored_document(value: Any) -> Mapping[str, Any]:
    """A stored ``document_key``: exact BSON bytes (format 2) or a sub-document (format 1)."""
    if isinstance(value, bytes):
        return raw_document(bytes(value))
    return value or {}
