"""The command line: exit codes 0 / 1 / 2, readable reports, no tracebacks for user errors, no secrets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from localdev.standins.child import free_port
from shared.cli import main
from tests.conftest import stack_config, write_config

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("restore_logging")


def bad_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        {
            "checkpoints": {"connection_uri": "mongodb://h/", "database": "r"},
            "streams": [
                {
                    "name": "orders",
                    "source": {
                        "connection_uri": "mongodb://u:Sup3rS3cret@h/",
                        "database": "s",
                        "collection": "o",
                        "auth_method": "entra",
                    },
                    "estuary": {"connection_uri": "mongodb://e/", "database": "s", "collection": "o"},
                }
            ],
        },
    )


def test_validate_should_exit_0_and_summarise_a_good_config(tmp_path, capsys):
    path = write_config(
        tmp_path,
        {
            "checkpoints": {"connection_uri": "mongodb://h/", "database": "r"},
            "streams": [
                {
                    "name": "a",
                    "source": {"connection_uri": "mongodb://h/", "database": "s", "collection": "o"},
                    "estuary": {"connection_uri": "mongodb://e/", "database": "s", "collection": "o"},
                }
            ],
        },
    )
    assert main(["validate", "--config", str(path)]) == 0
    assert "configuration OK: 1 stream(s), 1 enabled; 3 endpoint(s), 0 using Entra ID" in capsys.readouterr().out


def test_validate_should_exit_2_and_list_every_problem_without_secrets(tmp_path, capsys):
    assert main(["validate", "--config", str(bad_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "error: invalid configuration in" in err
    assert "streams[0].source.tenant_id: is required when auth_method is 'entra'" in err
    assert "streams[0].source.connection_uri: must not contain a user name or password" in err
    assert "Sup3rS3cret" not in err
    assert "Traceback" not in err


def test_validate_json_should_print_the_problems_as_json(tmp_path, capsys):
    assert main(["validate", "--json", "--config", str(bad_config(tmp_path))]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert len(out["problems"]) == 2


def test_commands_should_explain_where_configuration_comes_from_when_none_is_given(monkeypatch, capsys):
    monkeypatch.delenv("REPLICATOR_CONFIG", raising=False)
    assert main(["validate"]) == 2
    assert "Tip: pass --config FILE, or set the app setting REPLICATOR_CONFIG" in capsys.readouterr().err


def test_test_auth_should_exit_0_and_print_one_block_per_endpoint(stack, tmp_path, capsys):
    path = write_config(tmp_path, stack_config(stack))
    assert main(["test-auth", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[ok] checkpoints" in out
    assert "[ok] streams[0] (orders).source" in out
    assert "principal (object id) 0b1c2d3e-0000-4000-8000-0000000000b2" in out
    assert out.rstrip().endswith("all endpoints OK")


def test_test_auth_should_exit_1_with_a_tip_when_an_endpoint_fails(stack, tmp_path, capsys):
    data = stack_config(stack)
    data["streams"][0]["estuary"]["connection_uri"] = "mongodb://127.0.0.1:1/?directConnection=true"
    path = write_config(tmp_path, data)
    assert main(["test-auth", "--timeout", "1", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] streams[0] (orders).estuary" in out
    assert "ping   FAILED: could not reach 127.0.0.1" in out
    assert "Tip: check the cluster's firewall rules" in out
    assert "1 of 3 endpoint(s) FAILED" in out


def test_test_auth_json_should_be_parseable_and_free_of_tokens(stack, tmp_path, capsys):
    path = write_config(tmp_path, stack_config(stack))
    assert main(["test-auth", "--json", "--config", str(path)]) == 0
    raw = capsys.readouterr().out
    report = json.loads(raw)
    assert report["ok"] is True
    assert [e["ok"] for e in report["endpoints"]] == [True, True, True]
    assert not any(token in raw for token in stack.stub.issued_tokens)


def test_test_auth_should_exit_2_when_the_config_is_invalid(tmp_path, capsys):
    assert main(["test-auth", "--config", str(bad_config(tmp_path))]) == 2
    assert "invalid configuration" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "code"), [(["validate"], 2), ([], 2), (["no-such-command"], 2)])
def test_the_real_entry_point_should_exit_with_usage_codes_and_no_traceback(tmp_path, args, code):
    if args == ["validate"]:
        args = ["validate", "--config", str(bad_config(tmp_path))]
    result = subprocess.run(
        [sys.executable, "-m", "shared", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == code
    assert "Traceback" not in result.stderr


def test_test_auth_should_refuse_a_non_positive_timeout_as_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["test-auth", "--timeout", "-1", "--config", str(bad_config(tmp_path))])
    assert info.value.code == 2
    assert "must be a positive number of seconds, not '-1'" in capsys.readouterr().err


def unreachable_config(tmp_path: Path) -> tuple[Path, str]:
    """Every endpoint on a loopback port nothing listens on, found out within a second."""
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    uri = f"mongodb://{address}/?directConnection=true&serverSelectionTimeoutMS=500"
    endpoint = {"connection_uri": uri, "database": "shop", "collection": "orders"}
    config = {
        "checkpoints": {"connection_uri": uri, "database": "rep"},
        "streams": [{"name": "orders", "source": endpoint, "estuary": {**endpoint, "database": "copy"}}],
    }
    return write_config(tmp_path, config), address


@pytest.mark.parametrize(
    ("args", "stream"),
    [
        (["status"], ""),
        (["run", "--once"], "orders: pass failed: "),
        (["verify"], "[FAIL] orders: could not verify: "),
        (["dead-letters", "list"], ""),
        (["reset", "--stream", "orders", "--from", "now"], ""),
    ],
    ids=["status", "run", "verify", "dead-letters", "reset"],
)
def test_every_command_should_say_which_server_it_could_not_reach_when_none_answers(tmp_path, capsys, args, stream):
    path, address = unreachable_config(tmp_path)
    assert main([args[0], "--config", str(path), *args[1:]]) == 1
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert f"{stream}could not reach {address}" in output
    assert "firewall rules / private endpoint, DNS" in output  # the same Tip as test-auth's
    assert "Topology Description" not in output
    assert "unexpected" not in output
