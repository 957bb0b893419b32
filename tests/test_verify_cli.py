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
FLAGS = {"all": [], "sample": ["--sample", "1000"]}  # no flag: every document


def config_file(harness: Harness, tmp_path: Path) -> str:
    checkpoints = {"connection_uri": harness.uri, "database": f"{harness.prefix}_rep"}
    return str(write_config(tmp_path, {"checkpoints": checkpoints, "streams": [harness.stream()]}))


@pytest.mark.parametrize("mode", MODES)
def test_count_difference_should_say_which_side_is_bigger(harness, mode, tmp_path, capsys):
    copied(harness, 10)
    harness.estuary.delete_many({"_id": {"$in": ["d0001", "d0002"]}})
    args = ["verify", "--config", config_file(harness, tmp_path), "--recheck-delay", "0"]
    assert main([*args, *FLAGS[mode]]) == 1
    out = capsys.readouterr().out
    assert "counts     source 10, estuary 8: the source has 2 more" in out
    missing = next(line for line in out.splitlines() if line.startswith("    missing"))
    assert missing.startswith("    missing    2 in the source, not in the estuary: ")
    assert sorted(missing.split(": ")[1].split(", ")) == ['"d0001"', '"d0002"']  # sampled: in random order


@pytest.mark.parametrize("flags", [[], ["--all"]], ids=["default", "--all"])
def test_cli_should_exit_0_with_one_block_per_stream_when_in_sync(harness, tmp_path, capsys, flags):
    replicated(harness, 10)
    assert main(["verify", "--config", config_file(harness, tmp_path), *flags]) == 0
    out = capsys.readouterr().out
    assert "[ok] orders: in sync (every document, in _id order)" in out
    assert "counts     source 9, estuary 9\n" in out
    assert "missing    0 in the source, not in the estuary\n" in out
    assert out.rstrip().endswith("all 1 stream(s) in sync")


def test_cli_sample_should_pass_without_ever_saying_in_sync(harness, tmp_path, capsys):
    replicated(harness, 10)
    assert main(["verify", "--config", config_file(harness, tmp_path), "--sample", "1000"]) == 0
    out = capsys.readouterr().out
    line = "no difference in 9 sampled documents; not a full comparison (18 random _id(s) of both sides, by $sample)"
    assert f"[ok] orders: {line}" in out
    assert "counts     source 9, estuary 9\n" in out
    assert "not a full comparison" in out.rstrip().splitlines()[-1]
    assert "in sync" not in out


def test_cli_without_flags_should_find_a_deleted_an_added_and_a_modified_document_at_equal_counts(
    harness, tmp_path, capsys
):
    copied(harness)  # the reproduction: a sample of 1000 _ids said "in sync" here and exited 0
    harness.estuary.delete_one({"_id": "d0003"})
    harness.estuary.insert_one({"_id": "zz-extra", "v": 1})
    harness.estuary.update_one({"_id": "d0007"}, {"$set": {"v": -7}})
    assert main(["verify", "--config", config_file(harness, tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] orders: OUT OF SYNC (every document, in _id order)" in out
    assert "counts     source 30, estuary 30\n" in out
    assert 'missing    1 in the source, not in the estuary: "d0003"\n' in out
    assert 'extra      1 in the estuary, not in the source: "zz-extra"\n' in out
    assert 'differing  1 in both, estuary copy differs: "d0007"\n' in out
    assert out.rstrip().endswith("1 of 1 stream(s) OUT OF SYNC")
    assert "in sync" not in out.replace("OUT OF SYNC", "")


@pytest.mark.parametrize(("flags", "complete"), [([], True), (["--all"], True), (["--sample", "1000"], False)])
def test_cli_json_should_say_whether_every_document_was_compared(harness, tmp_path, capsys, flags, complete):
    copied(harness, 20)
    assert main(["verify", "--config", config_file(harness, tmp_path), "--json", *flags]) == 0
    data = json.loads(capsys.readouterr().out)
    (stream,) = data["streams"]
    assert (data["ok"], data["complete"], stream["ok"], stream["complete"]) == (True, complete, True, complete)
    assert stream["mode"] == ("all" if complete else "sample")
    if complete:
        assert (data["verdict"], stream["verdict"]) == ("all 1 stream(s) in sync", "in sync")
    else:
        assert stream["verdict"] == "no difference in 20 sampled documents; not a full comparison"
        assert "not a full comparison" in data["verdict"]
        assert "in sync" not in data["verdict"]


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


def test_the_default_options_should_compare_every_document():
    assert VerifyOptions().mode == "all"


def test_help_should_say_the_default_is_full_and_sample_is_not(capsys):
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "not a comparison of every document" in text
    assert "--all compare every document (the default, so this flag changes nothing" in text


def test_cli_should_refuse_sample_together_with_all(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["verify", "--all", "--sample", "5"])
    assert exc.value.code == 2
