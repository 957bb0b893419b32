"""Cursors: query results served in batches, and change streams served from the change log.

A batch holds at most ``batchSize`` documents (101 in a first batch by default, as the server does) and stops
before 16 MiB, always holding at least one. A change stream cursor remembers the last sequence number it read;
``getMore`` returns the newer events of its scope that pass its ``$match`` stages, with ``postBatchResumeToken``
(the last returned token, or the newest token of the log when the batch is empty). Waiting for events happens in
the server's event loop (``server.py``); this module only answers "what is there now".
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from localdev.standins.faithful.changelog import Scope, parse_token, token
from localdev.standins.faithful.errors import (
    BAD_VALUE,
    CURSOR_NOT_FOUND,
    UNRECOGNIZED_PIPELINE_STAGE,
    CommandError,
)
from localdev.standins.faithful.matching import matches
from localdev.standins.faithful.store import Store
from shared.raw_bson import RAW

BATCH_BYTES = 16 * 1024 * 1024
FIRST_BATCH = 101
# Stages a change stream may carry (what DocumentDB allows); only $match changes what is returned here.
_PASSED_STAGES = frozenset({"$project", "$set", "$unset", "$addFields"})


@dataclass
class QueryCursor:
    ns: str
    docs: list[bytes]
    position: int = 0


@dataclass
class StreamCursor:
    ns: str
    scope: Scope
    position: int
    filters: list[Mapping[str, Any]] = field(default_factory=list)


def raw_list(docs: list[bytes]) -> list[RawBSONDocument]:
    """Documents for a reply: ``bson.encode`` copies a ``RawBSONDocument``'s bytes as they are."""
    return [RawBSONDocument(doc, RAW) for doc in docs]


def take(docs: list[bytes], start: int, limit: int | None) -> list[bytes]:
    batch: list[bytes] = []
    size = 0
    for doc in docs[start:] if limit is None else docs[start : start + limit]:
        if batch and size + len(doc) > BATCH_BYTES:
            break
        batch.append(doc)
        size += len(doc)
    return batch


def batch_size(value: Any, default: int | None) -> int | None:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CommandError(BAD_VALUE, f"batchSize must be a non-negative integer, not {value!r}")
    return int(value)


class Cursors:
    """Open cursors by id; not thread-safe (the server holds its lock around it)."""

    def __init__(self) -> None:
        self._open: dict[int, QueryCursor | StreamCursor] = {}
        self._ids = itertools.count(secrets.randbelow(2**40) + 1)

    def get(self, cursor_id: int) -> QueryCursor | StreamCursor:
        cursor = self._open.get(int(cursor_id))
        if cursor is None:
            raise CommandError(CURSOR_NOT_FOUND, f"cursor id {cursor_id} not found")
        return cursor

    def first_batch(self, cursor: QueryCursor, size: int | None) -> dict[str, Any]:
        """The ``cursor`` field of a reply that opens ``cursor``; it stays open when documents remain."""
        batch = take(cursor.docs, 0, size)
        cursor.position = len(batch)
        cursor_id = 0
        if cursor.position < len(cursor.docs):
            cursor_id = next(self._ids)
            self._open[cursor_id] = cursor
        return {"firstBatch": raw_list(batch), "id": Int64(cursor_id), "ns": cursor.ns}

    def more(self, cursor_id: int, cursor: QueryCursor, size: int | None) -> dict[str, Any]:
        batch = take(cursor.docs, cursor.position, size)
        cursor.position += len(batch)
        if cursor.position >= len(cursor.docs):
            self._open.pop(int(cursor_id), None)
            cursor_id = 0
        return {"nextBatch": raw_list(batch), "id": Int64(cursor_id), "ns": cursor.ns}

    def open_stream(self, cursor: StreamCursor) -> int:
        cursor_id = next(self._ids)
        self._open[cursor_id] = cursor
        return cursor_id

    def kill(self, ids: list[Any]) -> dict[str, Any]:
        killed: list[Int64] = []
        missing: list[Int64] = []
        for cursor_id in ids:
            (killed if self._open.pop(int(cursor_id), None) is not None else missing).append(Int64(cursor_id))
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": []}


def stream_cursor(store: Store, db: str, target: Any, pipeline: list[Any]) -> StreamCursor:
    """A change stream cursor for ``aggregate`` with a ``$changeStream`` first stage (286 on a lost position)."""
    options = pipeline[0]["$changeStream"]
    if not isinstance(options, Mapping):
        raise CommandError(BAD_VALUE, "$changeStream takes a document of options")
    if isinstance(target, str):
        scope, ns = Scope(db, target), f"{db}.{target}"
    elif options.get("allChangesForCluster"):
        scope, ns = Scope(), "admin.$cmd.aggregate"
    else:
        scope, ns = Scope(db), f"{db}.$cmd.aggregate"
    filters: list[Mapping[str, Any]] = []
    for stage in pipeline[1:]:
        name = next(iter(stage), "") if isinstance(stage, Mapping) else ""
        if name == "$match":
            filters.append(stage["$match"])
        elif name not in _PASSED_STAGES:
            raise CommandError(
                UNRECOGNIZED_PIPELINE_STAGE, f"Unrecognized pipeline stage name in a change stream: '{name}'"
            )
    resume = options.get("resumeAfter", options.get("startAfter"))
    start_at = options.get("startAtOperationTime")
    if resume is not None:
        position = parse_token(resume)
    elif isinstance(start_at, Timestamp):
        position = store.log.position_at(start_at)
    else:
        position = store.log.newest
    store.log.check_resumable(position, scope, token=resume is not None)
    return StreamCursor(ns, scope, position, filters)


def stream_batch(store: Store, cursor: StreamCursor, size: int | None) -> tuple[list[bytes], RawBSONDocument]:
    """The next events of the stream (advancing it) and the batch's ``postBatchResumeToken``."""
    store.log.check_resumable(cursor.position, cursor.scope, token=False)  # events it had not read were dropped
    batch: list[bytes] = []
    total = 0
    last = None
    scanned = store.log.newest
    for event in store.log.after(cursor.position, cursor.scope):
        if (size is not None and len(batch) >= size) or (batch and total + len(event.raw) > BATCH_BYTES):
            scanned = last if last is not None else cursor.position
            break
        if all(matches(event.raw, query) for query in cursor.filters):
            batch.append(event.raw)
            total += len(event.raw)
            last = event.seq
    cursor.position = scanned
    return batch, token(last if last is not None else scanned)
