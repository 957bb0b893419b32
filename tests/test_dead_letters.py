"""Dead letters on nx-27017: parked by a real refusal, then listed, replayed from the current source, purged."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.raw_bson import RawBSONDocument

from shared.cli import main
from shared.clock import SystemClock
from shared.config import ReplicatorConfig
from shared.dead_letters import DeadLetters, without_values
from shared.replicate import Replicator
from tests.conftest import FakeClock, Harness, replay_stream, write_config

PERSONAL = ("x@y", "Ada Lovelace", "Grace Hopper", "Alan Turing")  # what no output may show

Cli = Callable[..., tuple[int, str, str]]


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def cli(harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """``python -m shared dead-letters --config FILE ARGS...`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str, config: dict[str, Any] | None = None) -> tuple[int, str, str]:
        path = write_config(tmp_path, config or harness.config().model_dump(mode="json"))
        code = main(["dead-letters", "--config", str(path), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def started(harness: Harness, config: ReplicatorConfig | None = None) -> Replicator:
    """A replicator whose streams saved their start position (a stream with none starts at 'now')."""
    config = config or harness.config()
    replicator = harness.replicator(config)
    for stream in config.streams:
        assert replicator.run_pass(stream.name).outcome == "idle"
    return replicator


def park_by_refusal(harness: Harness, replicator: Replicator, *names: str) -> None:
    """'a' is accepted; each of ``names`` has the same email, which the estuary's unique index refuses."""
    harness.estuary.create_index("email", unique=True)
    people = iter(PERSONAL[1:])
    harness.source.insert_one({"_id": "a", "email": "x@y", "name": next(people)})
    harness.source.insert_many([{"_id": n, "email": "x@y", "name": next(people)} for n in names])
    assert replicator.run_pass("orders").dead_lettered == len(names)


def parked(harness: Harness) -> list[dict[str, Any]]:
    return list(harness.state.dead_letters.find())


def replayed(stream: str, written: int, gone: int, refused: int, left: int) -> str:
    """The replay's line for one stream."""
    return (
        f"{stream}: {written} replayed, {gone} gone from the source (deleted from the estuary), "
        f"{refused} still refused; {left} left parked"
    )


def assert_no_document_contents(text: str) -> None:
    for value in PERSONAL:
        assert value not in text


# ---------------------------------------------------------------------------------------------- list


def test_list_should_count_and_show_the_parked_event_but_no_document_contents(harness, cli):
    park_by_refusal(harness, started(harness), "b")
    code, out, err = cli("list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "orders: 1 parked:"
    assert lines[1].split() == ["REF", "OPERATION", "DOCUMENT", "KEY", "ERROR", "ATTEMPTS", "PARKED", "AT"]
    row = lines[2]
    assert parked(harness)[0]["ref"] in row
    assert " insert " in row
    assert '{"_id": "b"}' in row
    assert " 11000 " in row
    assert " 3 " in row
    assert row.rstrip().endswith("UTC")
    assert_no_document_contents(out + err)


def test_list_json_should_be_parseable_and_free_of_document_contents(harness, cli):
    park_by_refusal(harness, started(harness), "b", "c")
    code, out, _ = cli("list", "--json", "--limit", "1")
    assert code == 0
    report = json.loads(out)
    assert [(s["stream"], s["configured"], s["parked"]) for s in report] == [("orders", True, 2)]
    (newest,) = report[0]["newest"]  # --limit 1
    assert newest["document_key"] in ({"_id": "b"}, {"_id": "c"})
    assert newest["operation"] == "insert"
    assert newest["error"]["code"] == 11000
    assert newest["attempts"] == 3
    assert_no_document_contents(out)


def test_error_messages_should_lose_the_duplicated_values_mongodb_quotes():
    message = 'E11000 duplicate key error collection: shop.orders index: email_1 dup key: { email: "x@y" }'
    assert (
        without_values(message) == "E11000 duplicate key error collection: shop.orders index: email_1 dup key: { ... }"
    )


# ---------------------------------------------------------------------------------------------- replay


@pytest.mark.parametrize("fix", ["change the source document", "drop the unique index"])
def test_replay_should_apply_the_current_source_document_and_delete_the_dead_letter_once_fixed(harness, cli, fix):
    replicator = started(harness)
    park_by_refusal(harness, replicator, "b")
    if fix == "drop the unique index":
        harness.estuary.drop_index("email_1")
    harness.source.update_one({"_id": "b"}, {"$set": {"email": "b@y", "visits": 2}})  # newer than the parked one
    code, out, err = cli("replay")
    assert code == 0, err
    assert out.strip() == replayed("orders", 1, 0, 0, 0)
    assert parked(harness) == []
    assert harness.estuary.find_one({"_id": "b"}) == {"_id": "b", "email": "b@y", "name": "Grace Hopper", "visits": 2}
    assert harness.converged()
    assert harness.checkpoints.acquire("orders", "next-pass", 10) is not None  # the replay gave the lease back
    assert_no_document_contents(out + err)


def test_replaying_again_should_find_nothing_to_do(harness, cli):
    park_by_refusal(harness, started(harness), "b")
    harness.estuary.drop_index("email_1")
    assert cli("replay")[0] == 0
    code, out, _ = cli("replay")
    assert code == 0
    assert out.strip() == "orders: nothing parked"


def test_a_replay_refused_again_should_keep_the_record_and_add_to_its_attempts(harness, cli):
    park_by_refusal(harness, started(harness), "b")
    code, out, err = cli("replay")
    assert code == 1
    assert (
        "orders: 0 replayed, 0 gone from the source (deleted from the estuary), 1 still refused; 1 left parked" in out
    )
    assert "Tip: 'dead-letters list' shows why" in err
    (record,) = parked(harness)
    assert record["attempts"] == 6  # 3 in the pass, 3 in the replay
    assert record["error"]["code"] == 11000
    assert record["operation"] == "insert"  # the record still describes the event first refused
    assert bson.decode(record["event"])["fullDocument"]["name"] == "Grace Hopper"
    assert harness.estuary.find_one({"_id": "b"}) is None


def test_a_parked_event_whose_document_left_the_source_should_replay_as_a_delete(harness, cli):
    replicator = started(harness)
    harness.estuary.create_index("email", unique=True)
    harness.source.insert_many([{"_id": "a", "email": "x@y"}, {"_id": "c", "email": "z@y"}])
    replicator.run_pass("orders")
    harness.source.update_one({"_id": "c"}, {"$set": {"email": "x@y"}})  # refused: the estuary keeps the old c
    assert replicator.run_pass("orders").dead_lettered == 1
    harness.source.delete_one({"_id": "c"})  # ... and its delete is still to come when the replay runs
    code, out, err = cli("replay")
    assert code == 0, err
    assert out.strip() == replayed("orders", 0, 1, 0, 0)
    assert harness.estuary.find_one({"_id": "c"}) is None
    assert harness.converged()
    assert parked(harness) == []


def test_replay_should_refuse_while_a_pass_holds_the_stream(harness, cli):
    replicator = started(harness)
    park_by_refusal(harness, replicator, "b")
    harness.estuary.drop_index("email_1")
    lease = harness.checkpoints.acquire("orders", "worker-a", 30)
    assert lease is not None
    code, _, err = cli("replay")
    assert code == 1
    assert "a pass of stream orders is running; try again when it ends" in err
    assert len(parked(harness)) == 1
    assert harness.estuary.find_one({"_id": "b"}) is None  # nothing written behind the pass's back
    harness.checkpoints.release(lease[0])
    assert cli("replay")[0] == 0


def test_replay_limit_should_replay_at_most_that_many(harness, cli):
    park_by_refusal(harness, started(harness), "b", "c")
    harness.estuary.drop_index("email_1")
    code, out, _ = cli("replay", "--limit", "1")
    assert code == 0
    assert (
        "orders: 1 replayed, 0 gone from the source (deleted from the estuary), 0 still refused; 1 left parked" in out
    )
    assert len(parked(harness)) == 1


def test_replay_should_skip_a_stream_whose_pipeline_it_would_bypass(harness, cli):
    config = harness.config(pipeline=[{"$match": {"operationType": {"$in": ["insert", "update"]}}}])
    park_by_refusal(harness, started(harness, config), "b")
    harness.estuary.drop_index("email_1")
    code, _, err = cli("replay", config=config.model_dump(mode="json"))
    assert code == 1
    assert "orders: the stream filters or reshapes its events with a pipeline" in err
    assert len(parked(harness)) == 1


def test_replay_should_stop_before_its_lease_could_run_out(harness):
    replicator = started(harness)
    park_by_refusal(harness, replicator, "b", "c")
    harness.estuary.drop_index("email_1")
    services = harness.services()

    class LateClock(SystemClock):
        """The real time until the first batch is replayed, then far beyond the lease."""

        late = False

        def time(self) -> float:
            return super().time() + (10_000 if self.late else 0)

    clock = LateClock()

    class FirstBatchDone(DeadLetters):
        def remove(self, refs: Iterable[str]) -> int:
            removed = super().remove(refs)
            clock.late = True
            return removed

    dead_letters = FirstBatchDone(harness.state.dead_letters, clock=SystemClock())
    result = replay_stream(services, dead_letters=dead_letters, clock=clock, batch_size=1)
    assert (result.outcome, result.replayed, result.remaining) == ("lease_expiring", 1, 1)
    assert harness.checkpoints.acquire("orders", "next-pass", 10) is not None


# ---------------------------------------------------------------------------------------------- purge


def test_purge_should_delete_nothing_and_exit_1_without_yes(harness, cli):
    park_by_refusal(harness, started(harness), "b", "c")
    code, out, err = cli("purge")
    assert code == 1
    assert out.strip() == "orders: 2 dead letter(s) would be deleted"
    assert "nothing deleted: pass --yes to delete these 2 dead letter(s)" in err
    assert len(parked(harness)) == 2
    code, out, _ = cli("purge", "--yes")
    assert code == 0
    assert out.strip() == "orders: 2 dead letter(s) deleted"
    assert parked(harness) == []
    assert cli("purge") == (0, "nothing parked\n", "")


def test_purge_should_refuse_a_limit_as_a_usage_error(harness, cli, capsys):
    with pytest.raises(SystemExit) as info:
        cli("purge", "--limit", "3")
    assert info.value.code == 2


# ---------------------------------------------------------------------------------------------- --stream


def two_streams(harness: Harness) -> dict[str, Any]:
    """The harness's 'orders' stream, and 'customers' between collections of that name."""
    data = harness.config().model_dump(mode="json")
    orders = data["streams"][0]
    customers = {
        **orders,
        "name": "customers",
        "source": {**orders["source"], "collection": "customers"},
        "estuary": {**orders["estuary"], "collection": "customers"},
    }
    data["streams"].append(customers)
    return data


def test_stream_should_limit_list_replay_and_purge_to_that_stream(harness, cli):
    data = two_streams(harness)
    replicator = started(harness, ReplicatorConfig.model_validate(data))
    park_by_refusal(harness, replicator, "b")
    source = harness.source.database["customers"]
    harness.source.database.client[f"{harness.prefix}_dst"]["customers"].create_index("email", unique=True)
    source.insert_many([{"_id": "k1", "email": "k@y"}, {"_id": "k2", "email": "k@y"}])
    assert replicator.run_pass("customers").dead_lettered == 1

    code, out, _ = cli("--stream", "customers", "list", config=data)
    assert code == 0
    assert out.startswith("customers: 1 parked:")
    assert "orders" not in out
    code, out, _ = cli("list", config=data)
    assert "orders: 1 parked:" in out
    assert "customers: 1 parked:" in out

    code, out, _ = cli("--stream", "orders", "purge", "--yes", config=data)
    assert out.strip() == "orders: 1 dead letter(s) deleted"
    assert [r["stream"] for r in parked(harness)] == ["customers"]

    code, out, _ = cli("--stream", "customers", "replay", config=data)
    assert code == 1  # still refused: the customers estuary keeps its unique index
    assert out.startswith("customers: 0 replayed")


def test_an_unknown_stream_should_be_a_usage_error(harness, cli):
    code, _, err = cli("--stream", "nope", "list")
    assert code == 2
    assert "no stream named 'nope' (configured: orders)" in err


# ---------------------------------------------------------------------------------------------- the store


def event(token: str, key: str) -> RawBSONDocument:
    body = {
        "_id": {"_data": token},
        "operationType": "insert",
        "documentKey": {"_id": key},
        "fullDocument": {"_id": key},
    }
    return RawBSONDocument(bson.encode(body))


def test_parking_an_event_again_should_update_its_one_record_and_add_the_attempts(harness):
    dead = DeadLetters(harness.state["dead_letters"], clock=FakeClock())
    dead.park("orders", event("82aa", "x"), code=11000, message="first", attempts=3)
    dead.park("orders", event("82bb", "y"), code=11000, message="other", attempts=3)
    dead.park("orders", event("82aa", "x"), code=121, message="second", attempts=2)
    records = sorted(parked(harness), key=lambda r: r["_id"]["token"]["_data"])
    assert [(r["_id"], r["attempts"], r["error"]) for r in records] == [
        ({"stream": "orders", "token": {"_data": "82aa"}}, 5, {"code": 121, "message": "second"}),
        ({"stream": "orders", "token": {"_data": "82bb"}}, 3, {"code": 11000, "message": "other"}),
    ]


def test_iterating_should_be_batched_and_survive_removals_along_the_way(harness):
    dead = DeadLetters(harness.state["dead_letters"], clock=FakeClock())
    for i in range(7):
        dead.park("orders", event(f"82{i:02}", f"d{i}"), code=1, message="m", attempts=1)
    dead.park("other", event("8200", "d0"), code=1, message="m", attempts=1)
    sizes, seen = [], []
    for batch in dead.iter_parked("orders", 3):
        sizes.append(len(batch))
        seen += [p.document_key["_id"] for p in batch]
        dead.remove(p.ref for p in batch[:2])  # delete some of what was just read
    assert sizes == [3, 3, 1]
    assert seen == [f"d{i}" for i in range(7)]
    assert dead.count("orders") == 2  # the third of each full batch
    assert dead.streams() == {"orders": 2, "other": 1}
    assert dead.purge("orders") == 2
    assert dead.count() == 1
