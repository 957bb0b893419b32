"""A TCP server on its own asyncio event loop, in a daemon thread: the lifecycle the wire stand-ins share.

``start`` binds (port 0: any free port) and returns once listening; ``stop`` closes the listener, cancels every task
on the loop (connections, and accepts still in progress, which may start new connections, hence the loop), lets the
subclass close what it tracks, and ends the thread: nothing is left behind. ``call`` runs a function on the loop
thread and waits for it, so a control has taken effect when it returns. Start, stop and calls are serialised: a call
never meets a loop that is shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Self, TypeVar

from localdev.standins.service import Service

# Starting the listener, flipping a switch and closing connections are quick; a hang here is a bug.
LOOP_CALL_TIMEOUT = 10.0

_T = TypeVar("_T")


class LoopServer(Service):
    """Subclasses say how to serve one connection (``_serve_connection``); by default each runs as a task of its own
    and its writer is closed on stop (a subclass that tracks more overrides ``_accept`` and ``_close_connections``)."""

    thread_name = "loop-server"

    def __init__(self, *, host: str, port: int) -> None:
        self._address = (host, port)
        self._lifecycle = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        # Loop-thread state: asyncio keeps only weak references to tasks; writers are tracked too, because a task
        # cancelled before its first step never runs its own cleanup.
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound once started."""
        return self._address

    @property
    def uri(self) -> str:
        """A direct connection string to this server."""
        return f"mongodb://{self._address[0]}:{self._address[1]}/?directConnection=true"

    def start(self) -> Self:
        """Start listening; a no-op when already running."""
        with self._lifecycle:
            if self._loop is not None:
                return self
            self._prepare()
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._thread = threading.Thread(target=loop.run_forever, name=self.thread_name, daemon=True)
            self._thread.start()
            listening = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._accept, *self._address), loop)
            try:
                server = listening.result(timeout=LOOP_CALL_TIMEOUT)
            except BaseException:
                self.stop()  # e.g. the port is taken: do not leave the loop thread behind
                raise
            self._server = server
            self._address = server.sockets[0].getsockname()[:2]
            self._started()
            return self

    def stop(self) -> None:
        """Close the listener and every connection, then end the loop thread; idempotent."""
        with self._lifecycle:
            loop, self._loop = self._loop, None
            if loop is None:
                return
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=LOOP_CALL_TIMEOUT)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                if self._thread is not None:
                    self._thread.join()
                    self._thread = None
                loop.close()

    def call(self, action: Callable[[], _T]) -> _T:
        """Run ``action`` on the loop thread and wait for it (directly when not running, or on that thread)."""
        with self._lifecycle:
            loop = self._loop
            if loop is None or threading.current_thread() is self._thread:
                return action()

            async def run() -> _T:
                return action()

            return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=LOOP_CALL_TIMEOUT)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection until it ends (discard ``writer`` from ``_writers`` when done); a subclass
        implements this, or overrides ``_accept`` to serve connections its own way."""
        raise NotImplementedError

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio's callback for a new connection (a plain function, so the server owns the task it starts)."""
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._serve_connection(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_connections(self) -> None:
        """Close what is tracked; the tasks are cancelled already."""
        writers = list(self._writers)
        self._writers.clear()
        await close_writers(*writers)

    def _prepare(self) -> None:
        """Before the loop starts (state that binds to a loop, such as an ``asyncio.Event``, made anew)."""

    def _started(self) -> None:
        """Once listening, ``address`` known."""

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        while pending := asyncio.all_tasks() - {current}:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._close_connections()
        if self._server is not None:
            await self._server.wait_closed()  # after the connections: since Python 3.12 it waits for them
            self._server = None


async def close_writers(*writers: asyncio.StreamWriter | None) -> None:
    """Close every writer before waiting on any: a cancellation during the wait must not leave one open."""
    opened = [writer for writer in writers if writer is not None]
    for writer in opened:
        writer.close()
    for writer in opened:
        with contextlib.suppress(OSError):
            await writer.wait_closed()
