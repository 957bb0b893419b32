"""Scoped streams in the configuration: what a whole-database or whole-cluster stream accepts, refuses, and derives."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import scope
from shared.config import ReplicatorConfig
from shared.config_loader import load_config
from shared.errors import ConfigError

SOURCE = "mongodb://source.example.net:27017/"
ESTUARY = "mongodb://estuary.example.net:27017/"


def stream(name: str = "shop", source: dict[str, Any] | None = None, estuary: dict[str, Any] | None = None, **kw: Any):
    return {
        "name": name,
        "source": {"connection_uri": SOURCE, "database": "shop", **(source or {})},
        "estuary": {"connection_uri": ESTUARY, "database": "shop_copy", **(estuary or {})},
        **kw,
    }


def configured(*streams: dict[str, Any]) -> ReplicatorConfig:
    return ReplicatorConfig.model_validate(
        {"checkpoints": {"connection_uri": ESTUARY, "database": "replicator"}, "streams": list(streams)}
    )


def problems(tmp_path: Path, *streams: dict[str, Any]) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"checkpoints": {"connection_uri": ESTUARY, "database": "r"}, "streams": list(streams)})
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    return info.value.problems


def test_a_database_scope_should_map_each_collection_to_its_own_name_with_every_setting():
    config = configured(stream(include=["orders*"], exclude=["*_tmp"], batch_size=77, initial_sync=True))
    shop = config.stream("shop")
    assert shop.scope == "database"
    unit = config.stream("shop/orders_eu")
    assert unit.name == "shop/orders_eu"
    assert (unit.source.database, unit.source.collection) == ("shop", "orders_eu")
    assert (unit.estuary.database, unit.estuary.collection) == ("shop_copy", "orders_eu")
    assert (unit.batch_size, unit.initial_sync, unit.scope) == (77, True, "collection")
    assert unit.source.connection_uri == SOURCE


def test_a_cluster_scope_should_keep_database_names_behind_the_prefix():
    config = configured(
        stream(
            "all",
            source={"database": None},
            estuary={"connection_uri": SOURCE, "database": None},
            estuary_database_prefix="copy_",
        )
    )
    unit = config.stream("all/shop.orders.2024")
    assert (unit.source.database, unit.source.collection) == ("shop", "orders.2024")
    assert (unit.estuary.database, unit.estuary.collection) == ("copy_shop", "orders.2024")
    with pytest.raises(ConfigError, match="database this stream writes to"):
        config.stream("all/copy_shop.orders")  # a collection the stream itself writes: never a source


@pytest.mark.parametrize(
    "member",
    ["orders_tmp", "customers", "system.views", "", "a$b"],
)
def test_a_unit_outside_the_patterns_or_invalid_should_be_refused_by_name(member):
    config = configured(stream(include=["orders*"], exclude=["*_tmp"]))
    with pytest.raises(ConfigError) as info:
        config.stream(f"shop/{member}")
    assert f"stream 'shop': '{member}'" in info.value.problems[0]


def test_a_single_collection_stream_should_refuse_a_collection_name():
    config = configured(stream("orders", source={"collection": "orders"}, estuary={"collection": "orders"}))
    assert config.stream("orders").scope == "collection"
    with pytest.raises(ConfigError, match="applies to a scoped stream"):
        config.stream("orders/x")


@pytest.mark.parametrize(
    ("streams", "expected"),
    [
        ([stream(estuary={"collection": "c"})], "streams[0].estuary.collection: must be omitted"),
        ([stream(estuary={"database": None})], "streams[0].estuary.database: is required"),
        ([stream(estuary={"connection_uri": SOURCE, "database": "shop"})], "is the source database itself"),
        ([stream(source={"database": None})], "streams[0].estuary.database: must be omitted"),
        (
            [stream(source={"database": None}, estuary={"connection_uri": SOURCE, "database": None})],
            "is the source cluster itself; set estuary_database_prefix",
        ),
        ([stream(estuary_database_prefix="x_")], "estuary_database_prefix: applies to a whole-cluster scope only"),
        (
            [stream(source={"collection": "o"}, estuary={"collection": "o"}, include=["o*"])],
            "streams[0].include: applies only to a scoped stream",
        ),
        ([stream(include=[" orders"])], "streams[0].include: pattern ' orders' must be non-empty"),
        (
            [stream(), stream("other")],
            "streams[1].estuary: may write into the same estuary collection as streams[0] ('shop')",
        ),
        (
            [stream(include=["orders*"]), stream("one", source={"collection": "x"}, estuary={"collection": "orders1"})],
            "streams[1].estuary: may write into the same estuary collection as streams[0]",
        ),
        (
            [
                stream("one", source={"collection": "x"}, estuary={"collection": "c"}),
                stream("two", source={"collection": "y"}, estuary={"collection": "c"}),
            ],
            "streams[1].estuary: may write into the same estuary collection",
        ),
        (
            [
                stream("all", source={"database": None}, estuary={"database": None}, estuary_database_prefix="c"),
                stream("one", source={"collection": "x"}, estuary={"database": "copy", "collection": "c"}),
            ],
            "streams[1].estuary: may write into the same estuary collection",
        ),
    ],
)
def test_scoped_streams_should_refuse_what_could_loop_or_collide(tmp_path, streams, expected):
    found = problems(tmp_path, *streams)
    assert any(expected in p for p in found), found


def test_streams_whose_estuaries_cannot_meet_should_be_accepted():
    configured(
        stream(include=["orders*"]),
        stream("one", source={"collection": "x"}, estuary={"collection": "customers"}),
        stream("two", estuary={"database": "other"}),
    )


@pytest.mark.parametrize(
    ("member", "kind", "include", "exclude", "covered"),
    [
        ("orders", "database", (), (), True),
        ("system.profile", "database", (), (), False),
        ("orders_tmp", "database", ("orders*",), ("*_tmp",), False),
        ("Orders", "database", ("orders*",), (), False),  # case-sensitive, as MongoDB names are
        ("shop.orders", "cluster", ("shop.*",), (), True),
        ("admin.x", "cluster", (), (), False),
        ("shop.system.js", "cluster", (), (), False),
        ("o1", "database", ("o[0-9]",), (), True),
    ],
)
def test_covers_should_apply_globs_and_never_cover_system_collections(member, kind, include, exclude, covered):
    assert scope.covers(member, kind, include, exclude) is covered


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [("orders*", "orders_eu", "xorders"), ("a?c", "abc", "abbc"), ("x.y+z", "x.y+z", "xay+z")],
)
def test_glob_regex_should_match_what_the_glob_matches(pattern, yes, no):
    regex = scope.glob_regex(pattern)
    assert regex is not None
    assert re.match(regex, yes)
    assert not re.match(regex, no)
    assert scope.glob_regex("o[12]") is None  # left to the client filter
