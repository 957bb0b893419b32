"""The listener: connections, framing, the wait of a change stream's ``getMore``, and the test hooks.

The server runs its own event loop in a daemon thread (as ``oidc_proxy`` does). Commands run one at a time under
one lock, which the test hooks take too, so a test may call them from its own thread at any moment. A connection
whose command fails gets an ``ok: 0`` reply and stays open; only bytes that cannot be framed end it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Iterable
from typing import Any

from localdev.standins import wire
from localdev.standins.faithful.changelog import Scope
from localdev.standins.faithful.engine import Engine, Failure
from localdev.standins.faithful.errors import (
    FAILED_TO_PARSE,
    INTERNAL_ERROR,
    UNSUPPORTED_OP_QUERY_COMMAND,
    CommandError,
)
from localdev.standins.faithful.framing import Request, decode_request
from localdev.standins.loop_server import LoopServer

_log = logging.getLogger(__name__)


class FaithfulServer(LoopServer):
    """A MongoDB wire server that stores every document as the exact bytes it received (see the package doc).

    ``replica_set=True`` presents a one-member replica set ``rs0`` (sessions, transactions, change streams);
    ``False`` a standalone.
    """

    thread_name = "faithful-mongo"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, replica_set: bool = True) -> None:
        super().__init__(host=host, port=port)
        self._engine = Engine(replica_set=replica_set)
        self._lock = threading.Lock()
        self._commands: list[str] = []
        self._connection_ids = itertools.count(1)
        self._changed = asyncio.Event()  # set (and replaced) whenever the change log grows

    # --- test hooks (any thread) ---------------------------------------------------------------------------

    @property
    def commands(self) -> list[str]:
        """The names of the commands received, in order (a copy)."""
        with self._lock:
            return list(self._commands)

    def fail(
        self,
        command: str,
        code: int,
        message: str,
        times: int = 1,
        *,
        write_error: bool = False,
        error_labels: Iterable[str] = (),
    ) -> None:
        """Fail the next ``times`` ``command`` requests: with a command error, or (``write_error``, for insert,
        update and delete) with a writeError on every operation (the first only when ordered). Replaces a
        pending failure of the same command."""
        with self._lock:
            self._engine.failures[command] = Failure(code, message, times, write_error, tuple(error_labels))

    def refuse_field(self, ns: str, field: str) -> None:
        """Writes to ``ns`` of a document with the top-level ``field`` fail with 121 (a validator's refusal)."""
        with self._lock:
            self._engine.store.refused.setdefault(ns, set()).add(field)

    def documents(self, ns: str) -> list[bytes]:
        """The exact stored bytes of ``ns``'s documents, in insertion order."""
        with self._lock:
            coll = self._engine.store.get(ns)
            return [] if coll is None else list(coll.docs.values())

    def events(self, ns: str) -> list[bytes]:
        """The raw change events of ``ns`` still in the log, oldest first."""
        with self._lock:
            return [event.raw for event in self._engine.store.log.after(0, _scope_of(ns))]

    def truncate_log(self, ns: str) -> None:
        """Drop ``ns``'s change events: resuming a stream of ``ns`` from an earlier token then fails with 286."""
        with self._lock:
            self._engine.store.log.truncate(ns)

    # --- lifecycle -----------------------------------------------------------------------------------------

    def _started(self) -> None:
        with self._lock:
            self._engine.host = f"{self.address[0]}:{self.address[1]}"
            self._engine.store.log.listener = self._notify
        _log.debug("faithful MongoDB server on %s:%d", *self.address)

    def _notify(self) -> None:
        """Called by the change log on append (in the loop thread, lock held): wake the waiting getMores."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- connections ---------------------------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection_id = next(self._connection_ids)
        try:
            while True:
                message = await wire.read_message(reader)
                reply = await self._reply(message, connection_id)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up
        except (OSError, wire.WireError) as exc:
            _log.warning("faithful server closes connection %d: %s", connection_id, exc)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _reply(self, message: wire.Message, connection_id: int) -> bytes | None:
        """The framed answer to one message; ``None`` when the client asked for none (moreToCome)."""
        if message.op_code == wire.OP_QUERY:
            return self._reply_op_query(message, connection_id)
        if message.op_code != wire.OP_MSG:
            raise wire.WireError(f"unsupported opcode {message.op_code}")
        flags = 0
        try:
            request = decode_request(message)
        except wire.WireError as exc:
            answer = CommandError(FAILED_TO_PARSE, str(exc)).reply()
        else:
            flags = request.flags
            answer = await self._answer(request, connection_id)
        if flags & wire.MORE_TO_COME:
            return None
        return wire.encode_op_msg(answer, request_id=wire.next_request_id(), response_to=message.request_id)

    def _reply_op_query(self, message: wire.Message, connection_id: int) -> bytes:
        try:
            query = wire.decode_op_query(message)
        except wire.WireError as exc:
            answer = CommandError(FAILED_TO_PARSE, str(exc)).reply()
        else:
            with self._lock:
                self._commands.append(query.command_name)
                if query.namespace.endswith(".$cmd") and query.command_name.lower() in ("hello", "ismaster"):
                    answer = self._engine.hello(query.query, connection_id)
                else:
                    answer = CommandError(UNSUPPORTED_OP_QUERY_COMMAND, "OP_QUERY is for the handshake only").reply()
        return wire.encode_op_reply(answer, request_id=wire.next_request_id(), response_to=message.request_id)

    async def _answer(self, request: Request, connection_id: int) -> dict[str, Any]:
        try:
            with self._lock:
                self._commands.append(request.command_name)
                wait = self._engine.wait_seconds(request)
                reply = self._engine.run(request, connection_id, final=wait is None)
            if reply is None:
                reply = await self._await_events(request, connection_id, wait or 0.0)
            return reply
        except CommandError as exc:
            _log.debug("faithful server: %s failed with %d: %s", request.command_name, exc.code, exc.message)
            return exc.reply()
        except Exception as exc:  # noqa: BLE001 - one failing command must not end the connection or the server
            _log.exception("faithful server: %s failed", request.command_name)
            return CommandError(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}").reply()

    async def _await_events(self, request: Request, connection_id: int, wait: float) -> dict[str, Any]:
        """A change stream's ``getMore``: wait (without polling) until events arrive or ``wait`` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (remaining := deadline - loop.time()) > 0:
            changed = self._changed  # no await since the empty answer: no event can have slipped in between
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                break
            with self._lock:
                reply = self._engine.run(request, connection_id, final=False)
            if reply is not None:
                return reply
        with self._lock:
            final = self._engine.run(request, connection_id, final=True)
        if final is None:  # final=True always answers
            raise CommandError(INTERNAL_ERROR, "getMore gave no answer")
        return final


def _scope_of(ns: str) -> Scope:
    db, _, coll = ns.partition(".")
    return Scope(db, coll)
