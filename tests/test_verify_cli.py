"""``python -m shared verify``: the report it prints (text and JSON), its exit codes, and the options it refuses.

The data comes from tests/test_verify.py's helpers, so what the command shows is checked on the same differences
that ``verify_stream`` is checked on there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.cli import main
from shared.id_values import MAX_ID_CHARS
from shared.verify import MAX_EXAMPLES, VerifyOptions
from tests.conftest import Harness, write_config
from tests.test_verify import MODES, copied, replicated

pytestmark = pytest.mark.usefixtures("restore_logging")


def config_file(harness: Harness, tmp_path: Path) -> str:
    checkpoints = {"connection_uri": harness.uri, "database": f"{harness.prefix}_rep"}
    return str(write_config(tmp_path, {"checkpoints": checkpoints, "streams": [harness.stream()]}))


@pytest.mark.parametrize("mode", MODES)
def test_count_difference_should_say_which_side_is_bigger(harness, mode, tmp_path, capsys):
    copied(harness, 10)
    harness.estuary.delete_many({"_id": {"$in": ["d0001", "d0002"]}})
    args = ["verify", "--config", config_file(harness, tmp_path), "--recheck-delay", "0"]
    assert main([*args, *(["--all"] if mode == "all" else [])]) == 1
    out = capsys.readouterr().out
    assert "counts     source 10, estuary 8: the source has 2 more" in out
    missing = next(line for line in out.splitlines() if line.startswith("    missing"))
    assert missing.startswith("    missing    2 in the source, not in the estuary: ")
    assert sorted(missing.split(": ")[1].split(", ")) == ['"d0001"', '"d0002"']  # sampled: in random order


@pytest.mark.parametrize("mode", MODES)
def test_cli_should_exit_0_with_one_block_per_stream_when_in_sync(harness, tmp_path, capsys, mode):
    replicated(harness, 10)
    args = ["verify", "--config", config_file(harness, tmp_path), *(["--all"] if mode == "all" else [])]
    assert main(args) == 0
    out = capsys.readouterr().out
    how = "every document, in _id order" if mode == "all" else "18 random _id(s) of both sides, by $sample"
    assert f"[ok] orders: in sync ({how})" in out
    assert "counts     source 9, estuary 9\n" in out
    assert "missing    0 in the source, not in the estuary\n" in out
    assert out.rstrip().endswith("all 1 stream(s) in sync")


def test_cli_json_should_parse_and_exit_1_with_bounded_examples_and_no_contents(harness, tmp_path, capsys):
    long_ids = [f"{i:02}-" + "x" * 100 for i in range(30)]
    harness.source.insert_many([{"_id": i, "card": "4111-1111-1111-1111"} for i in long_ids])
    path = config_file(harness, tmp_path)
    assert main(["verify", "--config", path, "--all", "--json", "--recheck-delay", "0.1"]) == 1
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["ok"] is False
    (stream,) = data["streams"]
    assert stream["missing"]["total"] == 30
    assert len(stream["missing"]["examples"]) == MAX_EXAMPLES
    assert all(len(e) <= MAX_ID_CHARS and e.endswith("…") for e in stream["missing"]["examples"])
    assert (stream["source_count"], stream["estuary_count"], stream["rechecked"]) == (30, 0, 30)
    assert "4111" not in out


def test_cli_should_exit_2_for_an_unknown_stream(harness, tmp_path, capsys):
    assert main(["verify", "--config", config_file(harness, tmp_path), "--stream", "nope"]) == 2
    assert "no stream named 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [{"sample": 0}, {"batch_size": 0}, {"recheck_limit": 0}, {"recheck_delay": -1}])
def test_options_should_be_refused_before_any_read_when_out_of_range(bad):
    with pytest.raises(ValueError, match="must be"):
        VerifyOptions(**bad)


def test_cli_should_refuse_sample_together_with_all(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["verify", "--all", "--sample", "5"])
    assert exc.value.code == 2
