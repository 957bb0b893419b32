"""NxServer: a real nx-27017 child process per data directory, and nothing left running afterwards."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pymongo import MongoClient

from localdev.standins.nx import NxServer
from tests.localdev.conftest import is_alive


def _client(server: NxServer) -> MongoClient[dict[str, object]]:
    return MongoClient(server.uri, serverSelectionTimeoutMS=5000)


def test_nx_server_should_keep_same_named_collections_apart_when_databases_differ(tmp_path: Path) -> None:
    with NxServer(tmp_path / "nx") as server, _client(server) as client:
        client.a.orders.insert_one({"_id": "o1", "db": "a"})
        client.b.orders.insert_one({"_id": "o1", "db": "b"})

        assert client.a.orders.find_one({"_id": "o1"}) == {"_id": "o1", "db": "a"}
        assert client.b.orders.find_one({"_id": "o1"}) == {"_id": "o1", "db": "b"}


def test_nx_server_should_leave_no_process_or_pid_file_when_stopped(tmp_path: Path) -> None:
    server = NxServer(tmp_path / "nx").start()
    pid = server.pid
    assert pid is not None
    assert is_alive(pid)
    assert server.pid_file.read_text().strip() == str(pid)

    server.stop()
    server.stop()  # idempotent

    assert server.pid is None
    assert not is_alive(pid)
    assert not server.pid_file.exists()


def test_nx_servers_should_run_side_by_side_when_each_has_its_own_directory(tmp_path: Path) -> None:
    with NxServer(tmp_path / "one") as one, NxServer(tmp_path / "two") as two:
        with _client(one) as client_one, _client(two) as client_two:
            client_one.db.items.insert_one({"_id": "only-in-one"})

            assert client_two.db.items.count_documents({}) == 0
            assert client_one.db.items.count_documents({}) == 1
        assert one.port != two.port


def test_nx_server_should_keep_data_and_port_when_killed_and_restarted(tmp_path: Path) -> None:
    with NxServer(tmp_path / "nx") as server:
        port, first_pid = server.port, server.pid
        with _client(server) as client:
            client.db.items.insert_one({"_id": "survivor", "n": 1})

        server.kill()
        assert first_pid is not None
        assert not is_alive(first_pid)
        server.restart()

        assert server.port == port
        assert server.pid not in (None, first_pid)
        with _client(server) as client:
            assert client.db.items.find_one({"_id": "survivor"}) == {"_id": "survivor", "n": 1}


def test_nx_server_should_raise_with_log_tail_when_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = NxServer(tmp_path / "nx", port=squatter.getsockname()[1])

        with pytest.raises(RuntimeError, match=r"(?s)exited with code.*address already in use"):
            server.start(timeout=10)

    assert server.pid is None
