"""The application: a steady mix of writes to the source, every document carrying every BSON value.

About 50 % inserts, 30 % updates (``$set`` / ``$inc``, now and then ``$unset``, top-level and dotted), 10 %
replacements and 10 % deletes, on random documents of the streams' collections, written directly to the source
server (the application does not go through the replicator's proxy). Documents are variants of
``exotic_document`` (every value a decode / re-encode could alter), with string ``_id`` values in one collection
and compound ones in the other. Every
``poison_interval`` seconds a document with a top-level ``poison`` field is planted (the estuary refuses it, so it
must end up a dead letter) and deleted again a few seconds later, so that source and estuary agree at the end while
the dead letters keep its insert. Counts the change events it causes and when each stream was last written.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from localdev.chaos.world import POISON_FIELD, SOURCE_DB, STREAMS
from localdev.standins.faithful.samples import exotic_document
from shared.raw_bson import RAW

_log = logging.getLogger(__name__)

POISON_PREFIX = "poison-"
POISON_MIN_AGE = 4.0  # seconds a poison document stays at least
POISON_PATIENCE = 45.0  # seconds after which it is deleted even if not parked (the report then shows it)
PARKED_CHECK_EVERY = 0.5

Parked = Callable[[str, Any], bool]  # (stream, _id) -> whether a dead letter holds that document's event


@dataclass
class Planted:
    """A poison document: where, its ``_id``, and when it is to be deleted from the source."""

    stream: str
    doc_id: Any
    planted_at: float


class Workload(threading.Thread):
    """Writes until ``stop`` is set, at ``rate`` operations per second; then deletes the poison still planted."""

    def __init__(self, uri: str, *, rate: float, seed: int, parked: Parked, poison_interval: float = 8.0) -> None:
        super().__init__(name="workload", daemon=True)
        self._client: MongoClient[RawBSONDocument] = MongoClient(
            uri, document_class=RawBSONDocument, serverSelectionTimeoutMS=10_000
        )
        database = self._client.get_database(SOURCE_DB, codec_options=RAW)
        self._collections = {s.name: database[s.name] for s in STREAMS}
        self._rate = rate
        self._rng = random.Random(seed)  # noqa: S311 (a workload, not a secret)
        self._poison_interval = poison_interval
        self._parked = parked
        self._checked_at = 0.0
        self.stop = threading.Event()
        self.error: str | None = None
        self._live: dict[str, list[Any]] = {s.name: [] for s in STREAMS}
        self._next_id = 0
        self.planted: list[Planted] = []  # every poison document ever planted
        self._pending_poison: list[Planted] = []
        self.written: dict[str, int] = dict.fromkeys(self._collections, 0)  # change events caused, per stream
        self.seeded = 0
        self.operations: dict[str, int] = dict.fromkeys(("insert", "update", "replace", "delete", "poison"), 0)
        self.acked_at: dict[str, float] = {}  # per stream: when the newest write was acknowledged (epoch s)

    # -- documents --------------------------------------------------------------------------------------------

    def _new_id(self, stream: str, *, poison: bool = False) -> Any:
        """A fresh ``_id``: a string in one collection, a compound document in the other (one BSON type per
        collection: an initial sync refuses a collection whose ``_id`` values mix types)."""
        self._next_id += 1
        prefix = POISON_PREFIX if poison else f"{stream[0]}-"
        if stream == STREAMS[0].name:
            return f"{prefix}{self._next_id:07d}"
        return {"s": prefix, "n": Int64(self._next_id)}

    def _document(self, doc_id: Any, **extra: Any) -> RawBSONDocument:
        """A variant of the exotic sample: the same BSON values, plus fields that differ from one to the next."""
        rng = self._rng
        fields = {
            "qty": rng.randrange(1, 100),
            "status": rng.choice(("new", "paid", "shipped")),
            "price": Decimal128(f"{rng.randrange(0, 10**6)}.{rng.randrange(100):02d}"),
            "note": "x" * rng.randrange(0, 300),
            "tags": [rng.choice(("a", "b", "c")) for _ in range(rng.randrange(4))],
            **extra,
        }
        return RawBSONDocument(exotic_document(doc_id, **fields), RAW)

    def seed(self, per_stream: int) -> None:
        """Documents present before the workers start: the initial sync copies them."""
        for name, collection in self._collections.items():
            docs = [self._document(self._new_id(name)) for _ in range(per_stream)]
            collection.insert_many(docs)
            self._live[name].extend(doc["_id"] for doc in docs)
            self.seeded += len(docs)

    # -- the loop ---------------------------------------------------------------------------------------------

    def run(self) -> None:
        due = time.monotonic()
        next_poison = time.monotonic() + min(3.0, self._poison_interval)
        try:
            while not self.stop.is_set():
                if time.monotonic() >= next_poison:
                    self._plant()
                    next_poison += self._poison_interval
                self._delete_poison(time.monotonic())
                self._one()
                due = max(due + 1 / self._rate, time.monotonic() - 1.0)  # steady, never a burst to catch up
                self.stop.wait(due - time.monotonic())
            self._last_poison()
        except PyMongoError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            _log.exception("the workload stopped")

    def _last_poison(self) -> None:
        """After the run: wait for the poison still planted to be parked, then delete it."""
        while self._pending_poison:
            self._delete_poison(time.monotonic())
            time.sleep(PARKED_CHECK_EVERY)

    def close(self) -> None:
        """Stop writing (at once if still running) and close the client."""
        self.stop.set()
        if self.is_alive():
            self.join(30.0)
        self._client.close()

    def _one(self) -> None:
        """One operation on a random stream's collection."""
        name = self._rng.choice(list(self._collections))
        collection, live = self._collections[name], self._live[name]
        roll = self._rng.random()
        if roll < 0.5 or len(live) < 20:
            doc = self._document(self._new_id(name))
            collection.insert_one(doc)
            live.append(doc["_id"])
            self._count(name, "insert", 1)
        elif roll < 0.8:
            changed = collection.update_one({"_id": self._rng.choice(live)}, self._update()).modified_count
            self._count(name, "update", changed)
        elif roll < 0.9:
            doc_id = self._rng.choice(live)
            changed = collection.replace_one({"_id": doc_id}, self._document(doc_id, replaced=True)).modified_count
            self._count(name, "replace", changed)
        else:
            at = self._rng.randrange(len(live))
            live[at], live[-1] = live[-1], live[at]
            self._count(name, "delete", collection.delete_one({"_id": live.pop()}).deleted_count)

    def _update(self) -> dict[str, Any]:
        rng = self._rng
        update: dict[str, Any] = {
            "$set": {
                "status": rng.choice(("paid", "shipped", "returned")),
                "nested.touched": DatetimeMS(rng.randrange(-(2**62), 2**62)),
                "price": Decimal128(f"-{rng.randrange(10**6)}.5"),
            },
            "$inc": {"qty": 1, "alpha": Int64(1)},
        }
        if rng.random() < 0.1:
            update["$unset"] = {"note": ""}
        return update

    def _count(self, stream: str, operation: str, events: int) -> None:
        self.operations[operation] += 1
        if events:
            self.written[stream] += events
            self.acked_at[stream] = time.time()

    def _plant(self) -> None:
        name = self._rng.choice(list(self._collections))
        planted = Planted(name, self._new_id(name, poison=True), time.monotonic())
        self._collections[name].insert_one(self._document(planted.doc_id, **{POISON_FIELD: True}))
        self.planted.append(planted)
        self._pending_poison.append(planted)
        self._count(name, "poison", 1)

    def _delete_poison(self, now: float) -> None:
        """Delete the poison documents that were parked (or waited too long), checking at most twice a second."""
        if not self._pending_poison or now - self._checked_at < PARKED_CHECK_EVERY:
            return
        self._checked_at = now
        for planted in list(self._pending_poison):
            age = now - planted.planted_at
            if age < POISON_MIN_AGE or (age < POISON_PATIENCE and not self._parked(planted.stream, planted.doc_id)):
                continue
            deleted = self._collections[planted.stream].delete_one({"_id": planted.doc_id}).deleted_count
            self._pending_poison.remove(planted)
            self._count(planted.stream, "delete", deleted)
