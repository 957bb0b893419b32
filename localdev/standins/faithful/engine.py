"""Command dispatch: which handler answers a command, in which transaction, and the failures tests inject.

Everything here is synchronous and not thread-safe: the server calls it with its lock held. ``get_more`` on a
change stream answers ``None`` when there is nothing yet and the caller may still wait (``server.py`` waits on
the event loop and calls again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson.int64 import Int64

from localdev.standins.faithful import admin, crud
from localdev.standins.faithful.aggregation import run_pipeline, stage_name
from localdev.standins.faithful.cursors import (
    FIRST_BATCH,
    Cursors,
    QueryCursor,
    StreamCursor,
    batch_size,
    raw_list,
    stream_batch,
    stream_cursor,
)
from localdev.standins.faithful.errors import (
    BAD_VALUE,
    COMMAND_NOT_FOUND,
    UNRECOGNIZED_PIPELINE_STAGE,
    CommandError,
)
from localdev.standins.faithful.framing import Request
from localdev.standins.faithful.store import Store, Transaction
from localdev.standins.faithful.transactions import Sessions

DEFAULT_AWAIT_SECONDS = 1.0  # how long a getMore on a change stream waits without maxTimeMS (the server's default)
_WRITE_SEQUENCES = {"insert": "documents", "update": "updates", "delete": "deletes"}
# Commands that never run inside a transaction (and must not open or check one); commit and abort end one.
_OUTSIDE_TRANSACTIONS = frozenset(
    {"ping", "buildinfo", "endsessions", "killcursors", "committransaction", "aborttransaction"}
)

Handler = Callable[[Request, Transaction | None], dict[str, Any]]


@dataclass
class Failure:
    """An injected failure for the next ``times`` commands of one name."""

    code: int
    message: str
    times: int
    write_error: bool
    labels: tuple[str, ...]


class Engine:
    def __init__(self, *, replica_set: bool) -> None:
        self.replica_set = replica_set
        self.host = "127.0.0.1:0"
        self.store = Store()
        self.cursors = Cursors()
        self.sessions = Sessions(self.store)
        self.failures: dict[str, Failure] = {}
        store, cursors = self.store, self.cursors
        self._handlers: dict[str, Handler] = {
            "ping": lambda r, t: {"ok": 1.0},
            "buildinfo": lambda r, t: admin.build_info(),
            "endsessions": lambda r, t: self._end_sessions(r),
            "killcursors": lambda r, t: {**cursors.kill(list(r.body.get("cursors") or [])), "ok": 1.0},
            "committransaction": lambda r, t: self.sessions.commit(r.body),
            "aborttransaction": lambda r, t: self.sessions.abort(r.body),
            "insert": lambda r, t: crud.insert(store, t, r),
            "update": lambda r, t: crud.update(store, t, r),
            "delete": lambda r, t: crud.delete(store, t, r),
            "find": lambda r, t: crud.find(store, cursors, r),
            "count": lambda r, t: crud.count(store, r),
            "findandmodify": lambda r, t: crud.find_and_modify(store, t, r),
            "aggregate": lambda r, t: self._aggregate(r),
            "create": lambda r, t: admin.create(store, r),
            "drop": lambda r, t: admin.drop(store, r),
            "dropdatabase": lambda r, t: admin.drop_database(store, r),
            "listcollections": lambda r, t: admin.list_collections(store, r),
            "listdatabases": lambda r, t: admin.list_databases(store, r),
            "createindexes": lambda r, t: admin.create_indexes(store, r),
            "dropindexes": lambda r, t: admin.drop_indexes(store, r),
            "listindexes": lambda r, t: admin.list_indexes(store, r),
        }

    def hello(self, body: dict[str, Any], connection_id: int) -> dict[str, Any]:
        return admin.hello(body, host=self.host, replica_set=self.replica_set, connection_id=connection_id)

    def run(self, request: Request, connection_id: int = 0, *, final: bool = True) -> dict[str, Any] | None:
        """The reply to one command (raises ``CommandError`` for an ``ok: 0`` reply). Injected failures apply to
        every command but the handshake (``hello``/``isMaster``), which the driver's monitor needs.

        ``None`` only for a ``getMore`` on a change stream with nothing new, unless ``final``: the caller waits.
        """
        name = request.command_name
        lowered = name.lower()
        if lowered in ("hello", "ismaster"):
            return self.hello(request.body, connection_id)
        injected = self._injected(name, request)
        if injected is not None:
            return injected
        if lowered == "getmore":
            return self.get_more(request, final=final)
        handler = self._handlers.get(lowered)
        if handler is None:
            raise CommandError(COMMAND_NOT_FOUND, f"no such command: '{name}'")
        txn = None if lowered in _OUTSIDE_TRANSACTIONS else self.sessions.transaction_for(request.body)
        return handler(request, txn)

    def _injected(self, name: str, request: Request) -> dict[str, Any] | None:
        failure = self.failures.get(name)
        if failure is None:
            return None
        failure.times -= 1
        if failure.times <= 0:
            del self.failures[name]
        sequence = _WRITE_SEQUENCES.get(name)
        if not failure.write_error or sequence is None:
            raise CommandError(failure.code, failure.message, labels=failure.labels, name="InjectedError")
        ops = len(request.documents(sequence))
        failed = min(ops, 1) if request.body.get("ordered", True) is not False else ops
        reply: dict[str, Any] = {"n": 0}
        if name == "update":
            reply["nModified"] = 0
        reply["writeErrors"] = [{"index": i, "code": failure.code, "errmsg": failure.message} for i in range(failed)]
        reply["ok"] = 1.0
        return reply

    def _end_sessions(self, request: Request) -> dict[str, Any]:
        lsids = request.body.get("endSessions")
        self.sessions.end(list(lsids) if isinstance(lsids, list) else [])
        return {"ok": 1.0}

    def _aggregate(self, request: Request) -> dict[str, Any]:
        body = request.body
        pipeline = body.get("pipeline")
        if not isinstance(pipeline, list):
            raise CommandError(BAD_VALUE, "'pipeline' must be an array")
        options = body.get("cursor") or {}
        target = body.get("aggregate")
        if pipeline and stage_name(pipeline[0]) == "$changeStream":
            cursor = stream_cursor(self.store, request.db, target, pipeline)
            batch, resume_token = stream_batch(self.store, cursor, batch_size(options.get("batchSize"), FIRST_BATCH))
            cursor_id = self.cursors.open_stream(cursor)
            return {
                "cursor": {
                    "firstBatch": raw_list(batch),
                    "postBatchResumeToken": resume_token,
                    "id": Int64(cursor_id),
                    "ns": cursor.ns,
                },
                "operationTime": self.store.log.operation_time(),
                "ok": 1.0,
            }
        if not isinstance(target, str):
            raise CommandError(UNRECOGNIZED_PIPELINE_STAGE, "only collection aggregations are supported here")
        ns = f"{request.db}.{target}"
        coll = self.store.get(ns)
        docs = [] if coll is None else list(coll.docs.values())
        if pipeline and stage_name(pipeline[0]) == "$match":  # lets an _id filter use the _id lookup
            docs = [doc for _, doc in self.store.select(ns, pipeline[0]["$match"])]
            pipeline = pipeline[1:]
        results = run_pipeline(docs, pipeline)
        size = batch_size(options.get("batchSize"), FIRST_BATCH)
        return {"cursor": self.cursors.first_batch(QueryCursor(ns, results), size), "ok": 1.0}

    def wait_seconds(self, request: Request) -> float | None:
        """How long a ``getMore`` may wait for events: ``None`` unless it reads a change stream."""
        if request.command_name != "getMore":
            return None
        try:
            cursor = self.cursors.get(request.body["getMore"])
        except (CommandError, KeyError, TypeError, ValueError):
            return None
        if not isinstance(cursor, StreamCursor):
            return None
        max_time = request.body.get("maxTimeMS")
        return DEFAULT_AWAIT_SECONDS if not isinstance(max_time, int) or max_time <= 0 else max_time / 1000

    def get_more(self, request: Request, *, final: bool) -> dict[str, Any] | None:
        """The next batch of a cursor; for a change stream with nothing new, ``None`` unless ``final``."""
        body = request.body
        cursor_id = body.get("getMore")
        if not isinstance(cursor_id, int):
            raise CommandError(BAD_VALUE, "getMore needs a cursor id")
        cursor = self.cursors.get(cursor_id)
        size = batch_size(body.get("batchSize"), None)
        if isinstance(cursor, QueryCursor):
            return {"cursor": self.cursors.more(cursor_id, cursor, size), "ok": 1.0}
        try:
            batch, resume_token = stream_batch(self.store, cursor, size)
        except CommandError:
            self.cursors.kill([cursor_id])  # the server closes a cursor whose getMore fails
            raise
        if not batch and not final:
            return None
        return {
            "cursor": {
                "nextBatch": raw_list(batch),
                "postBatchResumeToken": resume_token,
                "id": Int64(cursor_id),
                "ns": cursor.ns,
            },
            "ok": 1.0,
        }
