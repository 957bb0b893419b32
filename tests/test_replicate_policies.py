"""Stream policies for what nx-27017 cannot produce: a lost resume token and drop / invalidate events.

The source is MongoDB's own mockupdb answering the change stream's ``aggregate`` / ``getMore`` the way a
server does (error 286, lifecycle events); the estuary and the checkpoints are a real nx-27017.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from bson import Timestamp
from mockupdb import MockupDB, OpMsg

from shared.cli import main
from shared.config import ReplicatorConfig
from shared.mongo_errors import is_history_lost, is_transient
from shared.replicate import Replicator
from tests.conftest import Harness

CURSOR = 77


def event(token: str, kind: str, _id: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": {"_data": token}, "operationType": kind, "clusterTime": Timestamp(1_800_000_000, 1)}
    if _id is not None:
        doc |= {
            "documentKey": {"_id": _id},
            "fullDocument": {"_id": _id, "from": token},
            "ns": {"db": "shop", "coll": "orders"},
        }
    return doc


class ScriptedSource:
    """A mock server whose change stream serves scripted first batches, one per ``aggregate``."""

    def __init__(self) -> None:
        self.server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
        self.batches: list[list[dict[str, Any]] | int] = []  # an int answers the aggregate with that error code
        self.opened: list[dict[str, Any]] = []  # each $changeStream stage received

    def start(self) -> ScriptedSource:
        self.server.autoresponds(OpMsg("aggregate", "orders"), self._aggregate)
        self.server.autoresponds(OpMsg("getMore", CURSOR), self._get_more)
        self.server.autoresponds(OpMsg("killCursors", "orders"), cursorsKilled=[CURSOR])
        self.server.run()
        return self

    def _aggregate(self, request: Any) -> Any:
        self.opened.append(dict(request.doc["pipeline"][0]["$changeStream"]))
        batch = self.batches.pop(0) if self.batches else []
        if isinstance(batch, int):
            return request.command_err(code=batch, errmsg="Resume of change stream was not possible")
        return request.ok(
            cursor={"id": CURSOR, "ns": "shop.orders", "firstBatch": batch, "postBatchResumeToken": {"_data": "pb"}},
            operationTime=Timestamp(1_800_000_000, 1),
        )

    def _get_more(self, request: Any) -> Any:
        return request.ok(
            cursor={"id": CURSOR, "ns": "shop.orders", "nextBatch": [], "postBatchResumeToken": {"_data": "pb"}}
        )


@pytest.fixture
def source() -> Iterator[ScriptedSource]:
    scripted = ScriptedSource().start()
    yield scripted
    scripted.server.stop()


def config_for(harness: Harness, source: ScriptedSource, **stream: Any) -> ReplicatorConfig:
    data = harness.config(**stream).model_dump()
    data["streams"][0]["source"]["connection_uri"] = f"{source.server.uri}/?directConnection=true"
    return ReplicatorConfig.model_validate(data)


def replicator_for(harness: Harness, source: ScriptedSource, **stream: Any) -> Replicator:
    return harness.replicator(config_for(harness, source, **stream))


def seed_position(harness: Harness, token: str) -> None:
    acquired = harness.checkpoints.acquire("orders", "seed", 10)
    assert acquired is not None
    harness.checkpoints.save(acquired[0], duration=10, resume_token={"_data": token}, last_event_at=1_700_000_000.0)
    harness.checkpoints.release(acquired[0])


def test_history_lost_with_policy_fail_should_stop_the_stream_loudly_and_keep_it_stopped(
    harness, source, tmp_path, capsys, restore_logging
):
    replicator = replicator_for(harness, source)
    seed_position(harness, "aged-out")
    source.batches = [286]
    result = replicator.run_pass("orders")
    assert result.outcome == "failed"
    assert "can no longer be resumed" in (result.detail or "")
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.status == "failed"
    assert checkpoint.resume_token == {"_data": "aged-out"}  # kept for the operator, not silently replaced
    assert "on_history_lost: start_now" in checkpoint.last_error["hint"]
    opened = len(source.opened)
    assert replicator.run_pass("orders").outcome == "failed"  # later passes do not touch the source
    assert len(source.opened) == opened
    path = tmp_path / "replicator.yaml"
    path.write_text(yaml.safe_dump(config_for(harness, source).model_dump(mode="json")))
    assert main(["status", "--config", str(path)]) == 1  # status says the stream needs attention, and why
    out = capsys.readouterr().out
    assert "orders: failed" in out
    assert "last error the saved resume token can no longer be resumed" in out


def test_history_lost_with_policy_start_now_should_record_the_gap_and_continue(harness, source):
    replicator = replicator_for(harness, source, on_history_lost="start_now")
    seed_position(harness, "aged-out")
    source.batches = [286, [event("n1", "insert", "fresh")]]
    result = replicator.run_pass("orders")
    assert result.outcome == "idle"
    assert source.opened[0]["resumeAfter"] == {"_data": "aged-out"}
    assert "resumeAfter" not in source.opened[1]  # reopened at "now"
    assert harness.estuary.find_one({"_id": "fresh"}) == {"_id": "fresh", "from": "n1"}
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    (gap,) = checkpoint.gaps
    assert gap["from"] == 1_700_000_000.0
    assert gap["to"] >= gap["from"]
    assert "can no longer be resumed" in gap["reason"]
    assert checkpoint.counters["gaps"] == 1
    assert harness.metrics.value("replicator_gaps_total", stream="orders") == 1


def test_a_drop_with_policy_stop_should_apply_what_came_before_and_stop_visibly(harness, source):
    replicator = replicator_for(harness, source)
    seed_position(harness, "t0")
    source.batches = [[event("t1", "insert", "a"), event("t2", "drop"), event("t3", "invalidate")]]
    result = replicator.run_pass("orders")
    assert result.outcome == "stopped"
    assert "the source reported 'drop'" in (result.detail or "")
    assert harness.estuary.find_one({"_id": "a"}) is not None
    checkpoint = harness.checkpoints.read("orders")
    assert checkpoint is not None
    assert checkpoint.status == "stopped"
    assert checkpoint.resume_token == {"_data": "t1"}  # position just before the drop


def test_invalidate_with_policy_ignore_should_reopen_after_it_with_start_after(harness, source):
    replicator = replicator_for(harness, source, on_invalidate="ignore")
    seed_position(harness, "t0")
    source.batches = [
        [event("t1", "insert", "a"), event("t2", "drop"), event("t3", "invalidate")],
        [event("t4", "insert", "b")],
    ]
    result = replicator.run_pass("orders")
    assert result.outcome == "idle"
    assert source.opened[-1]["startAfter"] == {"_data": "t3"}
    assert sorted(d["_id"] for d in harness.estuary.find()) == ["a", "b"]


@pytest.mark.parametrize(
    ("code", "message", "lost"),
    [
        (286, "ChangeStreamHistoryLost", True),
        (280, "ChangeStreamFatalError", True),
        (260, "InvalidResumeToken", True),
        (2, "Expired resume token: the change log moved on", True),  # Azure DocumentDB words it
        (136, "CappedPositionLost", False),
        (11600, "InterruptedAtShutdown", False),
    ],
)
def test_is_history_lost_should_know_the_codes_and_azures_wording(code, message, lost):
    from pymongo.errors import OperationFailure

    assert is_history_lost(OperationFailure(message, code)) is lost


def test_is_transient_should_accept_elections_and_throttling_but_not_refusals():
    from pymongo.errors import AutoReconnect, OperationFailure

    assert is_transient(AutoReconnect("gone"))
    assert is_transient(OperationFailure("throttled", 16500))
    assert is_transient(OperationFailure("reauth", 391))
    assert not is_transient(OperationFailure("unauthorized", 13))
    assert not is_transient(OperationFailure("lost", 286))
