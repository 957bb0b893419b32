"""Rewinding by time: the reader at a cluster time (``startAtOperationTime``); ``on_history_lost: rewind`` in a pass.

nx-27017 accepts ``startAtOperationTime`` but starts from now, and its events carry a date as ``clusterTime``, so the
source here is MongoDB's mockupdb answering the change stream as a server does; the estuary and the checkpoints are
a real nx-27017.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from bson import Timestamp
from pymongo.errors import OperationFailure

from shared.config import ReplicatorConfig
from shared.position import Checkpoint
from shared.replicate import Replicator
from shared.streams import HistoryLostError, at_time, position_time, rewind_time
from tests.change_streams import T0, Answer, ScriptedSource, ids, plain, reader_on
from tests.conftest import FakeClock, Harness

T = Timestamp(1_800_000_000, 0)  # 2027-01-15 08:00:00 UTC
LAST = Timestamp(1_800_000_100, 7)  # the cluster time of the last applied event the tests seed


def event(token: str, _id: str, cluster_time: Timestamp) -> dict[str, Any]:
    return {
        "_id": {"_data": token},
        "operationType": "insert",
        "clusterTime": cluster_time,
        "documentKey": {"_id": _id},
        "fullDocument": {"_id": _id, "from": token},
        "ns": {"db": "shop", "coll": "orders"},
    }


# ------------------------------------------------------------------------------------------- the reader at a time


def test_a_time_position_should_open_at_that_cluster_time_and_give_way_to_the_first_token(
    scripted, scripted_collection
):
    scripted.aggregates = [Answer([event("t1", "a", Timestamp(1_800_000_005, 2)), event("t2", "b", LAST)])]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=at_time(T))
    batch = reader.next_batch(10)
    assert ids(batch.events) == ["a", "b"]
    assert scripted.opened[0]["startAtOperationTime"] == T
    assert "resumeAfter" not in scripted.opened[0]
    assert plain(reader.position) == {"_data": "t2"}
    assert batch.last_cluster_time == LAST  # the last event's, for the checkpoint


def test_an_empty_first_poll_at_a_time_should_hand_out_the_servers_post_batch_token(scripted, scripted_collection):
    scripted.aggregates = [Answer(post_batch="pb-open")]
    scripted.get_more_default = Answer(post_batch="pb-idle")
    reader = reader_on(scripted_collection, FakeClock(), resume_token=at_time(T))
    batch = reader.next_batch(10)
    assert batch.events == []
    assert plain(batch.resume_token) == {"_data": "pb-idle"}  # resuming from it is safe, and cheaper than the time
    assert batch.last_cluster_time is None


def test_a_transient_error_at_a_time_should_reopen_at_the_same_time(scripted, scripted_collection):
    scripted.get_mores = [Answer(code=16500, message="Request rate is large")]
    scripted.aggregates = [Answer(), Answer([event("t1", "a", LAST)])]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=at_time(T))
    assert ids(reader.next_batch(10).events) == ["a"]
    assert [stage.get("startAtOperationTime") for stage in scripted.opened] == [T, T]


def test_a_time_the_change_log_no_longer_reaches_should_raise_history_lost_naming_that_time(
    scripted, scripted_collection
):
    scripted.aggregates = [Answer(code=286, message="Resume of change stream was not possible")]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=at_time(T))
    with pytest.raises(HistoryLostError) as raised:
        reader.next_batch(10)
    assert raised.value.at == T
    assert "no longer reaches 2027-01-15 08:00:00 UTC (cluster time 1800000000.0)" in raised.value.message
    assert "reset --from now" in (raised.value.hint or "")
    assert position_time(reader.position) == T


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (40415, "BSON field '$changeStream.startAtOperationTime' is an unknown field."),
        (115, "change stream option not supported"),
        (238, "not implemented"),
        (2, "startAtOperationTime is not supported on this cluster"),
    ],
    ids=["unknown-field", "command-not-supported", "not-implemented", "named-in-the-message"],
)
def test_a_server_refusing_start_at_operation_time_should_say_so(scripted, scripted_collection, code, message):
    scripted.aggregates = [Answer(code=code, message=message)]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=at_time(T))
    with pytest.raises(HistoryLostError, match=r"refused to open the change stream at .*\(startAtOperationTime\)") as e:
        reader.next_batch(10)
    assert e.value.at == T
    assert "historical change streams" in (e.value.hint or "")


def test_the_same_refusal_on_a_resume_token_should_stay_a_plain_failure(scripted, scripted_collection):
    scripted.aggregates = [Answer(code=115, message="change stream option not supported")]
    with pytest.raises(OperationFailure):
        reader_on(scripted_collection, FakeClock(), resume_token=T0).next_batch(10)


def test_check_start_should_open_at_the_time_and_close_again(scripted, scripted_collection):
    reader = reader_on(scripted_collection, FakeClock(), resume_token=at_time(T))
    reader.check_start()
    assert scripted.opened == [{"fullDocument": "updateLookup", "startAtOperationTime": T}]
    scripted.aggregates = [Answer(code=286, message="Resume of change stream was not possible")]
    with pytest.raises(HistoryLostError, match="no longer reaches"):
        reader.check_start()


@pytest.mark.parametrize(
    ("cluster_time", "event_at", "margin", "expected"),
    [
        (LAST, 1_700_000_000.0, 10.0, Timestamp(1_800_000_090, 0)),  # the cluster time wins over the event's time
        (None, 1_700_000_000.75, 10.0, Timestamp(1_699_999_990, 0)),  # an older checkpoint: the event's time, floored
        (LAST, None, 0.0, Timestamp(1_800_000_100, 0)),  # no margin still includes the last event's whole second
        (None, None, 10.0, None),  # no applied event: nothing to rewind to
    ],
)
def test_rewind_time_should_reopen_a_margin_before_the_last_applied_event(cluster_time, event_at, margin, expected):
    assert rewind_time(cluster_time, event_at, margin) == expected


def test_a_time_position_should_survive_a_checkpoint_store_that_cannot_keep_a_bson_timestamp():
    stored = at_time(Timestamp(1_800_000_000, 3))
    assert stored == {"startAtOperationTime": {"t": 1_800_000_000, "i": 3}}
    assert position_time(stored) == Timestamp(1_800_000_000, 3)
    assert position_time({"_data": "t1"}) is None
    assert position_time(None) is None


# ------------------------------------------------------------------------------------ on_history_lost: rewind


def config_for(harness: Harness, source: ScriptedSource, **stream: Any) -> ReplicatorConfig:
    data = harness.config(**stream).model_dump()
    data["streams"][0]["source"]["connection_uri"] = source.uri
    return ReplicatorConfig.model_validate(data)


def rewinding(harness: Harness, source: ScriptedSource, **stream: Any) -> Replicator:
    return harness.replicator(config_for(harness, source, on_history_lost="rewind", **stream))


def seed(harness: Harness, *, cluster_time: Timestamp | None = LAST, event_at: float | None = 1_800_000_099.5) -> None:
    acquired = harness.checkpoints.acquire("orders", "seed", 10)
    assert acquired is not None
    harness.checkpoints.save(
        acquired.lease,
        duration=10,
        resume_token={"_data": "aged-out"},
        last_event_at=event_at,
        last_cluster_time=cluster_time,
    )
    harness.checkpoints.release(acquired.lease)


def read(harness: Harness) -> Checkpoint:
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    return checkpoint


def test_rewind_should_reopen_at_the_last_applied_events_cluster_time_less_the_margin_and_record_it(
    harness, scripted, caplog
):
    seed(harness)
    scripted.aggregates = [Answer(code=286, message="Resume of change stream was not possible"), Answer()]
    scripted.aggregates[1].events = [event("r1", "replayed", Timestamp(1_800_000_095, 1)), event("n1", "new", LAST)]
    with caplog.at_level(logging.WARNING, logger="shared"):
        result = rewinding(harness, scripted, rewind_margin=10).run_pass("orders")
    assert result.outcome == "idle"
    assert scripted.opened[0]["resumeAfter"] == {"_data": "aged-out"}
    assert scripted.opened[1]["startAtOperationTime"] == Timestamp(1_800_000_090, 0)
    assert "resumeAfter" not in scripted.opened[1]
    assert sorted(d["_id"] for d in harness.estuary.find()) == ["new", "replayed"]
    checkpoint = read(harness)
    assert checkpoint.gaps == []  # a replay, not a gap
    assert checkpoint.counters["rewinds"] == 1
    assert checkpoint.last_rewind is not None
    assert checkpoint.last_rewind["to"] == {"t": 1_800_000_090, "i": 0}
    assert checkpoint.last_rewind["by"] == "on_history_lost"
    assert "can no longer be resumed" in checkpoint.last_rewind["reason"]
    assert checkpoint.resume_token == {"_data": "n1"}  # the server's token took over from the time
    assert checkpoint.status == "idle"
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "history_rewound"]
    assert "rewinding to 2027-01-15 08:01:30 UTC (cluster time 1800000090.0)" in record.getMessage()


def test_rewind_from_a_checkpoint_written_before_cluster_times_were_kept_should_use_the_events_time(harness, scripted):
    seed(harness, cluster_time=None, event_at=1_700_000_000.75)
    scripted.aggregates = [Answer(code=286, message="Resume of change stream was not possible")]
    assert rewinding(harness, scripted, rewind_margin=10).run_pass("orders").outcome == "idle"
    assert scripted.opened[1]["startAtOperationTime"] == Timestamp(1_699_999_990, 0)


def test_rewind_beyond_the_change_log_with_fallback_fail_should_stop_the_stream_saying_both(harness, scripted):
    seed(harness)
    scripted.aggregates = [Answer(code=286, message="Resume of change stream was not possible")] * 2
    result = rewinding(harness, scripted).run_pass("orders")
    assert result.outcome == "failed"
    assert "no longer reaches 2027-01-15 08:01:30 UTC" in (result.detail or "")
    assert "(rewind_fallback: fail)" in (result.detail or "")
    assert len(scripted.opened) == 2  # the token, then the time: no third try
    checkpoint = read(harness)
    assert checkpoint.status == "failed"
    assert checkpoint.counters["rewinds"] == 1  # the attempt is on record
    assert checkpoint.gaps == []


def test_rewind_beyond_the_change_log_with_fallback_start_now_should_record_the_gap_and_go_on(harness, scripted):
    seed(harness)
    scripted.aggregates = [Answer(code=286, message="Resume of change stream was not possible")] * 2
    scripted.aggregates.append(Answer([event("n1", "fresh", LAST)]))
    result = rewinding(harness, scripted, rewind_fallback="start_now").run_pass("orders")
    assert result.outcome == "idle"
    assert not {"resumeAfter", "startAtOperationTime"} & set(scripted.opened[2])  # from now
    assert harness.estuary.find_one({"_id": "fresh"}) is not None
    (gap,) = read(harness).gaps
    assert gap["from"] == 1_800_000_099.5
    assert "no longer reaches" in gap["reason"]
    assert "(rewind_fallback: start_now)" in gap["reason"]
    assert harness.metrics.value("replicator_gaps_total", stream="orders") == 1


def test_rewind_refused_by_the_server_should_follow_the_fallback_and_say_the_server_refused(harness, scripted):
    seed(harness)
    scripted.aggregates = [
        Answer(code=286, message="Resume of change stream was not possible"),
        Answer(code=40415, message="BSON field '$changeStream.startAtOperationTime' is an unknown field."),
    ]
    result = rewinding(harness, scripted).run_pass("orders")
    assert result.outcome == "failed"
    assert "refused to open the change stream at" in (result.detail or "")
    assert "historical change streams" in (read(harness).last_error or {}).get("hint", "")


def test_rewind_without_an_applied_events_time_should_follow_the_fallback_at_once(harness, scripted):
    seed(harness, cluster_time=None, event_at=None)
    scripted.aggregates = [Answer(code=286, message="Resume of change stream was not possible")]
    result = rewinding(harness, scripted).run_pass("orders")
    assert result.outcome == "failed"
    assert "no applied event's time is known to rewind to (rewind_fallback: fail)" in (result.detail or "")
    assert len(scripted.opened) == 1
    assert "rewinds" not in read(harness).counters


def test_rewind_should_stop_after_three_in_one_pass_and_follow_the_fallback(harness, scripted):
    seed(harness)
    lost = Answer(code=286, message="Resume of change stream was not possible")
    scripted.aggregates = [lost]
    scripted.aggregate_default = Answer([event("r1", "again", LAST)])  # each rewind gets one event on...
    scripted.get_more_default = lost  # ...then loses its position again
    result = rewinding(harness, scripted, batch_size=1).run_pass("orders")
    assert result.outcome == "failed"
    assert "lost again after 3 rewinds in this pass (rewind_fallback: fail)" in (result.detail or "")
    assert read(harness).counters["rewinds"] == 3
    assert [stage.get("startAtOperationTime") for stage in scripted.opened[1:]] == [Timestamp(1_800_000_090, 0)] * 3


def test_a_pass_should_save_the_cluster_time_of_the_last_applied_event(harness, scripted):
    seed(harness, cluster_time=None)
    scripted.aggregates = [Answer([event("t1", "a", Timestamp(1_800_000_200, 1)), event("t2", "b", LAST)])]
    harness.replicator(config_for(harness, scripted)).run_pass("orders")
    assert read(harness).last_cluster_time == LAST
