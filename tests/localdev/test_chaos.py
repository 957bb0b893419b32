"""The chaos soak (``scripts/chaos.sh``): a short run end to end, its cleanup, and the logic it decides with."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from localdev.chaos import cli, monitor
from localdev.chaos.faults import KINDS, FaultSchedule
from localdev.chaos.report import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Report, exit_code, problems, render_text
from localdev.chaos.world import LEASE_DURATION
from tests.localdev.conftest import is_alive, processes_using

ROOT = Path(__file__).resolve().parents[2]


def _chaos(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDENTITY_", "MSI_", "WEBSITE_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localdev.chaos",
            "--workers",
            "3",
            "--json",
            "--work-dir",
            str(tmp_path / "work"),
            *args,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a command started from a terminal
    )


def _nothing_left(tmp_path: Path, report: dict[str, Any]) -> None:
    assert report["pids"], "no worker was started"
    assert [pid for pid in report["pids"] if is_alive(pid)] == []
    assert processes_using(tmp_path) == {}


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_leftovers")
def test_chaos_should_find_no_difference_after_faults_of_many_kinds_when_run_for_40_seconds(tmp_path: Path) -> None:
    run = _chaos(tmp_path, "--seconds", "40", "--seed", "7")
    out, err = run.communicate(timeout=170)

    assert run.returncode == 0, f"{out}\n{err[-5000:]}"
    report = json.loads(out)
    assert report["ok"] is True
    assert report["problems"] == []
    assert len([kind for kind, n in report["faults"].items() if n > 0]) >= 5, report["faults"]
    assert sum(report["events_written"].values()) > 0
    assert sum(report["applied"].values()) > 0
    assert sum(report["events"].values()) > 0
    dead = report["dead_letters"]
    assert dead["not_poison_count"] == 0
    assert dead["planted"] > 0
    assert 0 < dead["poison_parked"] <= dead["planted"]
    assert report["verify"]["ok"] is True
    assert report["verify"]["report"]["complete"] is True
    assert report["bytes"]["identical"] is True
    assert sum(stream["source"] for stream in report["bytes"]["streams"].values()) > 0
    assert report["longest_lag"] >= 0
    _nothing_left(tmp_path, report)


@pytest.mark.timeout(150)
@pytest.mark.usefixtures("no_leftovers")
def test_chaos_should_catch_up_verify_and_stop_everything_when_sigterm_ends_the_run_early(tmp_path: Path) -> None:
    run = _chaos(tmp_path, "--minutes", "10", "--seed", "3")
    assert run.stderr is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # wait until the workload and the faults run
        line = run.stderr.readline()
        if not line or line.startswith("streaming;"):
            break
    time.sleep(5)
    os.killpg(run.pid, signal.SIGTERM)
    out, err = run.communicate(timeout=140)

    assert run.returncode == 0, f"{out}\n{err[-5000:]}"
    report = json.loads(out)
    assert report["interrupted"] is True
    assert report["seconds"] < 60
    assert report["verify"]["ok"] is True
    assert report["bytes"]["identical"] is True
    _nothing_left(tmp_path, report)


# ---------------------------------------------------------------------------------------------- the schedule


def test_schedule_should_draw_every_kind_once_per_round_in_a_seeded_order() -> None:
    faults = FaultSchedule(7, workers=3).take(3 * len(KINDS))

    for start in range(0, len(faults), len(KINDS)):
        assert sorted(f.kind for f in faults[start : start + len(KINDS)]) == sorted(KINDS)
    assert faults == FaultSchedule(7, workers=3).take(len(faults))
    assert [f.kind for f in faults] != [f.kind for f in FaultSchedule(8, workers=3).take(len(faults))]


def test_schedule_should_keep_gaps_targets_and_durations_within_their_bounds() -> None:
    faults = FaultSchedule(1, workers=2).take(200)

    assert all(2.0 <= f.after <= 4.0 and 0 <= f.target < 2 for f in faults)
    assert all(f.duration > LEASE_DURATION for f in faults if f.kind == "stop")  # paused past its lease
    assert all(3.0 <= f.duration <= 12.0 for f in faults if f.kind == "stall")
    assert all(f.count >= 1 for f in faults)
    assert {f.variant for f in faults if f.kind == "write_error"} == {"shutdown", "reset"}


def test_schedule_should_refuse_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown"):
        FaultSchedule(1, workers=1, kinds=("kill", "meteor"))


# ---------------------------------------------------------------------------------------------- the verdict


def _report(**changes: Any) -> Report:
    fields: dict[str, Any] = {
        "seconds": 40.0,
        "workers": 3,
        "seed": 7,
        "faults": {"kill": 2, "stall": 1},
        "faults_skipped": {},
        "events_written": {"orders": 10},
        "events": {"orders": 10},
        "applied": {"orders": 9},
        "dead_letters": {"parked": 1, "planted": 2, "poison_parked": 1, "not_poison_count": 0, "not_poison": []},
        "longest_lag": 1.5,
        "lag_by_stream": {"orders": 1.5},
        "caught_up": True,
        "catch_up_seconds": 3.0,
        "verify": {"ok": True, "exit": 0, "report": {"verdict": "all 1 stream(s) in sync"}},
        "bytes": {"identical": True, "streams": {"orders": {"source": 5}}},
    }
    return Report(**{**fields, **changes})


def test_report_should_pass_only_when_verify_bytes_and_dead_letters_agree() -> None:
    assert exit_code(_report()) == EXIT_OK
    assert "RESULT: OK" in render_text(_report())

    failing = {
        "verify": {"ok": False, "exit": 1, "report": {"verdict": "1 of 1 stream(s) OUT OF SYNC"}},
        "bytes": {"identical": False, "streams": {}},
        "dead_letters": {"parked": 2, "planted": 2, "poison_parked": 1, "not_poison_count": 1, "not_poison": []},
        "caught_up": False,
        "worker_exits": [{"worker": "worker-1", "code": 1, "log": "worker-1.log"}],
        "harness_errors": ["workload: AutoReconnect"],
    }
    for field, value in failing.items():
        report = _report(**{field: value})
        assert exit_code(report) == EXIT_FAILED, field
        assert len(problems(report)) == 1, field
        assert "RESULT: FAILED" in render_text(report)


def test_report_should_fail_when_poison_was_planted_but_none_was_parked() -> None:
    nothing_parked = {"parked": 0, "planted": 3, "poison_parked": 0, "not_poison_count": 0, "not_poison": []}
    assert problems(_report(dead_letters=nothing_parked)) == ["poison documents were planted but none was parked"]
    none_planted = {"parked": 0, "planted": 0, "poison_parked": 0, "not_poison_count": 0, "not_poison": []}
    assert exit_code(_report(dead_letters=none_planted)) == EXIT_OK


@pytest.mark.parametrize(
    "argv",
    [["--workers", "0"], ["--seconds", "0"], ["--minutes", "1", "--seconds", "5"], ["--rate", "-1"], ["--bogus"]],
)
def test_cli_should_exit_2_on_bad_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == EXIT_USAGE


def test_pass_outcomes_should_count_the_pass_lines_and_failures_of_the_worker_logs(tmp_path: Path) -> None:
    log = tmp_path / "worker-0.log"
    log.write_text(
        "orders: budget      120 events (6/s), 118 applied, 0 dead-lettered, lag 0.2s, 20.0s\n"
        "customers: lease_held  0 events (0/s), 0 applied, 0 dead-lettered, lag -, 0.0s\n"
        "orders: pass failed: WriteError: Request rate is large, full error: {'code': 16500}\n"
        "2026-01-01 10:00:00,000 INFO    shared.replicate.passes [x] stream orders: pass ended (budget): 1 events\n"
    )

    found = monitor.pass_outcomes([log])

    assert found["outcomes"] == {"budget": 1, "lease_held": 1}
    assert found["failures"] == 1
    assert list(found["failure_kinds"]) == ["WriteError: Request rate is large, full error: {'code': N}"]
