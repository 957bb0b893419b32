"""``cursor: single``: one change stream for a whole database or cluster, scripted with mockupdb (nx-27017 returns
nothing for a database- or cluster-level ``watch()``); the estuary and the checkpoints are on nx-27017.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from bson import Timestamp
from mockupdb import OpMsg

from shared.cli import main
from shared.config import ReplicatorConfig
from shared.work_queue import pass_requests
from tests.change_streams import CURSOR, Answer, ScriptedSource, plain
from tests.conftest import Harness


class WideSource(ScriptedSource):
    """A scripted server whose change stream is opened on a database or the cluster (``aggregate: 1``); every
    aggregate's whole pipeline is kept in ``pipelines``."""

    def reset(self) -> None:
        super().reset()
        self.pipelines: list[list[dict[str, Any]]] = []
        self.databases: list[str] = []

    def start(self) -> WideSource:
        self.server.autoresponds(OpMsg("aggregate", 1), self._wide_aggregate)
        self.server.autoresponds(OpMsg("getMore", CURSOR), self._get_more)
        self.server.autoresponds(lambda r: r.command_name == "killCursors" and r.ok(cursorsKilled=[CURSOR]))
        self.server.autoresponds("endSessions")
        self.server.run()
        return self

    def _wide_aggregate(self, request: Any) -> Any:
        self.pipelines.append([dict(stage) for stage in request.doc["pipeline"]])
        self.databases.append(request.doc["$db"])
        return self._aggregate(request)


def event(token: str, db: str, coll: str, _id: Any, kind: str = "insert") -> dict[str, Any]:
    return {
        "_id": {"_data": token},
        "operationType": kind,
        "clusterTime": Timestamp(1_800_000_000, int(re.sub(r"\D", "", token) or 1)),
        "ns": {"db": db, "coll": coll},
        "documentKey": {"_id": _id},
        "fullDocument": {"_id": _id, "from": f"{db}.{coll}"},
    }


@pytest.fixture(scope="module")
def wide_server() -> Iterator[WideSource]:
    started = WideSource().start()
    yield started
    started.server.stop()


@pytest.fixture
def wide(wide_server: WideSource) -> WideSource:
    wide_server.reset()
    return wide_server


def single_config(harness: Harness, wide: WideSource, **stream: Any) -> ReplicatorConfig:
    source = {"connection_uri": wide.uri, "database": "shop", **stream.pop("source", {})}
    estuary = {"connection_uri": harness.uri, "database": f"{harness.prefix}_dst", **stream.pop("estuary", {})}
    return ReplicatorConfig.model_validate(
        {
            "checkpoints": {"connection_uri": harness.uri, "database": f"{harness.prefix}_rep"},
            "streams": [
                {
                    "name": "shop",
                    "cursor": "single",
                    "source": source,
                    "estuary": estuary,
                    "poll_interval": 0.1,
                    "idle_timeout": 0.3,
                    "time_budget": 20,
                    "lease_duration": 10,
                    **stream,
                }
            ],
        }
    )


def test_one_database_stream_should_route_each_collection_and_keep_one_token(harness: Harness, wide: WideSource):
    wide.aggregates = [
        Answer(
            [
                event("t1", "shop", "orders_eu", 1),
                event("t2", "shop", "customers", "c1"),
                event("t3", "shop", "orders_tmp", 1),  # excluded
                event("t4", "shop", "replicator_fences", "shop:orders_eu"),  # the replicator's own
                event("t5", "shop", "orders_eu", 2),
                event("t6", "shop", "orders_eu", 1, kind="delete"),
            ],
            post_batch="pb6",
        )
    ]
    config = single_config(harness, wide, include=["orders*", "customers"], exclude=["*_tmp"])
    services = harness.services(config)
    (message,) = pass_requests(config, correlation_id="tick", now=0.0)
    assert '"collections"' not in message  # one pass for the whole database

    result = services.replicator.run_pass("shop")
    assert (result.events, result.applied, result.skipped) == (6, 3, 3)  # two not ours, one collapsed (t2 by t6)
    assert result.outcome == "idle"
    estuary = harness.estuary.database
    assert list(estuary["orders_eu"].find()) == [{"_id": 2, "from": "shop.orders_eu"}]
    assert list(estuary["customers"].find()) == [{"_id": "c1", "from": "shop.customers"}]
    assert "orders_tmp" not in estuary.list_collection_names()
    checkpoint = services.checkpoints.read("shop")
    assert checkpoint is not None
    assert plain(checkpoint.resume_token) in ({"_data": "t6"}, {"_data": "pb6"})  # one shared token, past all six
    assert services.checkpoints.units("shop") == []  # no per-collection checkpoints in this mode

    (pipeline,) = wide.pipelines
    assert wide.databases == ["shop"]
    assert "allChangesForCluster" not in pipeline[0]["$changeStream"]
    match = pipeline[1]["$match"]["$and"]
    assert {"ns.coll": {"$not": {"$regex": "^system\\."}}} in match
    regexes = [c["ns.coll"]["$regex"] for c in match[-1]["$or"] if "$regex" in c.get("ns.coll", {})]
    assert regexes == ["^orders.*$", "^customers$"]


def test_a_cluster_stream_should_open_on_admin_for_all_changes_and_keep_database_names(
    harness: Harness, wide: WideSource
):
    wide.aggregates = [
        Answer([event("t1", "shop", "orders", 1), event("t2", "crm", "people", "p"), event("t3", "admin", "x", 1)])
    ]
    config = single_config(
        harness,
        wide,
        source={"database": None},
        estuary={"database": None},
        estuary_database_prefix=f"{harness.prefix}_",
    )
    result = harness.services(config).replicator.run_pass("shop")
    assert (result.events, result.applied, result.skipped) == (3, 2, 1)
    client = harness.estuary.database.client
    assert client[f"{harness.prefix}_shop"]["orders"].find_one({"_id": 1}) == {"_id": 1, "from": "shop.orders"}
    assert client[f"{harness.prefix}_crm"]["people"].find_one({"_id": "p"}) == {"_id": "p", "from": "crm.people"}
    (pipeline,) = wide.pipelines
    assert wide.databases == ["admin"]
    assert pipeline[0]["$changeStream"]["allChangesForCluster"] is True
    assert {"ns.db": {"$nin": ["admin", "config", "local"]}} in pipeline[1]["$match"]["$and"]


def test_a_refused_document_should_be_parked_under_its_collection(harness: Harness, wide: WideSource):
    harness.estuary.database["orders"].create_index("sku", unique=True)
    harness.estuary.database["orders"].insert_one({"_id": "existing", "sku": "A"})
    refused = event("t1", "shop", "orders", "dup")
    refused["fullDocument"] = {"_id": "dup", "sku": "A"}
    wide.aggregates = [Answer([refused, event("t2", "shop", "orders", "ok")])]
    services = harness.services(single_config(harness, wide, max_apply_attempts=1))
    result = services.replicator.run_pass("shop")
    assert (result.applied, result.dead_lettered) == (1, 1)
    assert services.dead_letters.streams() == {"shop/orders": 1}


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"initial_sync": True}, "initial_sync: needs cursor: per_collection"),
        ({"on_history_lost": "resnapshot"}, "on_history_lost: 'resnapshot' needs cursor: per_collection"),
        ({"source": {"collection": "orders"}, "estuary": {"collection": "orders"}}, "cursor: applies only to a scoped"),
    ],
)
def test_single_cursor_settings_that_cannot_work_should_be_refused(
    harness: Harness, wide: WideSource, setting, expected
):
    data = single_config(harness, wide).model_dump()
    stream = data["streams"][0]
    for key, value in setting.items():
        stream[key] = {**stream[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=re.escape(expected)):
        ReplicatorConfig.model_validate(data)


def test_reset_at_a_time_should_check_the_database_stream_and_restart_the_whole_stream_there(
    harness: Harness, wide: WideSource, tmp_path, capsys, restore_logging
):
    path = tmp_path / "replicator.yaml"
    path.write_text(yaml.safe_dump(single_config(harness, wide).model_dump(mode="json")))
    at = int(time.time()) - 600
    assert main(["reset", "--config", str(path), "--stream", "shop", "--at", f"{at}:1"]) == 0
    assert "shop: the next pass starts at" in capsys.readouterr().out
    assert wide.databases == ["shop"]  # checked on the database's change stream, not on a collection
    assert wide.opened[0]["startAtOperationTime"] == Timestamp(at, 1)
    assert main(["reset", "--config", str(path), "--stream", "shop", "--collection", "orders", "--from", "now"]) == 2
    assert "address it without --collection" in capsys.readouterr().err
