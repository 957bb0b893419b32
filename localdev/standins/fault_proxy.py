"""A TCP proxy that misbehaves on command: the network between a MongoDB client and its server, with faults.

``FaultProxy`` pipes bytes between clients (pymongo) and one upstream server (nx-27017 or another stand-in)
without looking at them, until a test or a chaos soak tells it to:

- ``hold()`` / ``release()``: a network path that holds packets and delivers them late. Bytes from clients are
  kept back per connection (replies already on their way still flow back) and forwarded, in order, on release.
  A client that gives up meanwhile and closes its connection does not take its held request with it: the
  upstream side stays open until the held bytes are written and a short drain period has passed, so the server
  still executes the request, late, exactly as a stalled worker's delayed write would arrive.
- ``delay(seconds)``: every client->upstream chunk is forwarded this much after it arrived (order is kept).
- ``reset_connections()``: every open connection is aborted on both sides at once (RST), like a network reset;
  whatever was held or delayed on them is lost, as it would be.
- ``refuse(True)``: new client connections are closed as soon as they are accepted (an outage).

Counters (``stats()``) say what happened. The proxy runs its own event loop in a daemon thread; every control
is thread-safe and has taken effect when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading

from localdev.standins.loop_server import LoopServer, close_writers

__all__ = ["FaultProxy"]

_log = logging.getLogger(__name__)


_CHUNK_SIZE = 64 * 1024
# How long the upstream side of a connection whose client has gone stays open after a late delivery, so that
# the server reads and executes the request before it sees the connection close.
_DRAIN_SECONDS = 1.0
# SO_LINGER on, timeout 0: close() sends RST instead of FIN, as a reset network path would.
_LINGER_RESET = struct.pack("ii", 1, 0)

_COUNTERS = (
    "connections_opened",  # accepted and connected upstream
    "connections_refused",  # closed at once because refuse() was set
    "upstream_failures",  # accepted, but the upstream did not accept
    "bytes_to_upstream",  # client->upstream bytes written to the upstream
    "bytes_to_client",  # upstream->client bytes written to a client
    "bytes_discarded",  # upstream->client bytes whose client had already gone
    "held_bytes",  # client->upstream bytes that met a hold
    "delivered_late_bytes",  # held bytes written to the upstream after release()
    "delivered_orphan_bytes",  # held bytes delivered after their client had closed its connection
    "orphaned_connections",  # clients that closed while some of their bytes were still held or delayed
    "resets",  # reset_connections() calls
    "connections_reset",  # connections aborted by those calls
)


class _Link:
    """One client connection and its upstream counterpart (loop-thread state)."""

    def __init__(self, client_writer: asyncio.StreamWriter) -> None:
        self.client_writer = client_writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        # Client->upstream chunks with the loop time they are due and whether they met a hold on arrival; None
        # once the client has closed its side.
        self.queue: asyncio.Queue[tuple[float, bytes, bool] | None] = asyncio.Queue()
        self.pending_bytes = 0  # read from the client, not yet written upstream
        self.client_gone = False
        self.last_late_delivery: float | None = None

    def abort(self) -> None:
        """Drop both sides at once with RST, discarding anything not yet sent."""
        for writer in (self.client_writer, self.upstream_writer):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()


class FaultProxy(LoopServer):
    """Listens on ``host:port`` (0: any free port) and pipes every connection to ``upstream``, faults on command."""

    thread_name = "fault-proxy"

    def __init__(self, *, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.upstream = upstream
        self._lock = threading.Lock()  # counters
        self._stats = dict.fromkeys(_COUNTERS, 0)
        self._open = 0
        # Switches: written only on the loop thread while it runs (see call), read there without a lock.
        self._released = asyncio.Event()  # set: forwarding; clear: holding
        self._released.set()
        self._delay = 0.0
        self._refusing = False
        # Loop-thread state, tracked from the moment a connection is accepted so that nothing escapes a reset or
        # stop; it also holds each connection's task (asyncio keeps only weak references to tasks).
        self._links: set[_Link] = set()

    @property
    def connections(self) -> int:
        """Connections the proxy holds open (one whose client gave up counts until its late delivery drained)."""
        with self._lock:
            return self._open

    @property
    def held_bytes(self) -> int:
        """Client->upstream bytes that met a hold, in total."""
        return self.stats()["held_bytes"]

    @property
    def delivered_late_bytes(self) -> int:
        """Held bytes written to the upstream after ``release()``, in total."""
        return self.stats()["delivered_late_bytes"]

    @property
    def holding(self) -> bool:
        """Whether client->upstream bytes are being held now."""
        return not self._released.is_set()

    def stats(self) -> dict[str, int]:
        """A copy of the counters (see ``_COUNTERS``) plus ``connections`` open now."""
        with self._lock:
            return {**self._stats, "connections": self._open}

    # -- controls (any thread) ---------------------------------------------------------------------------------

    def hold(self) -> None:
        """From now on keep client->upstream bytes back (per connection, in order) until ``release()``."""
        self.call(self._released.clear)
        _log.info("fault proxy %s:%d: holding client->upstream bytes", *self._address)

    def release(self) -> None:
        """Forward everything held, in order, and stop holding (delivery continues in the background)."""
        self.call(self._released.set)
        _log.info("fault proxy %s:%d: released", *self._address)

    def delay(self, seconds: float) -> None:
        """Forward each client->upstream chunk ``seconds`` after it arrives (0: at once); applies to new chunks."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds}")

        def set_delay() -> None:
            self._delay = float(seconds)

        self.call(set_delay)
        _log.info("fault proxy %s:%d: delay %.3fs", *self._address, seconds)

    def refuse(self, flag: bool) -> None:
        """While ``flag`` is set, close every new client connection as soon as it is accepted."""

        def set_refusing() -> None:
            self._refusing = flag

        self.call(set_refusing)
        _log.info("fault proxy %s:%d: refusing new connections: %s", *self._address, flag)

    def reset_connections(self) -> int:
        """Abort every open connection, both sides, at once; returns how many there were."""
        count = self.call(self._reset_all)
        _log.info("fault proxy %s:%d: reset %d connection(s)", *self._address, count)
        return count

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        # An Event binds to the first loop that waits on it: a restarted proxy needs a fresh one (same state).
        released = asyncio.Event()
        if self._released.is_set():
            released.set()
        self._released = released

    def _started(self) -> None:
        _log.debug("fault proxy on %s:%d -> %s:%d", *self.address, *self.upstream)

    async def _close_connections(self) -> None:
        # Links left here belong to tasks cancelled before their first step, which never ran their own cleanup.
        links = list(self._links)
        self._links.clear()
        with self._lock:
            self._open -= len(links)
        await close_writers(*(writer for link in links for writer in (link.client_writer, link.upstream_writer)))

    # -- loop thread -------------------------------------------------------------------------------------------

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._stats[name] += amount

    def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.abort()
            if link.task is not None:
                link.task.cancel()
        with self._lock:
            self._stats["resets"] += 1
            self._stats["connections_reset"] += len(links)
        return len(links)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio's callback for a new client connection (a plain function, so the proxy owns the task)."""
        if self._refusing:
            writer.transport.abort()
            self._count("connections_refused")
            _log.debug("fault proxy refused a connection")
            return
        link = _Link(writer)
        self._links.add(link)
        with self._lock:
            self._open += 1
        link.task = asyncio.get_running_loop().create_task(self._serve(link, reader))

    async def _serve(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        """Pipe one connection; it ends when the upstream side closes (the forwarder closes it once the client
        has gone and everything it sent, held bytes included, has been delivered and drained)."""
        pumps: list[asyncio.Task[None]] = []
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            except OSError as exc:
                self._count("upstream_failures")
                _log.warning("fault proxy cannot reach upstream %s:%d: %s", *self.upstream, exc)
                return
            link.upstream_writer = upstream_writer
            self._count("connections_opened")
            loop = asyncio.get_running_loop()
            pumps = [
                loop.create_task(self._read_client(link, client_reader)),
                loop.create_task(self._forward(link, upstream_writer)),
            ]
            await self._pump_down(link, upstream_reader)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._links.discard(link)
            with self._lock:
                self._open -= 1
            await close_writers(link.client_writer, link.upstream_writer)

    async def _read_client(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """Client -> queue, each chunk stamped with the time it is due upstream."""
        loop = asyncio.get_running_loop()
        try:
            while chunk := await reader.read(_CHUNK_SIZE):
                link.pending_bytes += len(chunk)
                held = not self._released.is_set()
                if held:
                    self._count("held_bytes", len(chunk))
                link.queue.put_nowait((loop.time() + self._delay, chunk, held))
        except ConnectionError:
            pass  # the client hung up abruptly: same as a close
        if link.pending_bytes:
            self._count("orphaned_connections")
        link.client_gone = True
        link.queue.put_nowait(None)

    async def _forward(self, link: _Link, upstream: asyncio.StreamWriter) -> None:
        """Queue -> upstream, honouring delay and hold; closes the upstream side once the client has gone."""
        loop = asyncio.get_running_loop()
        try:
            while (item := await link.queue.get()) is not None:
                due, chunk, held = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not self._released.is_set():
                    if not held:  # the hold began after it arrived
                        held = True
                        self._count("held_bytes", len(chunk))
                    await self._released.wait()
                upstream.write(chunk)
                await upstream.drain()
                link.pending_bytes -= len(chunk)
                self._count("bytes_to_upstream", len(chunk))
                if held:
                    link.last_late_delivery = loop.time()
                    self._count("delivered_late_bytes", len(chunk))
                    if link.client_gone:
                        self._count("delivered_orphan_bytes", len(chunk))
            if link.last_late_delivery is not None:
                # Give the server time to read and execute what arrived late before it sees the close.
                await asyncio.sleep(max(0.0, link.last_late_delivery + _DRAIN_SECONDS - loop.time()))
        except ConnectionError:
            pass  # the upstream went away: _pump_down sees it and ends the connection
        finally:
            upstream.close()

    async def _pump_down(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """Upstream -> client, never held; replies for a client that has gone are read and discarded."""
        client = link.client_writer
        try:
            while chunk := await reader.read(_CHUNK_SIZE):
                if link.client_gone or client.is_closing():
                    self._count("bytes_discarded", len(chunk))
                    continue
                try:
                    client.write(chunk)
                    await client.drain()
                except ConnectionError:
                    link.client_gone = True
                    self._count("bytes_discarded", len(chunk))
                else:
                    self._count("bytes_to_client", len(chunk))
        except ConnectionError:
            pass  # the upstream hung up abruptly: end the connection as if it had closed
