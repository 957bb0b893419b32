"""The change log: one ordered list of change events for the whole server, each built as raw BSON.

Every committed write appends an event ``{_id: {_data}, operationType, clusterTime, wallTime, fullDocument?, ns,
documentKey, updateDescription?}``; ``fullDocument`` and ``documentKey`` are the exact bytes of the document and
its ``_id`` (like DocumentDB, an update event carries the post-image whatever ``fullDocument`` asks for).

Resume tokens are sequence numbers (``_data`` is upper-case hex of fixed width, so tokens order as strings too).
A stream may resume after any sequence number still covered by the log of every namespace it reads:
``truncate(ns)`` drops that namespace's events and makes every earlier token unresumable (286), as a change log
that rolled over would.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import bson
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from localdev.standins.faithful.errors import CHANGE_STREAM_HISTORY_LOST, CommandError
from shared.raw_bson import RAW

_DATA_PREFIX = "FA"
_DATA_DIGITS = 20


@dataclass(frozen=True)
class Scope:
    """What a change stream reads: one collection, a database (``coll`` None), or everything (both None)."""

    db: str | None = None
    coll: str | None = None

    def covers(self, ns: str) -> bool:
        if self.db is None:
            return True
        if self.coll is None:
            return ns.startswith(self.db + ".")
        return ns == f"{self.db}.{self.coll}"


@dataclass(frozen=True)
class Event:
    seq: int
    ns: str
    cluster_time: Timestamp
    raw: bytes


def token(seq: int) -> RawBSONDocument:
    return RawBSONDocument(bson.encode({"_data": f"{_DATA_PREFIX}{seq:0{_DATA_DIGITS}X}"}), RAW)


def parse_token(value: Any) -> int:
    """The sequence number of a resume token; 286 for anything this server did not hand out."""
    data = value.get("_data") if hasattr(value, "get") else None
    if isinstance(data, str) and data.startswith(_DATA_PREFIX) and len(data) == len(_DATA_PREFIX) + _DATA_DIGITS:
        try:
            return int(data[len(_DATA_PREFIX) :], 16)
        except ValueError:
            pass
    raise CommandError(CHANGE_STREAM_HISTORY_LOST, f"cannot resume: {value!r} is not a resume token of this server")


class ChangeLog:
    """Events of every namespace, oldest first; not thread-safe (the server holds its lock around it)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._events: list[Event] = []
        self._seqs: list[int] = []
        self._seq = 0
        self._last_time = Timestamp(0, 0)
        self._floors: dict[str, int] = {}
        self.listener: Callable[[], None] | None = None

    @property
    def newest(self) -> int:
        """The sequence number of the newest event (0 before the first)."""
        return self._seq

    def append(
        self,
        ns: str,
        operation: str,
        document_key: bytes,
        full_document: bytes | None,
        update_description: tuple[bytes, list[str]] | None = None,
    ) -> Event:
        self._seq += 1
        now = self._clock()
        cluster_time = Timestamp(max(int(now), self._last_time.time), self._seq)
        self._last_time = cluster_time
        db, _, coll = ns.partition(".")
        body: dict[str, Any] = {
            "_id": token(self._seq),
            "operationType": operation,
            "clusterTime": cluster_time,
            "wallTime": DatetimeMS(int(now * 1000)),
        }
        if full_document is not None:
            body["fullDocument"] = RawBSONDocument(full_document, RAW)
        body["ns"] = {"db": db, "coll": coll}
        body["documentKey"] = RawBSONDocument(document_key, RAW)
        if update_description is not None:
            updated, removed = update_description
            body["updateDescription"] = {
                "updatedFields": RawBSONDocument(updated, RAW),
                "removedFields": removed,
                "truncatedArrays": [],
            }
        event = Event(self._seq, ns, cluster_time, bson.encode(body))
        self._events.append(event)
        self._seqs.append(event.seq)
        if self.listener is not None:
            self.listener()
        return event

    def after(self, seq: int, scope: Scope) -> Iterator[Event]:
        """The events of ``scope`` newer than ``seq``, oldest first."""
        for event in self._events[bisect.bisect_right(self._seqs, seq) :]:
            if scope.covers(event.ns):
                yield event

    def check_resumable(self, seq: int, scope: Scope, *, token: bool) -> None:
        """286 unless the stream can go on after ``seq``: for a ``token`` a client passed, it must be newer than
        every truncation of ``scope``; for a position the server holds, no event after it may have been dropped."""
        floor = max((f for ns, f in self._floors.items() if scope.covers(ns)), default=0)
        if seq < (floor if token else floor - 1) or seq > self._seq:
            raise CommandError(
                CHANGE_STREAM_HISTORY_LOST,
                "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
            )

    def position_at(self, cluster_time: Timestamp) -> int:
        """The position just before the first event at or after ``cluster_time`` (``startAtOperationTime``)."""
        for event in self._events:
            if (event.cluster_time.time, event.cluster_time.inc) >= (cluster_time.time, cluster_time.inc):
                return event.seq - 1
        return self._seq

    def operation_time(self) -> Timestamp:
        """A cluster time for replies: that of the newest event, or now."""
        return self._last_time if self._seq else Timestamp(int(self._clock()), 0)

    def truncate(self, ns: str) -> None:
        """Forget ``ns``'s events: no token handed out so far can resume a stream that reads ``ns``."""
        self._events = [event for event in self._events if event.ns != ns]
        self._seqs = [event.seq for event in self._events]
        self._floors[ns] = self._seq + 1
