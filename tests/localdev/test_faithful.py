"""FaithfulServer end to end with real pymongo: exact bytes on every path, change streams, transactions, hooks."""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo import InsertOne, MongoClient, ReturnDocument, UpdateOne
from pymongo.change_stream import CollectionChangeStream
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from localdev.standins.faithful import FaithfulServer
from localdev.standins.faithful.changelog import Scope
from localdev.standins.faithful.engine import Engine
from localdev.standins.faithful.framing import Request
from localdev.standins.faithful.samples import COMPOUND_ID, exotic_document
from shared.raw_bson import RAW, raw_document

Client = MongoClient[dict[str, Any]]


@pytest.fixture(scope="module")
def server() -> Iterator[FaithfulServer]:
    with FaithfulServer() as running:
        yield running


@pytest.fixture(scope="module")
def client(server: FaithfulServer) -> Iterator[Client]:
    with Client(server.uri, serverSelectionTimeoutMS=5000) as connected:
        yield connected


@pytest.fixture
def coll(client: Client, request: pytest.FixtureRequest) -> Collection[RawBSONDocument]:
    """A fresh collection per test, read and written raw."""
    name = request.node.name.removeprefix("test_")[:60]
    collection: Collection[Any] = client.db.get_collection(name, codec_options=RAW)
    return collection


def next_events(stream: CollectionChangeStream[RawBSONDocument], count: int, timeout: float = 5.0) -> list[Any]:
    events: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        event = stream.try_next()
        if event is not None:
            events.append(event)
    assert len(events) == count, f"got {len(events)} of {count} events"
    return events


def test_insert_should_keep_every_bson_value_byte_identical_when_read_back_raw(server, coll) -> None:
    original = exotic_document()
    coll.insert_one(raw_document(original))
    found = coll.find_one({"_id": COMPOUND_ID})
    assert found is not None
    assert found.raw == original
    assert server.documents(coll.full_name) == [original]


def test_update_should_store_raw_replacement_byte_identical_when_replacing_an_exotic_document(server, coll) -> None:
    coll.insert_one(raw_document(exotic_document()))
    replacement = exotic_document(marker="replaced")
    result = coll.replace_one({"_id": COMPOUND_ID}, raw_document(replacement))
    assert (result.matched_count, result.modified_count) == (1, 1)
    found = coll.find_one({"_id": COMPOUND_ID})
    assert found is not None
    assert found.raw == replacement
    assert server.documents(coll.full_name) == [replacement]


def test_change_stream_should_deliver_exact_full_document_and_key_when_exotic_documents_are_written(coll) -> None:
    original, replacement = exotic_document(), exotic_document(marker="replaced")
    with coll.watch(full_document="updateLookup", max_await_time_ms=200) as stream:
        coll.insert_one(raw_document(original))
        coll.replace_one({"_id": COMPOUND_ID}, raw_document(replacement))
        coll.delete_one({"_id": COMPOUND_ID})
        inserted, replaced, deleted = next_events(stream, 3)
    assert [e["operationType"] for e in (inserted, replaced, deleted)] == ["insert", "replace", "delete"]
    assert inserted["fullDocument"].raw == original
    assert replaced["fullDocument"].raw == replacement
    assert "fullDocument" not in deleted
    expected_key = bson.encode({"_id": COMPOUND_ID})
    assert all(e["documentKey"].raw == expected_key for e in (inserted, replaced, deleted))
    assert inserted["_id"]["_data"] < replaced["_id"]["_data"] < deleted["_id"]["_data"]


def test_change_stream_should_report_update_with_post_image_when_operators_are_used(coll) -> None:
    coll.insert_one(raw_document(exotic_document(doc_id=1)))
    with coll.watch(max_await_time_ms=200) as stream:
        coll.update_one({"_id": 1}, {"$set": {"nested.added": 5}, "$inc": {"zeta": 1}, "$unset": {"inf": ""}})
        (event,) = next_events(stream, 1)
    stored = coll.find_one({"_id": 1})
    assert stored is not None
    assert event["operationType"] == "update"
    assert event["fullDocument"].raw == stored.raw
    assert stored["zeta"] == 2
    assert "inf" not in stored
    assert stored["nested"]["added"] == 5
    assert stored["far_future"] == DatetimeMS(2**62)  # untouched fields keep their bytes
    assert dict(event["updateDescription"]["updatedFields"]) == {"nested.added": 5, "zeta": 2}
    assert list(event["updateDescription"]["removedFields"]) == ["inf"]


def test_change_stream_should_yield_exactly_the_later_events_when_resumed_after_a_token(coll) -> None:
    with coll.watch(max_await_time_ms=200) as stream:
        coll.insert_many([{"_id": i} for i in range(4)])
        events = next_events(stream, 4)
    with coll.watch(resume_after=events[1]["_id"], max_await_time_ms=200) as resumed:
        later = next_events(resumed, 2)
        assert resumed.try_next() is None
    assert [e["documentKey"]["_id"] for e in later] == [2, 3]
    with coll.watch(start_at_operation_time=events[3]["clusterTime"], max_await_time_ms=200) as started:
        assert [e["documentKey"]["_id"] for e in next_events(started, 1)] == [3]


def test_change_stream_should_fail_with_286_when_token_is_unknown_or_truncated(server, coll) -> None:
    with coll.watch(max_await_time_ms=200) as stream:
        coll.insert_one({"_id": 1})
        (event,) = next_events(stream, 1)
    with pytest.raises(OperationFailure) as unknown:
        coll.watch(resume_after={"_data": "not-a-token-of-this-server"})
    assert unknown.value.code == 286
    server.truncate_log(coll.full_name)
    with pytest.raises(OperationFailure) as truncated:
        coll.watch(resume_after=event["_id"])
    assert truncated.value.code == 286
    with coll.watch(max_await_time_ms=200) as fresh:  # a new stream starts at the end of the log
        coll.insert_one({"_id": 2})
        assert next_events(fresh, 1)[0]["documentKey"]["_id"] == 2


def test_get_more_should_wait_about_max_time_without_spinning_when_stream_is_idle(server, coll) -> None:
    with coll.watch(max_await_time_ms=600) as stream:
        get_mores = server.commands.count("getMore")
        started, cpu = time.monotonic(), time.process_time()
        assert stream.try_next() is None
        elapsed, cpu_used = time.monotonic() - started, time.process_time() - cpu
        assert server.commands.count("getMore") == get_mores + 1
        resume_token = stream.resume_token
    assert 0.3 <= elapsed < 5.0
    assert cpu_used < 0.3, f"the wait burnt {cpu_used:.2f}s of CPU"
    assert resume_token is not None  # postBatchResumeToken of the empty batch


def test_get_more_should_return_early_when_an_event_arrives_during_the_wait(coll) -> None:
    with coll.watch(max_await_time_ms=5000) as stream:
        timer = threading.Timer(0.3, coll.insert_one, args=({"_id": "late"},))
        started = time.monotonic()
        timer.start()
        event = stream.try_next()  # the getMore is waiting when the insert arrives
        elapsed = time.monotonic() - started
        timer.join()
    assert event is not None
    assert event["documentKey"]["_id"] == "late"
    assert 0.2 <= elapsed < 3.0


def test_find_should_order_ids_in_bson_order_when_ids_mix_numbers_strings_and_object_ids(coll) -> None:
    low, high = ObjectId("000000000000000000000001"), ObjectId("ffffffffffffffffffffffff")
    ids: list[Any] = [high, "b", 3, Int64(2), "a", 1.5, low, Decimal128("2.5")]
    coll.insert_many([{"_id": i} for i in ids])
    ascending = [d["_id"] for d in coll.find({}, sort=[("_id", 1)], batch_size=3)]
    assert ascending == [1.5, 2, Decimal128("2.5"), 3, "a", "b", low, high]
    assert [d["_id"] for d in coll.find({}, sort=[("_id", -1)])] == ascending[::-1]
    # $gt compares within one type bracket, as MongoDB does.
    assert [d["_id"] for d in coll.find({"_id": {"$gt": 2}}, sort=[("_id", 1)])] == [Decimal128("2.5"), 3]
    assert [d["_id"] for d in coll.find({"_id": {"$gt": "a"}})] == ["b"]
    assert [d["_id"] for d in coll.find({"_id": {"$gte": low}}, {"_id": 1}, sort=[("_id", 1)])] == [low, high]


def test_counts_and_delete_many_should_honour_nin_gt_lte_when_bounds_are_given(coll) -> None:
    coll.insert_many([{"_id": i, "even": i % 2 == 0} for i in range(10)])
    assert coll.estimated_document_count() == 10
    assert coll.count_documents({"even": True}) == 5
    assert coll.count_documents({}, skip=2, limit=5) == 5
    assert coll.count_documents({"_id": {"$gte": 8}}, skip=1) == 1
    deleted = coll.delete_many({"_id": {"$nin": [4, 6], "$gt": 2, "$lte": 7}})
    assert deleted.deleted_count == 3
    assert [d["_id"] for d in coll.find({}, sort=[("_id", 1)])] == [0, 1, 2, 4, 6, 8, 9]


def test_aggregate_should_group_by_field_and_refuse_other_stages_when_pipelines_are_run(coll) -> None:
    coll.insert_many([{"_id": i, "stream": "ab"[i % 2]} for i in range(5)])
    groups = {g["_id"]: g["parked"] for g in coll.aggregate([{"$group": {"_id": "$stream", "parked": {"$sum": 1}}}])}
    assert groups == {"a": 3, "b": 2}
    with pytest.raises(OperationFailure) as refused:
        list(coll.aggregate([{"$sample": {"size": 2}}]))
    assert refused.value.code == 40324


def test_unordered_bulk_should_report_11000_and_121_and_continue_when_index_and_validator_refuse(server, coll) -> None:
    coll.create_index("email", unique=True)
    server.refuse_field(coll.full_name, "forbidden")
    docs = [
        {"_id": 1, "email": "a@example.com"},
        {"_id": 2, "email": "a@example.com"},
        {"_id": 3, "email": "b@example.com", "forbidden": True},
        {"_id": 1, "email": "c@example.com"},
        {"_id": 5, "email": "d@example.com"},
    ]
    with pytest.raises(BulkWriteError) as failed:
        coll.bulk_write([InsertOne(d) for d in docs], ordered=False)
    details = failed.value.details
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(1, 11000), (2, 121), (3, 11000)]
    assert 'dup key: { email: "a@example.com" }' in details["writeErrors"][0]["errmsg"]
    assert details["nInserted"] == 2
    with pytest.raises(BulkWriteError) as ordered:
        coll.insert_many([{"_id": 6, "email": "a@example.com"}, {"_id": 7, "email": "e@example.com"}])
    assert ordered.value.details["nInserted"] == 0
    assert [d["_id"] for d in coll.find({}, sort=[("_id", 1)])] == [1, 5]
    assert [i["name"] for i in coll.list_indexes()] == ["_id_", "email_1"]


def test_fail_should_fail_writes_and_commands_when_injected(server, coll) -> None:
    server.fail("insert", 16500, "Request rate is large", write_error=True)
    with pytest.raises(BulkWriteError) as throttled:
        coll.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3}], ordered=False)
    assert [(e["index"], e["code"]) for e in throttled.value.details["writeErrors"]] == [
        (0, 16500),
        (1, 16500),
        (2, 16500),
    ]
    coll.insert_many([{"_id": 1}, {"_id": 2}])  # times=1: the next insert goes through
    server.fail("find", 13, "not allowed", times=2, error_labels=("SomeLabel",))
    for _ in range(2):
        with pytest.raises(OperationFailure) as refused:
            coll.find_one()
        assert refused.value.code == 13
        assert refused.value.has_error_label("SomeLabel")
    assert coll.find_one({"_id": 2}) is not None


def test_transaction_should_publish_writes_and_events_only_when_committed(client, server, coll) -> None:
    coll.insert_many([{"_id": 1, "v": 1}, {"_id": 2, "v": 2}, {"_id": 3, "v": 3}])
    before = server.documents(coll.full_name)
    with coll.watch(max_await_time_ms=200) as stream, client.start_session() as session:
        session.start_transaction()
        coll.insert_one({"_id": 4}, session=session)
        coll.update_one({"_id": 1}, {"$set": {"v": 10}}, session=session)
        coll.delete_one({"_id": 2}, session=session)
        assert stream.try_next() is None  # nothing is published before the commit
        session.abort_transaction()
        assert server.documents(coll.full_name) == before  # bytes and order restored
        assert stream.try_next() is None

        with session.start_transaction():
            coll.insert_one({"_id": 5}, session=session)
            coll.delete_one({"_id": 3}, session=session)
        events = next_events(stream, 2)
    assert [(e["operationType"], e["documentKey"]["_id"]) for e in events] == [("insert", 5), ("delete", 3)]
    assert [d["_id"] for d in coll.find()] == [1, 2, 5]
    assert len(server.events(coll.full_name)) == 3 + 2  # the aborted transaction left no event


def test_find_one_and_update_should_upsert_then_update_when_operators_are_combined(coll) -> None:
    def acquire(owner: str) -> Any:
        return coll.find_one_and_update(
            {"$and": [{"_id": "stream"}, {"$or": [{"lease": {"$exists": False}}, {"lease.expires": {"$lt": 100}}]}]},
            {
                "$set": {"lease.owner": owner, "lease.expires": 50},
                "$inc": {"lease.epoch": 1},
                "$setOnInsert": {"status": "new"},
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )

    first = acquire("w1")
    assert bson.decode(first.raw) == {
        "_id": "stream",
        "lease": {"owner": "w1", "expires": 50, "epoch": 1},
        "status": "new",
    }
    coll.update_one({"_id": "stream"}, {"$set": {"status": "copying"}})
    second = acquire("w2")
    assert bson.decode(second.raw) == {
        "_id": "stream",
        "lease": {"owner": "w2", "expires": 50, "epoch": 2},
        "status": "copying",
    }
    coll.update_one({"_id": "stream"}, {"$set": {"lease.expires": 1000}})
    with pytest.raises(DuplicateKeyError):  # the filter misses, the upsert collides with the existing _id
        acquire("w3")
    result = coll.bulk_write([UpdateOne({"_id": "other"}, {"$inc": {"n": Int64(5)}}, upsert=True)])
    assert result.upserted_ids == {0: "other"}
    assert type(coll.find_one({"_id": "other"})["n"]) is Int64


def test_document_near_16_mb_should_round_trip_when_inserted_and_watched(server, coll) -> None:
    body = bson.encode({"_id": "big", "blob": Binary(b"")})
    original = bson.encode({"_id": "big", "blob": Binary(b"\xab" * (16 * 1024 * 1024 - len(body)))})
    assert len(original) == 16 * 1024 * 1024
    with coll.watch(max_await_time_ms=200) as stream:
        coll.insert_one(raw_document(original))
        (event,) = next_events(stream, 1)
    found = coll.find_one({"_id": "big"})
    assert found is not None
    assert found.raw == original
    assert event["fullDocument"].raw == original


def test_server_should_answer_ok_0_and_keep_serving_when_a_command_is_unknown(client) -> None:
    with pytest.raises(OperationFailure) as unknown:
        client.db.command("noSuchCommand")
    assert unknown.value.code == 59
    assert client.admin.command("ping")["ok"] == 1.0
    hello = client.admin.command("hello")
    assert (hello["setName"], hello["isWritablePrimary"], hello["maxWireVersion"]) == ("rs0", True, 21)


def test_standalone_should_not_claim_a_replica_set_when_replica_set_is_false() -> None:
    with FaithfulServer(replica_set=False) as standalone, Client(standalone.uri) as client:
        hello = client.admin.command("hello")
        client.db.c.insert_one({"_id": 1})
        assert client.db.c.find_one() == {"_id": 1}
    assert "setName" not in hello
    assert hello["isWritablePrimary"] is True


def _op_msg(payload: bytes) -> bytes:
    return struct.pack("<iiiiI", 16 + 4 + len(payload), 7, 0, 2013, 0) + payload


def _read_reply(sock: socket.socket) -> bytes:
    data = sock.recv(16)
    while len(data) < struct.unpack_from("<i", data)[0]:
        data += sock.recv(65536)
    return data


def test_server_should_keep_serving_when_connections_send_malformed_messages(server, client) -> None:
    host, port = server.address
    with socket.create_connection((host, port), timeout=5) as broken:
        broken.sendall(struct.pack("<iiii", 8, 1, 0, 2013))  # a length shorter than the header: unframeable
        assert broken.recv(1) == b""  # that connection is closed
    with socket.create_connection((host, port), timeout=5) as garbled:
        garbled.sendall(_op_msg(b"\x00" + b"\x05\x00\x00\x00\x01"))  # a body that is not BSON
        reply = bson.decode(_read_reply(garbled)[21:])  # header, flags, section kind
        assert (reply["ok"], reply["code"]) == (0.0, 9)
        garbled.sendall(_op_msg(b"\x00" + bson.encode({"ping": 1, "$db": "admin"})))  # the connection still works
        assert garbled.recv(1024)
    assert client.admin.command("ping")["ok"] == 1.0


def test_refuse_field_should_report_121_when_id_holds_an_out_of_range_date(server, coll) -> None:
    server.refuse_field(coll.full_name, "forbidden")
    with pytest.raises(BulkWriteError) as refused:
        coll.insert_many([raw_document(bson.encode({"_id": DatetimeMS(2**62), "forbidden": 1}))], ordered=False)
    (error,) = refused.value.details["writeErrors"]
    assert error["code"] == 121
    assert server.documents(coll.full_name) == []


def test_change_stream_should_apply_match_and_pass_other_stages_when_pipeline_has_them(coll) -> None:
    pipeline = [{"$match": {"operationType": {"$in": ["insert", "delete"]}}}, {"$project": {"ns": 0}}]
    with coll.watch(pipeline, max_await_time_ms=200) as stream:
        coll.insert_one({"_id": 1})
        coll.update_one({"_id": 1}, {"$set": {"a": 1}})
        coll.delete_one({"_id": 1})
        events = next_events(stream, 2)
        assert stream.try_next() is None
    assert [e["operationType"] for e in events] == ["insert", "delete"]


def _command(engine: Engine, body: dict[str, Any], *docs: dict[str, Any]) -> dict[str, Any] | None:
    """Run one command the way the server decodes it: body fields raw, documents as a kind-1 sequence."""
    request = Request(0, dict(raw_document(body).items()), {"documents": [bson.encode(d) for d in docs]})
    return engine.run(request)


def test_open_transaction_should_roll_back_when_a_newer_txn_number_or_end_sessions_arrives() -> None:
    engine = Engine(replica_set=True)
    lsid = {"id": Binary(uuid.uuid4().bytes, 4)}
    txn = {"lsid": lsid, "autocommit": False, "$db": "db"}
    _command(engine, {"insert": "c", **txn, "txnNumber": 1, "startTransaction": True}, {"_id": 1})
    assert len(engine.store.collection("db.c").docs) == 1
    _command(engine, {"insert": "c", "lsid": lsid, "txnNumber": 2, "$db": "db"}, {"_id": 2})  # a retryable write
    assert [bson.decode(d)["_id"] for d in engine.store.collection("db.c").docs.values()] == [2]
    _command(engine, {"insert": "c", **txn, "txnNumber": 3, "startTransaction": True}, {"_id": 3})
    _command(engine, {"endSessions": [lsid], "$db": "admin"})
    assert [bson.decode(d)["_id"] for d in engine.store.collection("db.c").docs.values()] == [2]
    assert [bson.decode(e.raw)["documentKey"]["_id"] for e in engine.store.log.after(0, Scope())] == [2]
