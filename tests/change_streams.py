"""Change-stream helpers the reader's tests share: a reader with test defaults, and a scripted mock source.

``ScriptedSource`` is a mockupdb server whose change stream answers from scripts (events, an error code, a hang-up,
no post-batch token): what nx-27017 cannot produce.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from bson import Timestamp
from bson.raw_bson import RawBSONDocument
from mockupdb import MockupDB, OpMsg
from pymongo.collection import Collection

from shared.clock import SystemClock
from shared.streams import ChangeStreamReader

CURSOR = 88
T0 = {"_data": "t0"}  # the saved position the scripted readers start from


def plain(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A token or document as a plain dict (a ``RawBSONDocument`` only equals another one with the same bytes)."""
    if value is None:
        return None
    if isinstance(value, RawBSONDocument):
        return bson.decode(value.raw)
    return dict(value)


def ids(events: list[RawBSONDocument]) -> list[Any]:
    return [event["documentKey"]["_id"] for event in events]


def reader_on(collection: Collection[RawBSONDocument], clock: Any = None, **overrides: Any) -> ChangeStreamReader:
    options: dict[str, Any] = {
        "resume_token": None,
        "start_after": False,
        "pipeline": [],
        "full_document": "updateLookup",
        "poll_interval": 0.2,
        "clock": clock or SystemClock(),
        **overrides,
    }
    return ChangeStreamReader(collection, **options)


def drain(reader: ChangeStreamReader, max_events: int = 100) -> list[RawBSONDocument]:
    """Every event up to the first empty batch."""
    events: list[RawBSONDocument] = []
    while batch := reader.next_batch(max_events).events:
        events.extend(batch)
    return events


@dataclass
class Answer:
    """How the scripted server answers one ``aggregate`` or ``getMore``."""

    events: list[dict[str, Any]] = field(default_factory=list)
    post_batch: str | None = "pb"  # None: no post-batch token (servers before 4.0.7 send none)
    code: int | None = None  # answer with this error instead
    message: str = "scripted failure"
    hangup: bool = False  # close the connection instead


def change(token: str, kind: str = "insert", _id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"_id": {"_data": token}, "operationType": kind, "clusterTime": Timestamp(1_800_000_000, 1)}
    if _id is not None:
        event |= {"documentKey": {"_id": _id}, "fullDocument": {"_id": _id}, "ns": {"db": "shop", "coll": "orders"}}
    return event


class ScriptedSource:
    """A mock server whose change stream answers from scripts: one ``Answer`` per ``aggregate`` / ``getMore``, then
    the ``*_default`` answer for every later one."""

    def __init__(self) -> None:
        self.server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
        self.reset()

    def reset(self) -> None:
        self.aggregates: list[Answer] = []
        self.get_mores: list[Answer] = []
        self.aggregate_default = Answer()
        self.get_more_default = Answer()
        self.opened: list[dict[str, Any]] = []  # the $changeStream stage of each aggregate received

    def start(self) -> ScriptedSource:
        self.server.autoresponds(OpMsg("aggregate", "orders"), self._aggregate)
        self.server.autoresponds(OpMsg("getMore", CURSOR), self._get_more)
        self.server.autoresponds(OpMsg("killCursors", "orders"), cursorsKilled=[CURSOR])
        self.server.autoresponds("endSessions")
        self.server.run()
        return self

    @property
    def uri(self) -> str:
        return f"{self.server.uri}/?directConnection=true"

    def _aggregate(self, request: Any) -> Any:
        self.opened.append(dict(request.doc["pipeline"][0]["$changeStream"]))
        answer = self.aggregates.pop(0) if self.aggregates else self.aggregate_default
        return self._answer(request, answer, "firstBatch")

    def _get_more(self, request: Any) -> Any:
        answer = self.get_mores.pop(0) if self.get_mores else self.get_more_default
        return self._answer(request, answer, "nextBatch")

    @staticmethod
    def _answer(request: Any, answer: Answer, key: str) -> Any:
        if answer.hangup:
            return request.hangup()
        if answer.code is not None:
            return request.command_err(code=answer.code, errmsg=answer.message)
        cursor: dict[str, Any] = {"id": CURSOR, "ns": "shop.orders", key: answer.events}
        if answer.post_batch is not None:
            cursor["postBatchResumeToken"] = {"_data": answer.post_batch}
        return request.ok(cursor=cursor, operationTime=Timestamp(1_800_000_000, 1))
