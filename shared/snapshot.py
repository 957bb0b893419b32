"""The snapshot copier: the source collection into the estuary, in ``_id`` order, one bounded batch at a time.

Used by initial sync and by the ``resnapshot`` recovery. Each batch is independent and idempotent, so the copy
resumes from the last ``_id`` saved on the checkpoint after a pass ends (time budget, crash, Functions timeout):

* documents are written raw (never decoded unless a field mapping applies), with an unordered ``insert_many``
  (the fast path into an empty estuary); documents the estuary already has (a copy resumed after a crash, or
  one that re-syncs a populated estuary) become replace-by-``_id`` upserts;
* estuary documents inside the batch's ``_id`` range that the source no longer has are deleted, and so are
  those past the source's last ``_id`` at the end, so a resnapshot converges on an estuary that missed deletes
  (skipped when the estuary was empty as the copy began: then everything in it came from the copy itself);
* documents the estuary refuses for good go to the dead-letter collection, like any other refused write.

The change stream position is captured *before* the copy starts; replaying the changes from there after the
copy re-applies some of them, harmlessly (idempotent writes of the current post-image).

Ranges over ``_id`` are only meaningful between values of one BSON type (MongoDB compares ``$gt`` within a
type), so a collection whose ``_id`` values mix types (say ObjectIds and strings) is refused, loudly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import bson
from bson.binary import Binary
from bson.raw_bson import RawBSONDocument
from pymongo import DeleteOne, InsertOne, ReplaceOne
from pymongo.errors import PyMongoError

from shared.errors import ReplicatorError, TransientError
from shared.estuary import DOCUMENT_ERRORS, Refusal, transformed
from shared.mongo_errors import DUPLICATE_KEY, is_transient, summary
from shared.raw_bson import raw_document

if TYPE_CHECKING:
    from collections.abc import Generator, Mapping, Sequence

    from pymongo.collection import Collection

    from shared.config import TransformConfig
    from shared.dead_letters import Parking
    from shared.estuary import Writes


class MixedIdTypesError(ReplicatorError):
    """The source's ``_id`` values are of more than one BSON type; a range-based copy would skip some."""


@dataclass
class CopyBatch:
    """What one batch of the copy did."""

    copied: int = 0
    last_id: Any = None
    done: bool = False
    removed: int = 0  # estuary documents the source no longer has
    dead_lettered: int = 0
    bytes: int = 0


class SnapshotCopier:
    """Copies one stream's source collection into its estuary."""

    def __init__(
        self,
        source: Collection[RawBSONDocument],
        estuary: Collection[Any],
        dead_letters: Parking,
        *,
        write: Writes,
        stream: str,
        transform: TransformConfig | None,
        batch_size: int,
    ) -> None:
        self._source = source
        self._estuary = estuary  # read only: every write goes through ``write`` (the estuary fence)
        self._write_ops = write
        self._dead_letters = dead_letters
        self._stream = stream
        self._transform = transform
        self._batch_size = batch_size
        self.reconcile = True  # delete estuary documents the source lacks; pointless into an empty estuary

    def estuary_is_empty(self) -> bool:
        return self._estuary.find_one({}, {"_id": 1}) is None

    def check_id_types(self) -> None:
        """Refuse a source whose smallest and largest ``_id`` differ in BSON type (so the values mix types)."""
        ends = [self._source.find_one({}, {"_id": 1}, sort=[("_id", order)]) for order in (1, -1)]
        types = {_type_bracket(doc["_id"]) for doc in ends if doc is not None}
        if len(types) > 1:
            raise MixedIdTypesError(
                f"stream '{self._stream}': the source's _id values mix BSON types ({', '.join(sorted(types))}); "
                "a copy in _id ranges would skip documents",
                hint="give the collection _id values of one type, or replicate it without initial_sync",
            )

    def estimate(self) -> int:
        return int(self._source.estimated_document_count())

    def batches(self, after: Any) -> Generator[CopyBatch, None, None]:
        """Copy the documents with ``_id`` greater than ``after`` (``None``: all), yielding after each batch.

        One cursor per call (one query, not one per batch: a server need not find its place again every time).
        The last batch has ``done`` set. Close the generator to stop early; call again to resume.
        """
        query = {} if after is None else {"_id": {"$gt": after}}
        try:
            with self._source.find(query, sort=[("_id", 1)], batch_size=self._batch_size) as cursor:
                while True:
                    docs = list(itertools.islice(cursor, self._batch_size))
                    batch = self._copy(docs, after)
                    yield batch
                    if batch.done:
                        return
                    after = batch.last_id
        except PyMongoError as exc:
            if is_transient(exc):
                raise TransientError(f"snapshot copy failed: {summary(exc)}") from exc
            raise

    def _copy(self, docs: list[RawBSONDocument], after: Any) -> CopyBatch:
        batch = CopyBatch(copied=len(docs), done=len(docs) < self._batch_size)
        if docs:
            batch.last_id = docs[-1]["_id"]
            batch.bytes = sum(len(doc.raw) for doc in docs)
            batch.dead_lettered = self._write(docs)
        if self.reconcile:
            batch.removed = self._remove_extras(after, batch.last_id, [doc["_id"] for doc in docs], done=batch.done)
        return batch

    def _write(self, docs: Sequence[RawBSONDocument]) -> int:
        """Insert the batch; what exists already is replaced; what is refused is parked. Returns parked count."""
        refused: dict[int, Refusal] = {}
        prepared: list[tuple[int, Mapping[str, Any]]] = []
        for index, doc in enumerate(docs):
            try:
                prepared.append((index, transformed(doc, self._transform)))
            except DOCUMENT_ERRORS as exc:  # this document, not the estuary: park it, copy the rest
                refused[index] = Refusal(None, f"the document could not be turned into a write: {exc!r}")
        inserted = self._write_ops([InsertOne(document) for _, document in prepared])
        existing = [prepared[j] for j, refusal in inserted.items() if refusal.code == DUPLICATE_KEY]
        refused |= {prepared[j][0]: refusal for j, refusal in inserted.items() if refusal.code != DUPLICATE_KEY}
        if existing:
            ops = [ReplaceOne({"_id": docs[index]["_id"]}, document, upsert=True) for index, document in existing]
            refused |= {existing[j][0]: refusal for j, refusal in self._write_ops(ops).items()}
        for index, refusal in sorted(refused.items()):
            self._dead_letters.park(
                self._stream, _snapshot_event(docs[index]), code=refusal.code, message=refusal.message, attempts=1
            )
        return len(refused)

    def _remove_extras(self, after: Any, last: Any, ids: Sequence[Any], *, done: bool) -> int:
        """Delete estuary documents in (after, last] the source does not have; past the end too when done."""
        condition: dict[str, Any] = {"$nin": list(ids)}
        if after is not None:
            condition["$gt"] = after
        if not done:
            condition["$lte"] = last
        extras = [doc["_id"] for doc in self._estuary.find({"_id": condition}, {"_id": 1})]
        refused = self._write_ops([DeleteOne({"_id": value}) for value in extras])
        return len(extras) - len(refused)


def _snapshot_event(doc: RawBSONDocument) -> RawBSONDocument:
    """A change-event-shaped record of a refused copy, so dead letters look the same whatever refused them; its
    token holds the ``_id`` as BSON bytes, which any store keeps whatever the ``_id``'s type."""
    event = {
        "_id": {"snapshot": Binary(bson.encode({"_id": doc["_id"]}))},
        "operationType": "snapshot",
        "documentKey": {"_id": doc["_id"]},
        "fullDocument": doc,
    }
    return raw_document(event)


def _type_bracket(value: Any) -> str:
    """The BSON comparison bracket of a value: numbers compare with each other, other types only with themselves."""
    if isinstance(value, bool):  # before int: a bool is an int in Python, its own type in BSON
        return "bool"
    return "number" if isinstance(value, int | float | bson.Int64 | bson.Decimal128) else type(value).__name__
