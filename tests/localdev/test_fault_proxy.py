"""FaultProxy end to end: real pymongo through the proxy to a real nx-27017, faults injected on command."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo import MongoClient
from pymongo.errors import AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError

from localdev.standins.fault_proxy import FaultProxy
from localdev.standins.nx import NxServer

Client = MongoClient[dict[str, Any]]


@pytest.fixture(scope="module")
def nx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NxServer]:
    with NxServer(tmp_path_factory.mktemp("nx")) as server:
        yield server


@pytest.fixture(scope="module")
def direct(nx: NxServer) -> Iterator[Client]:
    """A client straight to the upstream, past the proxy: what the server really holds."""
    with Client(nx.uri, serverSelectionTimeoutMS=5000) as client:
        yield client


@pytest.fixture
def proxy(nx: NxServer) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=(nx.host, nx.port)) as running:
        yield running


@pytest.fixture
def collection_name() -> str:
    """The nx server is shared by the module, so every test writes to its own collection."""
    return f"c_{uuid.uuid4().hex[:12]}"


def _client(proxy: FaultProxy, **options: Any) -> Client:
    options.setdefault("serverSelectionTimeoutMS", 5000)
    return Client(proxy.uri, **options)


def _wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _proxy_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "fault-proxy"]


def _socket_count() -> int:
    """Sockets this process has open (Linux /proc); an fd closed while we look is not counted."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_proxy_should_pipe_commands_both_ways_when_no_fault_is_set(
    proxy: FaultProxy, direct: Client, collection_name: str
) -> None:
    with _client(proxy) as client:
        client.db[collection_name].insert_many([{"_id": "a", "n": 1}, {"_id": "b", "n": 2}])

        found = list(client.db[collection_name].find({}, sort=[("_id", 1)]))

    assert found == [{"_id": "a", "n": 1}, {"_id": "b", "n": 2}]
    assert direct.db[collection_name].count_documents({}) == 2
    stats = proxy.stats()
    assert stats["connections_opened"] >= 1
    assert stats["bytes_to_upstream"] > 0
    assert stats["bytes_to_client"] > 0
    assert stats["held_bytes"] == stats["delivered_late_bytes"] == stats["resets"] == 0
    assert proxy.address[1] != 0
    assert proxy.uri == f"mongodb://127.0.0.1:{proxy.address[1]}/?directConnection=true"


def test_held_write_should_reach_upstream_after_release_when_client_gave_up_and_closed(
    proxy: FaultProxy, direct: Client, collection_name: str
) -> None:
    with _client(proxy) as client:
        collection = client.db[collection_name]
        client.admin.command("ping")  # a pooled connection, so the insert below is held, not its handshake
        proxy.hold()
        started = time.monotonic()

        with pytest.raises(NetworkTimeout), pymongo.timeout(1):
            collection.insert_one({"_id": "late", "writer": "A"})

        assert time.monotonic() - started < 5
        # pymongo closed the timed-out connection; the proxy notices that while the request is still held.
        _wait_for(lambda: proxy.stats()["orphaned_connections"] >= 1)
        assert direct.db[collection_name].find_one({"_id": "late"}) is None
        assert proxy.held_bytes > 0
        assert proxy.delivered_late_bytes == 0

        proxy.release()

        _wait_for(lambda: direct.db[collection_name].find_one({"_id": "late"}) is not None)
    assert direct.db[collection_name].find_one({"_id": "late"}) == {"_id": "late", "writer": "A"}
    stats = proxy.stats()
    assert stats["delivered_late_bytes"] > 0
    assert stats["delivered_late_bytes"] == stats["held_bytes"]
    assert stats["delivered_orphan_bytes"] > 0  # written for a client that was no longer there
    assert not proxy.holding


@pytest.fixture
def raw_upstream() -> Iterator[socket.socket]:
    """A bare TCP listener as the upstream, for byte-level checks that nx's prompt replies would blur."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        yield listener


def test_replies_should_flow_back_but_requests_wait_in_order_when_holding(raw_upstream: socket.socket) -> None:
    with FaultProxy(upstream=raw_upstream.getsockname()[:2]) as proxy:
        with socket.create_connection(proxy.address, timeout=5) as client:
            server, _ = raw_upstream.accept()
            with server:
                server.settimeout(5)
                client.sendall(b"before;")
                assert server.recv(100) == b"before;"
                proxy.hold()

                for part in (b"one;", b"two;", b"three;"):
                    client.sendall(part)
                server.sendall(b"reply")

                assert client.recv(100) == b"reply"  # the way back is never held
                server.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    server.recv(100)
                server.settimeout(5)

                proxy.release()

                received = b""
                while len(received) < len(b"one;two;three;"):
                    received += server.recv(100)
                assert received == b"one;two;three;"
        assert proxy.stats()["held_bytes"] == proxy.stats()["delivered_late_bytes"] == len(received)


def test_round_trip_should_take_at_least_the_delay_when_delay_is_set(proxy: FaultProxy) -> None:
    with _client(proxy) as client:
        client.admin.command("ping")  # connected and handshaken before the delay starts
        proxy.delay(0.5)
        started = time.monotonic()
        client.admin.command("ping")
        delayed = time.monotonic() - started

        proxy.delay(0)
        started = time.monotonic()
        client.admin.command("ping")
        undelayed = time.monotonic() - started

    assert 0.45 <= delayed < 5
    assert undelayed < 0.4


def test_next_operation_should_raise_auto_reconnect_when_connections_are_reset_and_retries_are_off(
    proxy: FaultProxy, collection_name: str
) -> None:
    # Polling monitor: no streaming heartbeat connection that would notice the reset first and clear the pool,
    # so the reset pooled connection is what the next operation meets.
    with _client(
        proxy, retryReads=False, retryWrites=False, serverMonitoringMode="poll", heartbeatFrequencyMS=60_000
    ) as client:
        collection = client.db[collection_name]
        collection.insert_one({"_id": 1})
        opened = proxy.stats()["connections_opened"]

        assert proxy.reset_connections() >= 1
        with pytest.raises(AutoReconnect, match="reset by peer"):
            collection.find_one({"_id": 1})

        assert collection.find_one({"_id": 1}) == {"_id": 1}
    stats = proxy.stats()
    assert stats["resets"] == 1
    assert stats["connections_reset"] >= 1
    assert stats["connections_opened"] > opened  # the success came over a new connection


def test_next_read_should_succeed_on_a_new_connection_when_connections_are_reset_and_retries_are_on(
    proxy: FaultProxy, collection_name: str
) -> None:
    with _client(proxy) as client:  # pymongo's defaults: retryable reads, streaming monitor
        collection = client.db[collection_name]
        collection.insert_one({"_id": 1})
        opened = proxy.stats()["connections_opened"]

        proxy.reset_connections()

        assert collection.find_one({"_id": 1}) == {"_id": 1}
        assert collection.find_one({"_id": 1}) == {"_id": 1}
    stats = proxy.stats()
    assert stats["resets"] == 1
    assert stats["connections_reset"] >= 2  # the pooled connection and the monitor's
    assert stats["connections_opened"] > opened


def test_new_client_should_fail_server_selection_while_refusing_and_connect_after(proxy: FaultProxy) -> None:
    proxy.refuse(True)
    with _client(proxy, serverSelectionTimeoutMS=500) as client, pytest.raises(ServerSelectionTimeoutError):
        client.admin.command("ping")
    assert proxy.stats()["connections_refused"] >= 1

    proxy.refuse(False)
    with _client(proxy, serverSelectionTimeoutMS=500) as client:
        assert client.admin.command("ping")["ok"] == 1


def test_stop_should_leave_no_thread_connection_or_socket_when_a_held_request_is_pending(nx: NxServer) -> None:
    sockets_before = _socket_count()
    proxy = FaultProxy(upstream=(nx.host, nx.port)).start()
    port = proxy.address[1]
    with _client(proxy) as client:
        client.admin.command("ping")
        proxy.hold()
        with pytest.raises(NetworkTimeout), pymongo.timeout(0.3):
            client.admin.command("ping")
        assert proxy.connections >= 1
        started = time.monotonic()

        proxy.stop()
        proxy.stop()  # idempotent

        assert time.monotonic() - started < 5  # did not wait for a release that never comes
    assert proxy.connections == 0
    assert not _proxy_threads()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert _socket_count() <= sockets_before
    # The port is free again: a new proxy can listen on it.
    with FaultProxy(upstream=(nx.host, nx.port), port=port) as again, _client(again) as client:
        assert again.address == ("127.0.0.1", port)
        assert client.admin.command("ping")["ok"] == 1
    assert not _proxy_threads()
