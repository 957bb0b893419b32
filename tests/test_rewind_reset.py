"""``reset --at TIME``: an operator restarts a stream at a point in time; the checkpoint fields a rewind leaves; the
``status`` line of a rewind.

The source is mockupdb (nx-27017 accepts ``startAtOperationTime`` but starts from now); the checkpoints are a real
nx-27017.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from bson import Timestamp

from shared.cli import main
from shared.cli.reset_command import cluster_time, rewind_line
from shared.config import ReplicatorConfig
from shared.errors import ReplicatorError
from shared.position import Checkpoint
from shared.replicate.reset import reset_stream_at
from shared.streams import at_time, position_time
from tests.change_streams import Answer, ScriptedSource
from tests.conftest import FakeClock, Harness

NOW = 1_800_000_500.0
AT = Timestamp(1_800_000_000, 0)  # 2027-01-15 08:00:00 UTC


def config_for(harness: Harness, source: ScriptedSource) -> ReplicatorConfig:
    data = harness.config().model_dump()
    data["streams"][0]["source"]["connection_uri"] = source.uri
    return ReplicatorConfig.model_validate(data)


def seed(harness: Harness, *, cluster_time: Timestamp | None, event_at: float | None, failed: bool = True) -> None:
    acquired = harness.checkpoints.acquire("orders", "seed", 10)
    assert acquired is not None
    harness.checkpoints.save(
        acquired.lease,
        duration=10,
        resume_token={"_data": "t9"},
        last_event_at=event_at,
        last_cluster_time=cluster_time,
    )
    if failed:
        harness.checkpoints.set_status(acquired.lease, "failed", error={"message": "history lost"})
    harness.checkpoints.release(acquired.lease)


def reset_at(harness: Harness, scripted: ScriptedSource, at: Timestamp, *, now: float = NOW) -> Checkpoint:
    services = harness.services(config_for(harness, scripted))
    stream = services.config.stream("orders")
    source = services.clients.collection(stream.source)
    return reset_stream_at(stream, at, checkpoints=services.checkpoints, source=source, clock=FakeClock(now))


def test_reset_at_a_time_before_the_last_applied_event_should_restart_there_without_a_gap(harness, scripted):
    seed(harness, cluster_time=Timestamp(1_800_000_100, 4), event_at=1_800_000_100.2)
    reset = reset_at(harness, scripted, AT)
    assert scripted.opened == [{"fullDocument": "updateLookup", "startAtOperationTime": AT}]  # checked first
    assert reset.status == "idle"
    assert reset.last_error is None
    assert position_time(reset.resume_token) == AT
    assert reset.token_saved_at == AT.time  # the position is as old as the time it names
    assert reset.gaps == []
    assert reset.counters["rewinds"] == 1
    assert reset.last_rewind is not None
    assert reset.last_rewind["to"] == {"t": AT.time, "i": 0}
    assert reset.last_rewind["by"] == "operator"


def test_the_next_pass_after_reset_at_should_open_the_stream_at_that_time(harness, scripted):
    seed(harness, cluster_time=Timestamp(1_800_000_100, 4), event_at=1_800_000_100.2)
    reset_at(harness, scripted, AT)
    event = {
        "_id": {"_data": "t1"},
        "operationType": "insert",
        "clusterTime": Timestamp(1_800_000_001, 1),
        "documentKey": {"_id": "a"},
        "fullDocument": {"_id": "a"},
        "ns": {"db": "shop", "coll": "orders"},
    }
    scripted.aggregates = [Answer([event])]
    assert harness.replicator(config_for(harness, scripted)).run_pass("orders").outcome == "idle"
    assert scripted.opened[-1]["startAtOperationTime"] == AT
    assert harness.estuary.find_one({"_id": "a"}) == {"_id": "a"}
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.resume_token == {"_data": "t1"}  # the token took over


@pytest.mark.parametrize(
    ("cluster_time", "event_at"),
    [(Timestamp(1_799_999_000, 2), 1_799_999_000.5), (None, 1_799_999_000.5)],
    ids=["cluster-time", "event-time-only"],
)
def test_reset_at_a_time_after_the_last_applied_event_should_record_the_span_between_as_a_gap(
    harness, scripted, cluster_time, event_at
):
    seed(harness, cluster_time=cluster_time, event_at=event_at)
    (gap,) = reset_at(harness, scripted, AT).gaps
    assert gap["from"] == 1_799_999_000.5
    assert gap["to"] == AT.time
    assert gap["reason"] == "operator reset: restarted at 2027-01-15 08:00:00 UTC (cluster time 1800000000.0)"


def test_reset_at_a_time_in_the_future_should_change_nothing(harness, scripted):
    seed(harness, cluster_time=None, event_at=1_799_999_000.5)
    with pytest.raises(ReplicatorError, match="is in the future"):
        reset_at(harness, scripted, AT, now=AT.time - 1)
    assert scripted.opened == []
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert (checkpoint.status, checkpoint.resume_token) == ("failed", {"_data": "t9"})


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answer(code=286, message="Resume of change stream was not possible"), "the change log no longer reaches"),
        (
            Answer(code=40415, message="BSON field '$changeStream.startAtOperationTime' is an unknown field."),
            "refused to open the change stream at",
        ),
    ],
    ids=["history-lost", "refused"],
)
def test_reset_at_a_time_the_source_cannot_start_at_should_say_why_and_change_nothing(
    harness, scripted, answer, expected
):
    seed(harness, cluster_time=None, event_at=1_799_999_000.5)
    scripted.aggregates = [answer]
    with pytest.raises(ReplicatorError, match=f"stream orders cannot restart at 2027-01-15 08:00:00 UTC .*{expected}"):
        reset_at(harness, scripted, AT)
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert (checkpoint.status, checkpoint.resume_token, checkpoint.gaps) == ("failed", {"_data": "t9"}, [])


# ---------------------------------------------------------------------------------------------- the command line


def config_file(harness: Harness, scripted: ScriptedSource, tmp_path: Path) -> str:
    path = tmp_path / "replicator.yaml"
    path.write_text(yaml.safe_dump(config_for(harness, scripted).model_dump(mode="json")))
    return str(path)


def test_the_reset_command_at_an_iso_time_should_say_where_the_next_pass_starts(
    harness, scripted, tmp_path, capsys, restore_logging
):
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 3600))  # an hour ago, without a zone: UTC
    seed(harness, cluster_time=None, event_at=time.time() - 60, failed=True)
    assert main(["reset", "--config", config_file(harness, scripted, tmp_path), "--stream", "orders", "--at", at]) == 0
    out = capsys.readouterr().out
    assert f"orders: the next pass starts at {at.replace('T', ' ')} UTC (cluster time" in out
    assert "applying the events since again" in out
    assert "gap" not in out
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert position_time(checkpoint.resume_token) == cluster_time(at)
    assert main(["status", "--config", config_file(harness, scripted, tmp_path), "--stream", "orders"]) == 0
    status = capsys.readouterr().out
    assert f"    REWOUND    to {at.replace('T', ' ')} UTC" in status
    assert "by an operator (reset --at)" in status


def test_the_reset_command_at_a_time_after_the_last_event_should_report_the_gap_as_json(
    harness, scripted, tmp_path, capsys, restore_logging
):
    seed(harness, cluster_time=None, event_at=time.time() - 7200)
    at = int(time.time() - 3600)
    path = config_file(harness, scripted, tmp_path)
    assert main(["reset", "--config", path, "--stream", "orders", "--at", f"{at}:2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["from"] == "time"
    assert report["at"]["t"] == at
    assert report["at"]["i"] == 2
    assert report["status"] == "idle"
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.gaps[-1]["to"] == at


def test_the_reset_command_should_say_clearly_when_the_source_cannot_start_at_the_time(
    harness, scripted, tmp_path, capsys, restore_logging
):
    seed(harness, cluster_time=None, event_at=time.time() - 60)
    scripted.aggregates = [Answer(code=115, message="not supported")]
    path = config_file(harness, scripted, tmp_path)
    assert main(["reset", "--config", path, "--stream", "orders", "--at", "2026-01-01T00:00:00Z"]) == 1
    err = capsys.readouterr().err
    assert "error: stream orders cannot restart at 2026-01-01 00:00:00 UTC" in err
    assert "(startAtOperationTime)" in err
    assert "Tip: this server does not open change streams at a cluster time" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--at", "yesterday"], "'yesterday' is not a time: give an ISO 8601 time"),
        (["--at", "2099-01-01T00:00:00Z"], "(2099-01-01 00:00:00 UTC) is in the future"),
        (["--at", "Timestamp(99999999999, 1)"], "outside the range of a cluster time"),
        (["--at", "2026-01-01", "--from", "now"], "not allowed with argument"),
        ([], "one of the arguments --from --at is required"),
    ],
    ids=["garbage", "future", "out-of-range", "both", "neither"],
)
def test_the_reset_command_should_refuse_a_bad_time_as_a_usage_error(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exited:
        main(["reset", "--config", str(tmp_path / "unused.yaml"), "--stream", "orders", *argv])
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Timestamp(1700000000, 3)", Timestamp(1_700_000_000, 3)),
        ("timestamp(1700000000,3)", Timestamp(1_700_000_000, 3)),
        ("1700000000.3", Timestamp(1_700_000_000, 3)),
        ("1700000000:3", Timestamp(1_700_000_000, 3)),
        ("2023-11-14T22:13:20Z", Timestamp(1_700_000_000, 0)),
        ("2023-11-14T22:13:20", Timestamp(1_700_000_000, 0)),  # naive: UTC
        ("2023-11-14 23:13:20.900+01:00", Timestamp(1_700_000_000, 0)),  # a fraction of a second: that whole second
    ],
)
def test_cluster_time_should_read_iso_times_and_cluster_timestamps(text, expected):
    assert cluster_time(text) == expected


def test_cluster_time_should_refuse_garbage_with_the_accepted_forms():
    with pytest.raises(argparse.ArgumentTypeError, match=r"Timestamp\(1800000000, 1\), 1800000000.1 or 1800000000:1"):
        cluster_time("1800000000")  # bare seconds are ambiguous: the forms say how to write them


# ------------------------------------------------------------------------------ the checkpoint and the status


def test_the_store_should_keep_the_cluster_time_of_the_last_applied_event_and_read_old_documents_without_it(
    harness,
):
    seed(harness, cluster_time=Timestamp(1_800_000_100, 4), event_at=None, failed=False)
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.last_cluster_time == Timestamp(1_800_000_100, 4)
    assert harness.state.checkpoints.find_one({"_id": "orders"})["last_cluster_time"] == {"t": 1_800_000_100, "i": 4}
    old = Checkpoint.from_document({"_id": "orders", "resume_token": {"_data": "t1"}, "last_event_at": 1.5})
    assert (old.last_cluster_time, old.last_rewind) == (None, None)


def test_a_later_save_should_not_forget_the_cluster_time_it_is_not_given(harness):
    seed(harness, cluster_time=Timestamp(1_800_000_100, 4), event_at=None, failed=False)
    acquired = harness.checkpoints.acquire("orders", "idle-save", 10)
    assert acquired is not None
    harness.checkpoints.save(acquired.lease, duration=10, resume_token={"_data": "pb"})  # an idle save
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.last_cluster_time == Timestamp(1_800_000_100, 4)


def test_rewind_line_should_say_when_to_where_by_whom_and_why():
    rewind: dict[str, Any] = {
        "to": {"t": 1_800_000_090, "i": 0},
        "at": NOW - 12,
        "by": "on_history_lost",
        "reason": "the saved resume token can no longer be resumed (OperationFailure 286: lost)",
    }
    assert rewind_line(rewind, NOW) == (
        "    REWOUND    to 2027-01-15 08:01:30 UTC (cluster time 1800000090.0) 12s ago by on_history_lost: rewind, "
        "applying the events since again after: the saved resume token can no longer be resumed "
        "(OperationFailure 286: lost)"
    )
    operator = rewind_line({**rewind, "by": "operator", "reason": "reset --at"}, NOW)
    assert operator is not None
    assert operator.endswith("12s ago by an operator (reset --at), applying the events since again")
    assert rewind_line(None, NOW) is None
    assert position_time(at_time(Timestamp(1_800_000_090, 0))) == Timestamp(1_800_000_090, 0)
