"""The estuary fence: a worker writes a stream's documents only while the estuary itself agrees it holds the stream.

The lease on the checkpoint document stops a worker that lost its stream from moving the position; it cannot stop
that worker's late writes from landing on the data (a stalled network path can deliver them long after the lease
ended). So the fence is checked where the data is written:

* ``claim`` runs before a worker's first write under a lease (a pass with nothing to write never needs the
  estuary): it raises the stream's fence documents (``replicator_fences`` in the estuary's database,
  ``{_id: stream, stream, epoch, owner}`` and ``LANES - 1`` lanes ``{_id: "stream$lane-k", ...}``) to the lease's epoch;
  a worker with a lower epoch can never raise them back. Any write of an earlier holder that matters is of events
  after the checkpoint, which the new holder re-applies, so it writes (and claims) before they could be lost;
* in ``transaction`` mode every write is a multi-document transaction whose first statement updates one of the
  stream's fence documents (its lane) where ``epoch`` is this lease's: once another worker claimed the stream, the
  transaction finds no fence and aborts (nothing is written), and a claim racing an open transaction conflicts with
  it on that document, so the server serialises them. Concurrent writes of one worker (``apply_concurrency``) each
  hold a lane of their own: when two open transactions write one document, the second aborts (MongoDB's "In-progress
  Transactions and Write Conflicts", https://www.mongodb.com/docs/manual/core/transactions-production-consideration/).
  Batches are split into transactions of at most ``TXN_MAX_OPS`` writes and about ``TXN_MAX_BYTES``, and each is bounded
  in time: Azure DocumentDB ends a transaction after 30 s (https://learn.microsoft.com/azure/documentdb/limits)
  and accepts at most 25,000 writes in one request (https://learn.microsoft.com/azure/documentdb/max-document-size);
* in ``deadline`` mode (a standalone server, which cannot run transactions) every write is bounded by what is left
  of the lease (``pymongo.timeout``: a client-side deadline that is also sent as ``maxTimeMS``), and a worker whose
  lease has run out by its own clock writes nothing. The residual risk: bytes a network path holds and delivers
  after the client gave up still execute on the server (``maxTimeMS`` counts from when the server starts). Only
  transactions close that; ``auto`` picks them whenever the estuary is a replica set member or a mongos.

A write the fence refuses raises ``FenceLostError`` (a ``LeaseLostError``): the pass ends as ``lease_lost``, and the
worker that holds the stream now replays from the checkpoint.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import bson
import pymongo
from bson.raw_bson import RawBSONDocument
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from shared.errors import TransientError
from shared.estuary import Refusal, WriteOp, refusals, write_unordered
from shared.lease import LeaseLostError
from shared.mongo_errors import is_transient, summary, transactions_unsupported
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from pymongo.client_session import ClientSession
    from pymongo.collection import Collection

    from shared.clock import Clock
    from shared.lease import HeldLease

FencingMode = Literal["auto", "transaction", "deadline"]

FENCES_COLLECTION = "replicator_fences"
LANES = 16  # fence documents per stream: at most this many concurrent transactions of one worker (apply_concurrency)
TXN_MAX_OPS = 1000  # writes per transaction
TXN_MAX_BYTES = 8 * 1024 * 1024  # about this much document data per transaction
TXN_MAX_SECONDS = 25.0  # below DocumentDB's 30 s transaction lifetime
_MARGIN = 1.0  # seconds of the lease a write leaves unused
_TRANSACTION_SERVERS = frozenset({"RSPrimary", "Mongos"})
_DUPLICATE_KEY = 11000

_log = get_logger(__name__)


class FenceLostError(LeaseLostError):
    """The estuary's fence names a later lease: another worker holds the stream; this one must not write."""


class EstuaryFence:
    """One worker's hold on one stream's estuary, for as long as it holds the stream's lease."""

    def __init__(
        self,
        estuary: Collection[Any],
        *,
        stream: str,
        held: HeldLease,
        mode: FencingMode,
        write_timeout: float,
        clock: Clock,
    ) -> None:
        self._estuary = estuary
        self._fences: Collection[Any] = estuary.database[FENCES_COLLECTION]
        self._stream = stream
        self._held = held
        self._mode = mode
        self._write_timeout = write_timeout
        self._clock = clock
        self.transactions: bool | None = None  # decided at the claim in "auto" mode
        self._claiming = threading.Lock()  # concurrent first writes claim once
        self._lanes: queue.LifoQueue[int] = queue.LifoQueue()  # free lanes; a lone writer always takes lane 0
        for lane in reversed(range(LANES)):
            self._lanes.put(lane)

    def claim(self) -> None:
        """Raise every lane of the fence to this lease's epoch (all ``LANES``, whatever this worker's concurrency: a
        stale worker may use any of them); ``FenceLostError`` when a later lease raised one already."""
        lease = self._held.lease
        fields = {"stream": self._stream, "epoch": lease.epoch, "owner": lease.owner, "claimed_at": self._clock.time()}
        raise_lanes = [
            UpdateOne({"_id": self._lane(k), "epoch": {"$lt": lease.epoch}}, {"$set": fields}, upsert=True)
            for k in range(LANES)
        ]
        try:
            with pymongo.timeout(self._bound()):
                self._fences.bulk_write(raise_lanes, ordered=False)
        except BulkWriteError as exc:
            # A fence document with an epoch >= ours exists: its upsert's insert collided on the _id.
            if any(error.get("code") == _DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
                raise self._lost("claimed by a later lease") from None
            _raise_transient("could not claim the estuary fence", exc)
            raise
        except PyMongoError as exc:
            _raise_transient("could not claim the estuary fence", exc)
            raise
        if self.transactions is None:
            self.transactions = self._mode == "transaction" or (self._mode == "auto" and self._replica_set())
            _log.info(
                "stream %s: estuary writes fenced by %s",
                self._stream,
                "transactions" if self.transactions else "a deadline within the lease",
                extra={"stream": self._stream, "event": "fence_mode"},
            )

    def write(self, ops: Sequence[WriteOp]) -> dict[int, Refusal]:
        """Write ``ops`` under the fence; the refused ones by index (see ``write_unordered``)."""
        if not ops:
            return {}
        with self._claiming:
            if self.transactions is None:
                self.claim()
        if not self.transactions:
            with pymongo.timeout(self._bound()):
                return write_unordered(self._estuary, ops)
        lane = self._lanes.get()  # waits only beyond LANES concurrent writers
        try:
            refused: dict[int, Refusal] = {}
            for chunk in transaction_chunks(ops):
                refused |= self._transaction(ops, chunk, lane)
            return refused
        finally:
            self._lanes.put(lane)

    def _transaction(self, ops: Sequence[WriteOp], indexes: list[int], lane: int) -> dict[int, Refusal]:
        """Write ``ops[i] for i in indexes`` in transactions that first check the fence; a refused write aborts its
        transaction, so it is set aside and the rest written again."""
        refused: dict[int, Refusal] = {}
        pending = list(indexes)
        client = self._estuary.database.client
        while pending:
            try:
                with (
                    pymongo.timeout(min(self._bound(), TXN_MAX_SECONDS)),
                    client.start_session() as session,
                    session.start_transaction(),
                ):
                    self._check(session, lane)
                    self._estuary.bulk_write([ops[i] for i in pending], ordered=False, session=session)
                return refused
            except BulkWriteError as exc:
                found = refusals(exc)  # raises TransientError for a transient one
                refused |= {pending[j]: refusal for j, refusal in found.items()}
                pending = [i for j, i in enumerate(pending) if j not in found]
            except OperationFailure as exc:
                if self._mode == "auto" and transactions_unsupported(exc):
                    _log.warning(
                        "stream %s: the estuary refused a transaction (%s); falling back to deadline fencing",
                        self._stream,
                        exc.code,
                        extra={"stream": self._stream, "event": "fence_mode"},
                    )
                    self.transactions = False
                    with pymongo.timeout(self._bound()):
                        rest = write_unordered(self._estuary, [ops[i] for i in pending])
                    return refused | {pending[j]: refusal for j, refusal in rest.items()}
                _raise_transient("estuary transaction failed", exc)
                raise
            except PyMongoError as exc:
                _raise_transient("estuary transaction failed", exc)
                raise
        return refused

    def _check(self, session: ClientSession, lane: int) -> None:
        """The transaction's first statement: a write to its lane of the fence, so a racing claim conflicts with it."""
        lease = self._held.lease
        found = self._fences.update_one(
            {"_id": self._lane(lane), "epoch": lease.epoch},
            {"$set": {"written_at": self._clock.time()}},
            session=session,
        )
        if found.matched_count == 0:
            raise self._lost("claimed by a later lease while this worker was writing")

    def _lane(self, lane: int) -> str:
        """A lane's fence document id: lane 0 is the stream's name (the one fence document of earlier versions); '$'
        is in no stream or collection name, so no lane id is another stream's."""
        return self._stream if lane == 0 else f"{self._stream}$lane-{lane}"

    def _bound(self) -> float:
        """Seconds a write may take: ``write_timeout``, within what is left of the lease (none left: stop)."""
        left = self._held.remaining() - _MARGIN
        if left <= 0:
            raise self._lost("the lease ran out before the write could start")
        return min(self._write_timeout, left)

    def _replica_set(self) -> bool:
        servers = self._estuary.database.client.topology_description.server_descriptions().values()
        return any(server.server_type_name in _TRANSACTION_SERVERS for server in servers)

    def _lost(self, why: str) -> FenceLostError:
        lease = self._held.lease
        return FenceLostError(
            f"stream '{self._stream}': the estuary's fence refused lease epoch {lease.epoch} ({why})",
            hint="expected after a slow or paused worker: the worker that holds the stream now replays from the "
            f"checkpoint; if no other worker runs, the checkpoint document was recreated: delete the fence documents "
            f"(db.{FENCES_COLLECTION}.deleteMany({{$or: [{{_id: '{self._stream}'}}, {{stream: '{self._stream}'}}]}}) "
            "in the estuary's database)",
        )


def transaction_chunks(ops: Sequence[WriteOp]) -> list[list[int]]:
    """The indexes of ``ops`` in groups of at most ``TXN_MAX_OPS`` writes and about ``TXN_MAX_BYTES``."""
    chunks: list[list[int]] = [[]]
    size = 0
    for index, op in enumerate(ops):
        weight = _size(op)
        if chunks[-1] and (len(chunks[-1]) >= TXN_MAX_OPS or size + weight > TXN_MAX_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(index)
        size += weight
    return chunks


def _size(op: WriteOp) -> int:
    """The document bytes a write carries (pymongo keeps an insert's or a replacement's document as ``_doc``)."""
    document = getattr(op, "_doc", None)
    if isinstance(document, RawBSONDocument):
        return len(document.raw)
    return len(bson.encode(document)) if isinstance(document, Mapping) else 0


def _raise_transient(what: str, exc: PyMongoError) -> None:
    """``TransientError`` for a failure a retry may mend (the caller re-raises any other as it is)."""
    if is_transient(exc):
        raise TransientError(f"{what}: {summary(exc)}") from exc
