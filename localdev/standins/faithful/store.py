"""Storage: per namespace, an ordered mapping from the exact bytes of ``{_id: value}`` to the document's bytes.

Documents are stored as received and never re-encoded. Every write goes through ``insert``/``replace``/
``delete`` here, which check the stand-in validator (``refuse_field``) and unique indexes, record the undo step
when the write belongs to a transaction, and append the change event (or hold it in the transaction until
commit). Two ``_id`` values of different types are two documents (keys are exact bytes); lookups by ``_id``
value go through ``by_value``, which groups equal values the way a query does (``1`` and ``1.0``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bson import json_util

from localdev.standins.faithful import rawdoc
from localdev.standins.faithful.changelog import ChangeLog
from localdev.standins.faithful.errors import (
    BSON_OBJECT_TOO_LARGE,
    DOCUMENT_VALIDATION_FAILURE,
    DUPLICATE_KEY,
    WriteFailedError,
)
from localdev.standins.faithful.matching import id_equalities, matches, order_key

MAX_BSON_OBJECT_SIZE = 16 * 1024 * 1024


@dataclass
class Index:
    """A secondary index as listed; a unique one keeps its entries (value key -> ``_id`` key) to refuse duplicates."""

    name: str
    key: Mapping[str, Any]
    unique: bool = False
    sparse: bool = False
    entries: dict[tuple[Any, ...], bytes] = field(default_factory=dict)

    def entry(self, doc: bytes) -> tuple[Any, ...] | None:
        values = [rawdoc.lookup(doc, path.split(".")) for path in self.key]
        if self.sparse and not any(values):
            return None
        return tuple(order_key(found[0] if len(found) == 1 else found or None) for found in values)

    def describe(self, doc: bytes) -> str:
        parts = []
        for path in self.key:
            found = rawdoc.lookup(doc, path.split("."))
            value = found[0] if len(found) == 1 else found or None
            parts.append(f"{path}: {json.dumps(value) if isinstance(value, str) else json_util.dumps(value)}")
        return "{ " + ", ".join(parts) + " }"


@dataclass
class Undo:
    """How to take back one write: ``previous`` is the document before it (``None``: it did not exist)."""

    ns: str
    key: bytes
    previous: bytes | None
    position: int | None = None


@dataclass
class Pending:
    """A change event of an uncommitted transaction."""

    ns: str
    operation: str
    key: bytes
    document: bytes | None
    description: tuple[bytes, list[str]] | None


class Transaction:
    """What an open transaction did: undo steps and the events it will publish on commit."""

    def __init__(self, lsid: bytes, number: int) -> None:
        self.lsid = lsid
        self.number = number
        self.undo: list[Undo] = []
        self.events: list[Pending] = []


class Collection:
    def __init__(self) -> None:
        self.docs: dict[bytes, bytes] = {}
        self.by_value: dict[tuple[Any, ...], list[bytes]] = {}
        self.indexes: dict[str, Index] = {}

    def put(self, key: bytes, doc: bytes, position: int | None = None) -> None:
        if key not in self.docs:
            self.by_value.setdefault(_value_key(key), []).append(key)
        if position is not None and key not in self.docs and position < len(self.docs):
            items = list(self.docs.items())
            items.insert(position, (key, doc))
            self.docs = dict(items)
        else:
            self.docs[key] = doc
        for index in self.indexes.values():
            entry = index.entry(doc) if index.unique else None
            if entry is not None:
                index.entries[entry] = key

    def remove(self, key: bytes, *, locate: bool = False) -> tuple[bytes, int | None]:
        """Remove a document; with ``locate``, also say where it was (for an undo step: costs a scan)."""
        position = list(self.docs).index(key) if locate else None
        doc = self.docs.pop(key)
        siblings = self.by_value[_value_key(key)]
        siblings.remove(key)
        if not siblings:
            del self.by_value[_value_key(key)]
        self.unindex(key, doc)
        return doc, position

    def unindex(self, key: bytes, doc: bytes) -> None:
        for index in self.indexes.values():
            entry = index.entry(doc) if index.unique else None
            if entry is not None and index.entries.get(entry) == key:
                del index.entries[entry]

    def duplicate(self, key: bytes, doc: bytes, ns: str) -> WriteFailedError | None:
        """The 11000 a unique index raises for ``doc`` stored under ``key``, if any."""
        for index in self.indexes.values():
            entry = index.entry(doc) if index.unique else None
            if entry is not None and index.entries.get(entry, key) != key:
                return WriteFailedError(
                    DUPLICATE_KEY,
                    f"E11000 duplicate key error collection: {ns} index: {index.name} dup key: {index.describe(doc)}",
                    keyPattern=dict(index.key),
                )
        return None

    def select(self, query: Mapping[str, Any]) -> Iterator[tuple[bytes, bytes]]:
        """``(key, document)`` of the matching documents in natural (insertion) order."""
        ids = id_equalities(query)
        if ids is None:
            candidates: Any = list(self.docs)
        else:
            wanted = {k for value in ids for k in self.by_value.get(order_key(value), ())}
            candidates = [k for k in self.docs if k in wanted] if len(wanted) > 1 else wanted
        for key in candidates:
            doc = self.docs.get(key)
            if doc is not None and matches(doc, query):
                yield key, doc


def _value_key(key: bytes) -> tuple[Any, ...]:
    return order_key(rawdoc.elements(key)[0].decode())


def id_key(doc: bytes) -> bytes:
    """The exact bytes of ``{_id: value}`` for a document (its ``_id`` element, re-framed)."""
    found = rawdoc.get(doc, "_id")
    if found is None:
        raise WriteFailedError(2, "document has no _id")
    return rawdoc.build([found.raw])


class Store:
    """Every collection and the change log; not thread-safe (the server holds its lock around it)."""

    def __init__(self) -> None:
        self.collections: dict[str, Collection] = {}
        self.log = ChangeLog()
        self.refused: dict[str, set[str]] = {}

    def get(self, ns: str) -> Collection | None:
        return self.collections.get(ns)

    def collection(self, ns: str) -> Collection:
        """The collection, created (implicitly, as a write does) when missing."""
        return self.collections.setdefault(ns, Collection())

    def select(self, ns: str, query: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
        coll = self.collections.get(ns)
        return [] if coll is None else list(coll.select(query))

    def _check(self, ns: str, coll: Collection, key: bytes, doc: bytes) -> None:
        if len(doc) > MAX_BSON_OBJECT_SIZE:  # a stored document, as MongoDB: the headroom is for what it builds
            raise WriteFailedError(BSON_OBJECT_TOO_LARGE, f"object to insert too large: {len(doc)} bytes")
        refused = self.refused.get(ns)
        if refused and refused.intersection(rawdoc.names(doc)):
            raise WriteFailedError(
                DOCUMENT_VALIDATION_FAILURE,
                "Document failed validation",
                errInfo={
                    "failingDocumentId": rawdoc.elements(key)[0].decode(),
                    "details": {"refused": sorted(refused)},
                },
            )
        failure = coll.duplicate(key, doc, ns)
        if failure is not None:
            raise failure

    def insert(self, ns: str, doc: bytes, txn: Transaction | None) -> bytes:
        key = id_key(doc)
        coll = self.collection(ns)
        if key in coll.docs:
            raise WriteFailedError(
                DUPLICATE_KEY,
                f"E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: "
                f"{json_util.dumps(rawdoc.elements(key)[0].decode())} }}",
                keyPattern={"_id": 1},
            )
        self._check(ns, coll, key, doc)
        coll.put(key, doc)
        self._record(txn, Undo(ns, key, None), Pending(ns, "insert", key, doc, None))
        return key

    def replace(
        self,
        ns: str,
        key: bytes,
        doc: bytes,
        txn: Transaction | None,
        *,
        operation: str,
        description: tuple[bytes, list[str]] | None = None,
    ) -> None:
        coll = self.collection(ns)
        self._check(ns, coll, key, doc)
        previous = coll.docs[key]
        coll.unindex(key, previous)
        coll.put(key, doc)
        self._record(txn, Undo(ns, key, previous), Pending(ns, operation, key, doc, description))

    def delete(self, ns: str, key: bytes, txn: Transaction | None) -> None:
        previous, position = self.collection(ns).remove(key, locate=txn is not None)
        self._record(txn, Undo(ns, key, previous, position), Pending(ns, "delete", key, None, None))

    def _record(self, txn: Transaction | None, undo: Undo, event: Pending) -> None:
        if txn is None:
            self.publish([event])
        else:
            txn.undo.append(undo)
            txn.events.append(event)

    def publish(self, events: list[Pending]) -> None:
        for event in events:
            self.log.append(event.ns, event.operation, event.key, event.document, event.description)

    def rollback(self, txn: Transaction) -> None:
        """Take back a transaction's writes, newest first; its events were never published."""
        for step in reversed(txn.undo):
            coll = self.collection(step.ns)
            current = coll.docs.get(step.key)
            if current is None:
                if step.previous is not None:
                    coll.put(step.key, step.previous, step.position)  # deleted: back where it was
            elif step.previous is None:
                coll.remove(step.key)  # inserted
            else:
                coll.unindex(step.key, current)  # replaced: same place, old bytes
                coll.put(step.key, step.previous)
        txn.undo.clear()
        txn.events.clear()

    def drop(self, ns: str) -> Collection | None:
        self.refused.pop(ns, None)
        return self.collections.pop(ns, None)
