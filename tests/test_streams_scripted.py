"""The change-stream reader against a scripted source (mockupdb): positions, lifecycle events, lost history,
transient errors and reopening; what nx-27017 cannot produce, as the source of ``tests/test_replicate_policies.py``.
"""

from __future__ import annotations

import pytest

from shared.errors import TransientError
from shared.streams import HistoryLostError
from tests.change_streams import T0, Answer, change, drain, ids, plain, reader_on
from tests.conftest import FakeClock


def test_the_position_should_move_only_when_a_batch_is_handed_out(scripted, scripted_collection):
    events = [change(f"t{i}", _id=f"d{i}") for i in range(1, 6)]
    scripted.aggregates = [Answer(events, post_batch="pb5"), Answer(events[2:])]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0)
    assert reader.position == T0
    batch = reader.next_batch(2)  # the server sent five events at once: three wait in the cursor
    assert ids(batch.events) == ["d1", "d2"]
    assert plain(reader.position) == plain(batch.resume_token) == {"_data": "t2"}
    reader.close()
    reopened = reader_on(scripted_collection, FakeClock(), resume_token=reader.position)
    assert ids(reopened.next_batch(10).events) == ["d3", "d4", "d5"]
    assert scripted.opened[0]["resumeAfter"] == T0
    assert scripted.opened[1]["resumeAfter"] == {"_data": "t2"}  # not past the events never handed out


def test_an_empty_poll_should_hand_out_the_servers_post_batch_token(scripted, scripted_collection):
    scripted.aggregates = [Answer(post_batch="pb-open")]
    scripted.get_more_default = Answer(post_batch="pb-idle")
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0)
    batch = reader.next_batch(10)
    assert batch.events == []
    assert plain(batch.resume_token) == {"_data": "pb-idle"}
    assert plain(reader.position) == {"_data": "pb-idle"}
    assert reader.start_after is False


def test_current_position_should_return_the_token_the_server_gives_a_new_stream(scripted, scripted_collection):
    scripted.aggregates = [Answer(post_batch="pb-open")]
    reader = reader_on(scripted_collection, FakeClock())
    assert plain(reader.current_position()) == {"_data": "pb-open"}
    assert plain(reader.position) == {"_data": "pb-open"}
    assert "resumeAfter" not in scripted.opened[0]  # no position yet: the stream starts at "now"


def test_current_position_without_a_post_batch_token_should_take_the_first_events_token(scripted, scripted_collection):
    scripted.aggregates = [Answer(post_batch=None), Answer([change("t2", _id="b")])]
    scripted.get_mores = [Answer([change("t1", _id="a"), change("t2", _id="b")], post_batch=None)]
    capture = reader_on(scripted_collection, FakeClock())
    token = capture.current_position()
    capture.close()
    assert plain(token) == {"_data": "t1"}  # the copy that follows the capture sees that event's effect
    streaming = reader_on(scripted_collection, FakeClock(), resume_token=token)
    assert ids(streaming.next_batch(10).events) == ["b"]
    assert scripted.opened[-1]["resumeAfter"] == {"_data": "t1"}


def test_current_position_should_raise_transient_when_the_server_gives_no_token_at_all(scripted, scripted_collection):
    scripted.aggregate_default = scripted.get_more_default = Answer(post_batch=None)
    with pytest.raises(TransientError, match="no resume token"):
        reader_on(scripted_collection, FakeClock()).current_position()


@pytest.mark.parametrize("kind", ["drop", "rename", "dropDatabase", "invalidate"])
def test_a_lifecycle_event_should_cut_the_batch_and_be_handed_over_separately(scripted, scripted_collection, kind):
    events = [change("t1", _id="a"), change("t2", _id="b"), change("t3", kind), change("t4", _id="c")]
    scripted.aggregates = [Answer(events)]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0)
    batch = reader.next_batch(10)
    assert ids(batch.events) == ["a", "b"]
    assert batch.lifecycle is not None
    assert batch.lifecycle["operationType"] == kind
    assert plain(batch.resume_token) == plain(reader.position) == {"_data": "t2"}  # just before the lifecycle event


def test_a_lifecycle_event_first_in_a_batch_should_leave_the_position_where_it_was(scripted, scripted_collection):
    scripted.aggregates = [Answer([change("t1", "drop"), change("t2", "invalidate")])]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0)
    batch = reader.next_batch(10)
    assert batch.events == []
    assert plain(batch.lifecycle) == change("t1", "drop")
    assert batch.resume_token == reader.position == T0


def test_skipping_an_invalidate_should_reopen_after_it_with_start_after(scripted, scripted_collection):
    scripted.aggregates = [
        Answer([change("t1", _id="a"), change("t2", "drop"), change("t3", "invalidate")]),
        Answer([change("t4", _id="b")]),
    ]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0)
    drop = reader.next_batch(10).lifecycle
    assert drop is not None
    assert drop["operationType"] == "drop"
    invalidate = reader.next_batch(10).lifecycle
    assert invalidate is not None
    assert invalidate["operationType"] == "invalidate"
    reader.skip_to(invalidate, start_after=True)
    assert reader.start_after is True
    assert plain(reader.position) == {"_data": "t3"}
    batch = reader.next_batch(10)
    assert ids(batch.events) == ["b"]
    assert scripted.opened[-1] == {"fullDocument": "updateLookup", "startAfter": {"_data": "t3"}}
    assert reader.start_after is False  # the position is now a token of the new stream
    assert plain(reader.position) == {"_data": "t4"}


@pytest.mark.parametrize("where", ["aggregate", "getMore"])
@pytest.mark.parametrize(
    ("code", "message"),
    [
        (286, "Resume of change stream was not possible, as the resume point may no longer be in the oplog"),
        (2, "Expired resume token: the change log moved on"),  # Azure DocumentDB's wording, without a useful code
    ],
    ids=["286", "azure-expired-token"],
)
def test_a_lost_history_should_raise_history_lost_and_keep_the_position(
    scripted, scripted_collection, where, code, message
):
    failure = Answer(code=code, message=message)
    if where == "aggregate":
        scripted.aggregates = [failure]
    else:
        scripted.get_mores = [failure]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0)
    with pytest.raises(HistoryLostError, match="can no longer be resumed") as raised:
        reader.next_batch(10)
    assert "on_history_lost" in (raised.value.hint or "")
    assert reader.position == T0
    assert len(scripted.opened) == 1  # not retried: the policy decides


def test_a_transient_error_should_reopen_from_the_position_and_lose_nothing(scripted, scripted_collection):
    scripted.get_mores = [Answer(code=16500, message="Request rate is large")]
    scripted.aggregates = [Answer(post_batch="pb-first"), Answer([change("t1", _id="a"), change("t2", _id="b")])]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0)
    batch = reader.next_batch(10)
    assert ids(batch.events) == ["a", "b"]
    assert [stage["resumeAfter"] for stage in scripted.opened] == [T0, T0]  # from the position, not "pb-first"


def test_a_transient_error_that_keeps_coming_should_raise_transient_after_a_bounded_number_of_reopens(
    scripted, scripted_collection
):
    scripted.get_more_default = Answer(code=16500, message="Request rate is large")
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0, poll_interval=60)
    with pytest.raises(TransientError, match="change stream kept failing"):
        reader.next_batch(10)
    assert len(scripted.opened) == 4  # the first open and three reopens
    assert all(stage["resumeAfter"] == T0 for stage in scripted.opened)
    assert reader.position == T0


@pytest.mark.parametrize(
    "failure",
    [Answer(code=91, message="ShutdownInProgress"), Answer(hangup=True)],
    ids=["shutdown-in-progress", "dropped-connection"],
)
def test_a_failover_error_once_should_be_survived_without_losing_an_event(scripted, scripted_collection, failure):
    scripted.get_mores = [failure]  # the driver resumes these itself, once, from its own post-batch token
    scripted.aggregates = [Answer(), Answer([change("t1", _id="a"), change("t2", _id="b")])]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0)
    assert ids(reader.next_batch(10).events) == ["a", "b"]
    assert plain(reader.position) == {"_data": "t2"}


def test_a_dropped_connection_the_driver_cannot_resume_should_be_reopened_from_the_position(
    scripted, scripted_collection
):
    scripted.get_mores = [Answer(hangup=True)]
    # The driver's resume (an aggregate, retried once as a read) fails too; then the reader reopens.
    scripted.aggregates = [Answer(), Answer(hangup=True), Answer(hangup=True), Answer([change("t1", _id="a")])]
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0)
    assert ids(drain(reader)) == ["a"]
    assert len(scripted.opened) == 4
    assert scripted.opened[-1]["resumeAfter"] == T0


@pytest.mark.parametrize(
    "failure",
    [Answer(code=91, message="ShutdownInProgress"), Answer(hangup=True)],
    ids=["shutdown-in-progress", "dropped-connection"],
)
def test_a_failover_outlasting_the_drivers_resume_should_raise_transient_after_the_bounded_reopens(
    scripted, scripted_collection, failure
):
    scripted.aggregates = [Answer()]
    scripted.aggregate_default = scripted.get_more_default = failure
    reader = reader_on(scripted_collection, FakeClock(), resume_token=T0, poll_interval=60)
    with pytest.raises(TransientError, match="change stream kept failing"):
        reader.next_batch(10)
    assert reader.position == T0
