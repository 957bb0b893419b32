"""Azurite: a real Azure Storage queue service on loopback, and nothing left running afterwards."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient, QueueServiceClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from localdev.standins.azurite import Azurite
from tests.localdev.conftest import is_alive


def test_azurite_should_round_trip_a_base64_message_and_leave_no_process_when_stopped(tmp_path: Path) -> None:
    azurite = Azurite(tmp_path / "azurite").start()
    pid = azurite.pid
    assert pid is not None
    try:
        assert f"QueueEndpoint=http://127.0.0.1:{azurite.port}/devstoreaccount1;" in azurite.connection_string
        sender = QueueClient.from_connection_string(
            azurite.connection_string, "round-trip", message_encode_policy=TextBase64EncodePolicy()
        )
        sender.create_queue()
        sender.send_message('{"stream":"orders"}')

        raw = QueueClient.from_connection_string(azurite.connection_string, "round-trip")
        assert [m.content for m in raw.peek_messages()] == ["eyJzdHJlYW0iOiJvcmRlcnMifQ=="]
        receiver = QueueClient.from_connection_string(
            azurite.connection_string, "round-trip", message_decode_policy=TextBase64DecodePolicy()
        )
        (message,) = receiver.receive_messages()
        assert (message.content, message.dequeue_count) == ('{"stream":"orders"}', 1)
        receiver.delete_message(message)
        assert list(raw.peek_messages()) == []
    finally:
        azurite.stop()
    azurite.stop()  # idempotent

    assert azurite.pid is None
    assert not is_alive(pid)


def test_each_start_should_be_an_empty_account_on_its_own_port(tmp_path: Path) -> None:
    with Azurite(tmp_path / "one") as one, Azurite(tmp_path / "two") as two:
        QueueClient.from_connection_string(one.connection_string, "only-in-one").create_queue()
        assert one.port != two.port
        assert [q.name for q in QueueServiceClient.from_connection_string(one.connection_string).list_queues()] == [
            "only-in-one"
        ]
        assert list(QueueServiceClient.from_connection_string(two.connection_string).list_queues()) == []


def test_start_should_name_the_test_command_when_azurite_is_not_installed(tmp_path: Path) -> None:
    azurite = Azurite(tmp_path / "azurite", node_modules=tmp_path / "no-node-modules")
    with pytest.raises(RuntimeError, match=r"run \./scripts/test\.sh once") as caught:
        azurite.start()
    assert "Node.js 20.6" in str(caught.value)


def test_start_should_fail_with_the_log_tail_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        azurite = Azurite(tmp_path / "azurite", port=squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match="exited with code") as caught:
            azurite.start(timeout=20)
    assert "EADDRINUSE" in str(caught.value)
    assert azurite.pid is None
