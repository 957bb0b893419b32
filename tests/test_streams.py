"""The change-stream reader on nx-27017: batching, its position, reopening at a saved position, event times.

What nx-27017 cannot produce (a lost history, a failover's error codes, a dropped connection, drop / invalidate
events, a post-batch token distinct from the last event's) is scripted in ``tests/test_streams_scripted.py``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import bson
import pytest
from bson import Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo.collection import Collection

from shared.streams import ChangeStreamReader, event_time
from tests.change_streams import T0, drain, ids, plain, reader_on
from tests.conftest import FakeClock, Harness

# ---------------------------------------------------------------------------------------------- nx-27017


@pytest.fixture
def source(harness: Harness) -> Collection[RawBSONDocument]:
    """The harness's source collection as the reader gets it: raw BSON through the client factory."""
    return harness.factory.collection(harness.config().stream("orders").source)


@pytest.fixture
def opened(source: Collection[RawBSONDocument]) -> Iterator[list[ChangeStreamReader]]:
    """Readers a test opens, closed at the end (nx-27017 keeps change rows while a stream is open)."""
    readers: list[ChangeStreamReader] = []
    yield readers
    for reader in readers:
        reader.close()


def test_batches_should_hold_at_most_max_events_and_end_at_the_first_empty_poll_when_events_came(
    harness, source, opened
):
    clock = FakeClock()
    reader = reader_on(source, clock, poll_interval=1.0)
    opened.append(reader)
    reader.current_position()
    harness.source.insert_many([{"_id": f"d{i}", "v": i} for i in range(7)])
    sizes = [len(reader.next_batch(3).events) for _ in range(3)]
    assert sizes == [3, 3, 1]
    assert clock.sleeps == []  # a batch with events ends at once when the source has no more


def test_an_empty_batch_should_end_after_about_one_poll_interval_of_waiting(source, opened):
    clock = FakeClock()
    reader = reader_on(source, clock, poll_interval=1.0)
    opened.append(reader)
    batch = reader.next_batch(10)
    assert batch.events == []
    assert batch.lifecycle is None
    assert 0.99 <= sum(clock.sleeps) < 1.1  # nx-27017 answers a getMore at once: the reader itself waited


def test_an_empty_batch_should_end_within_seconds_on_the_real_clock(source, opened):
    reader = reader_on(source, poll_interval=0.3)
    opened.append(reader)
    started = time.monotonic()
    assert reader.next_batch(10).events == []
    assert 0.3 <= time.monotonic() - started < 5


def test_reopening_at_a_saved_position_after_close_should_yield_exactly_the_events_after_it(harness, source, opened):
    first = reader_on(source)
    opened.append(first)
    first.current_position()
    harness.source.insert_many([{"_id": f"a{i}"} for i in range(10)])
    batch = first.next_batch(4)
    assert ids(batch.events) == ["a0", "a1", "a2", "a3"]
    saved = first.position  # what a pass saves once the estuary acknowledged the batch
    assert plain(saved) == plain(batch.events[-1]["_id"]) == plain(batch.resume_token)
    first.close()
    harness.source.insert_many([{"_id": f"b{i}"} for i in range(3)])
    second = reader_on(source, resume_token=saved)
    opened.append(second)
    assert ids(drain(second, 2)) == [*(f"a{i}" for i in range(4, 10)), "b0", "b1", "b2"]


def test_an_empty_poll_should_give_a_position_that_misses_nothing_written_after_it(harness, source, opened):
    first = reader_on(source)
    opened.append(first)
    batch = first.next_batch(10)
    assert batch.events == []
    assert batch.resume_token is not None  # the post-batch token: an idle stream still has a position
    assert plain(first.position) == plain(batch.resume_token)
    first.close()
    harness.source.insert_many([{"_id": "x"}, {"_id": "y"}])
    harness.source.update_one({"_id": "x"}, {"$set": {"v": 1}})
    harness.source.delete_one({"_id": "y"})
    second = reader_on(source, resume_token=batch.resume_token)
    opened.append(second)
    events = drain(second)
    assert [(e["operationType"], e["documentKey"]["_id"]) for e in events] == [
        ("insert", "x"),
        ("insert", "y"),
        ("update", "x"),
        ("delete", "y"),
    ]
    assert plain(events[2]["fullDocument"]) == {"_id": "x", "v": 1}


def test_a_reader_without_a_position_should_start_from_now(harness, source, opened):
    harness.source.insert_one({"_id": "before"})
    reader = reader_on(source)
    opened.append(reader)
    token = reader.current_position()
    assert token is not None
    assert plain(reader.position) == plain(token)
    harness.source.insert_one({"_id": "after"})
    assert ids(drain(reader)) == ["after"]


def test_the_batch_should_carry_the_time_of_its_last_event(harness, source, opened):
    reader = reader_on(source)
    opened.append(reader)
    reader.current_position()
    harness.source.insert_many([{"_id": "a"}, {"_id": "b"}])
    batch = reader.next_batch(10)
    assert ids(batch.events) == ["a", "b"]
    assert batch.last_event_at == event_time(batch.events[-1])
    assert batch.last_event_at is not None
    assert abs(batch.last_event_at - time.time()) < 120  # nx-27017's naive UTC wallTime, read as UTC


# ---------------------------------------------------------------------------------------------- event_time


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {"wallTime": dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.UTC), "clusterTime": Timestamp(1_000, 1)},
            dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.UTC).timestamp(),
        ),
        ({"wallTime": dt.datetime(2027, 1, 15, 8, 0)}, dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.UTC).timestamp()),
        ({"clusterTime": Timestamp(1_800_000_000, 7)}, 1_800_000_000.0),
        ({"operationType": "insert"}, None),
    ],
    ids=["wallTime-first", "naive-wallTime-is-utc", "clusterTime", "neither"],
)
def test_event_time_should_read_wall_time_and_else_cluster_time(event, expected):
    assert event_time(event) == expected


def test_event_time_should_read_raw_events():
    event = RawBSONDocument(bson.encode({"_id": T0, "clusterTime": Timestamp(1_800_000_123, 2)}))
    assert event_time(event) == 1_800_000_123.0
