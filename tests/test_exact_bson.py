"""Every BSON value exact on every path, over the wire with real pymongo, against a server that keeps BSON as bytes.

nx-27017 refuses Decimal128, Timestamp, Regex and DBRef and breaks on dates outside Python's range, so source,
estuary and checkpoint store are a ``FaithfulServer`` (``localdev/standins/faithful``): it stores every document as
the bytes it received and builds change events from them, so a byte that changed on the way is a byte that the
replicator changed. Covered: streaming apply with and without a transform, the initial-sync copy, verify, dead
letters (park, list, replay), and the command line's rendering of exotic ``_id`` values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from localdev.standins.faithful import FaithfulServer
from localdev.standins.faithful.samples import COMPOUND_ID, exotic_document
from shared.auth.mongo_client import ClientFactory
from shared.cli import main
from shared.clock import SystemClock
from shared.config import ReplicatorConfig
from shared.raw_bson import RAW
from shared.services import Services, build_services
from shared.verify import VerifyOptions, verify_stream
from tests.conftest import Metrics, replay_stream, write_config

SOURCE, ESTUARY = "shop.orders", "replica.orders"
IDS: list[Any] = [COMPOUND_ID, Decimal128("7.25"), DatetimeMS(2**62), "plain"]


@pytest.fixture(scope="module")
def server() -> Iterator[FaithfulServer]:
    with FaithfulServer() as started:
        yield started


class World:
    """Source, estuary and checkpoints on one faithful server, in databases fresh for each test."""

    def __init__(self, server: FaithfulServer, prefix: str) -> None:
        self.server, self.prefix = server, prefix
        self.client: MongoClient[RawBSONDocument] = MongoClient(server.uri, document_class=RawBSONDocument)
        self.source = self.client.get_database(f"{prefix}_shop", codec_options=RAW).orders
        self.estuary = self.client.get_database(f"{prefix}_replica", codec_options=RAW).orders
        self.factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 5000})

    def config(self, **stream: Any) -> ReplicatorConfig:
        def endpoint(db: str) -> dict[str, Any]:
            return {"connection_uri": self.server.uri, "database": f"{self.prefix}_{db}", "collection": "orders"}

        data = {
            "checkpoints": {"connection_uri": self.server.uri, "database": f"{self.prefix}_rep"},
            "streams": [
                {
                    "name": "orders",
                    "source": endpoint("shop"),
                    "estuary": endpoint("replica"),
                    "poll_interval": 0.1,
                    "idle_timeout": 0.5,
                    **stream,
                }
            ],
        }
        return ReplicatorConfig.model_validate(data)

    def services(self, **stream: Any) -> Services:
        return build_services(self.config(**stream), factory=self.factory, metrics=Metrics().replication)

    def source_bytes(self) -> dict[bytes, bytes]:
        return _by_id(self.server.documents(f"{self.prefix}_shop.orders"))

    def estuary_bytes(self) -> dict[bytes, bytes]:
        return _by_id(self.server.documents(f"{self.prefix}_replica.orders"))


@pytest.fixture
def world(server: FaithfulServer, request: pytest.FixtureRequest) -> Iterator[World]:
    made = World(server, f"x{abs(hash(request.node.nodeid)) % 10**8}")
    yield made
    made.factory.close()
    made.client.close()


def _by_id(documents: list[bytes]) -> dict[bytes, bytes]:
    return {bson.encode({"_id": RawBSONDocument(raw, RAW)["_id"]}): raw for raw in documents}


def insert_exotics(world: World) -> None:
    world.source.insert_many([RawBSONDocument(exotic_document(doc_id), RAW) for doc_id in IDS])


def same_value(a: Any, b: Any) -> bool:
    """Type and value exact: the BSON bytes of each value, alone."""
    return bson.encode({"v": a}) == bson.encode({"v": b})


# ---------------------------------------------------------------------------------------------- streaming


def test_streaming_should_write_every_value_byte_identical_without_a_transform(world):
    services = world.services()
    assert services.replicator.run_pass("orders").outcome == "idle"  # the start position
    insert_exotics(world)
    result = services.replicator.run_pass("orders")
    assert (result.events, result.applied, result.dead_lettered) == (len(IDS), len(IDS), 0)
    assert world.estuary_bytes() == world.source_bytes()  # byte for byte, field order included


def test_streaming_with_a_transform_should_keep_every_other_field_exact_and_in_place(world):
    services = world.services(transform={"rename": {"zeta": "omega"}, "drop": ["alpha"]})
    services.replicator.run_pass("orders")
    insert_exotics(world)
    assert services.replicator.run_pass("orders").applied == len(IDS)
    estuary = world.estuary_bytes()
    for key, raw in world.source_bytes().items():
        source = list(RawBSONDocument(raw, RAW).items())
        copied = list(RawBSONDocument(estuary[key], RAW).items())
        expected = [("omega" if name == "zeta" else name, value) for name, value in source if name != "alpha"]
        assert [name for name, _ in copied] == [name for name, _ in expected]
        assert all(same_value(a, b) for (_, a), (_, b) in zip(copied, expected, strict=True))


def test_a_top_level_date_outside_pythons_range_should_not_stop_the_stream(world):
    """The issue's reproduction: this event used to fail every pass, for ever, with InvalidBSON."""
    services = world.services()
    services.replicator.run_pass("orders")
    world.source.insert_many(
        [
            RawBSONDocument(bson.encode({"_id": "sentinel", "valid_until": DatetimeMS(2**62)}), RAW),
            RawBSONDocument(bson.encode({"_id": "after"}), RAW),
        ]
    )
    result = services.replicator.run_pass("orders")
    assert (result.outcome, result.applied, result.dead_lettered) == ("idle", 2, 0)
    assert world.estuary_bytes() == world.source_bytes()


def test_a_document_whose_write_cannot_be_built_should_be_parked_and_the_batch_should_go_on(world):
    services = world.services(transform={"drop": ["secret"]})  # the transform must decode the top level
    services.replicator.run_pass("orders")
    bad = bytearray(bson.encode({"_id": "bad", "name": "xx"}))
    bad[bad.index(b"xx")] = 0xFF  # invalid UTF-8: the server keeps it, Python cannot decode it
    good = [RawBSONDocument(bson.encode({"_id": name}), RAW) for name in ("good-1", "good-2")]
    world.source.insert_many([good[0], RawBSONDocument(bytes(bad), RAW), good[1]])
    result = services.replicator.run_pass("orders")
    assert (result.outcome, result.applied, result.dead_lettered) == ("idle", 2, 1)
    assert sorted(doc["_id"] for doc in world.estuary.find()) == ["good-1", "good-2"]
    (parked,) = services.dead_letters.newest("orders", 10)
    assert dict(parked.document_key) == {"_id": "bad"}
    assert "could not be turned into a write" in parked.error_message
    record = world.client[f"{world.prefix}_rep"].dead_letters.find_one({})
    assert record is not None
    assert bytes(bad) in bytes(record["event"])  # the refused document's exact bytes, kept


def test_a_document_near_16_mb_should_replicate_byte_identical(world):
    services = world.services()
    services.replicator.run_pass("orders")
    big = bson.encode({"_id": "big", "pad": "x" * (16 * 1024 * 1024 - 4096), "when": DatetimeMS(-(2**62))})
    world.source.insert_one(RawBSONDocument(big, RAW))
    assert services.replicator.run_pass("orders").applied == 1
    assert world.estuary_bytes() == world.source_bytes()


# ---------------------------------------------------------------------------------------------- copy and verify


def test_the_initial_sync_copy_should_be_byte_identical_and_verify_should_find_it_so(world):
    # A copy goes in _id ranges, so the _ids are of one type (compound ones, with a Decimal128 inside).
    world.source.insert_many(
        [RawBSONDocument(exotic_document({"b": i, "a": Decimal128(f"{i}.5")}), RAW) for i in range(3)]
    )
    world.source.insert_one(RawBSONDocument(exotic_document({"b": 9, "a": "plain"}), RAW))
    services = world.services(initial_sync=True)
    assert services.replicator.run_pass("orders").copied == len(IDS)
    assert world.estuary_bytes() == world.source_bytes()
    stream = services.config.stream("orders")
    source, estuary = services.clients.collection(stream.source), services.clients.collection(stream.estuary)
    report = verify_stream(stream, source, estuary, options=VerifyOptions(recheck_delay=0), clock=SystemClock())
    assert report.ok, report.to_dict()
    assert report.checked == len(IDS)
    plain = {"b": 9, "a": "plain"}
    world.estuary.update_one({"_id": plain}, {"$set": {"zeta": Int64(1)}})  # one value's type differs (int64)
    changed = verify_stream(stream, source, estuary, options=VerifyOptions(recheck_delay=0), clock=SystemClock())
    assert (changed.ok, changed.differing.examples) == (False, ['{"b": 9, "a": "plain"}'])


def test_verify_on_the_command_line_should_render_exotic_ids_without_a_traceback(world, tmp_path, capsys):
    insert_exotics(world)
    path = write_config(tmp_path, world.config().model_dump(mode="json"))
    assert main(["verify", "--config", str(path), "--json", "--recheck-delay", "0"]) == 1  # the estuary is empty
    report = json.loads(capsys.readouterr().out)
    (stream,) = report["streams"]
    assert stream["missing"]["total"] == len(IDS)
    assert '{"$numberDecimal": "7.25"}' in stream["missing"]["examples"]


# ---------------------------------------------------------------------------------------------- dead letters


def test_dead_letters_should_park_list_and_replay_exotic_documents_exactly(world, tmp_path, capsys):
    services = world.services()
    services.replicator.run_pass("orders")
    world.estuary.create_index("email", unique=True)
    world.estuary.insert_one(RawBSONDocument(bson.encode({"_id": "holder", "email": "taken"}), RAW))
    world.source.insert_one(RawBSONDocument(exotic_document(COMPOUND_ID, email="taken"), RAW))
    assert services.replicator.run_pass("orders").dead_lettered == 1
    record = world.client[f"{world.prefix}_rep"].dead_letters.find_one({})
    assert record is not None
    event = RawBSONDocument(bytes(record["event"]), RAW)
    key = bson.encode({"_id": COMPOUND_ID})
    assert event["fullDocument"].raw == world.source_bytes()[key]  # parked exactly
    path = write_config(tmp_path, world.config().model_dump(mode="json"))
    assert main(["dead-letters", "--config", str(path), "list", "--json"]) == 0
    (listing,) = json.loads(capsys.readouterr().out)
    assert listing["newest"][0]["document_key"] == {"_id": {"b": 1, "a": {"$numberDecimal": "1.5"}}}
    world.estuary.drop_index("email_1")
    result = replay_stream(services)
    assert (result.replayed, result.remaining) == (1, 0)
    assert world.estuary_bytes()[key] == world.source_bytes()[key]


def test_an_event_too_large_to_keep_should_be_parked_without_its_body(world):
    services = world.services()
    services.replicator.run_pass("orders")
    world.estuary.create_index("email", unique=True)
    world.estuary.insert_one(RawBSONDocument(bson.encode({"_id": "holder", "email": "taken"}), RAW))
    # 200 bytes under 16 MiB: the document is legal, its change event and its dead letter are not (over 16 MiB).
    pad = 16 * 1024 * 1024 - 200 - len(bson.encode({"_id": "big", "email": "taken", "pad": ""}))
    big = bson.encode({"_id": "big", "email": "taken", "pad": "x" * pad})
    world.source.insert_one(RawBSONDocument(big, RAW))
    result = services.replicator.run_pass("orders")
    assert (result.outcome, result.dead_lettered) == ("idle", 1)  # the stream goes on
    record = world.client[f"{world.prefix}_rep"].dead_letters.find_one({})
    assert record is not None
    assert "event" not in record
    assert "bytes" in record["event_omitted"]
    assert record["document_key_text"] == '{"_id": "big"}'


def test_every_value_should_survive_a_copy_read_back_through_the_status_command(world, tmp_path, capsys):
    world.source.insert_many([RawBSONDocument(exotic_document({"b": i, "a": Decimal128("1")}), RAW) for i in range(3)])
    services = world.services(initial_sync=True)
    services.replicator.run_pass("orders")
    path = write_config(tmp_path, world.config(initial_sync=True).model_dump(mode="json"))
    assert main(["status", "--config", str(path)]) == 0
    assert "orders: idle" in capsys.readouterr().out
