"""The local demo (``scripts/run-local.sh``) end to end: live replication, verified, nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.localdev.conftest import processes_using

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_leftovers")]


def _demo(cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDENTITY_", "MSI_", "WEBSITE_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "localdev.demo", *args],
        cwd=cwd,  # the demo writes .local/ here, not into the checkout
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a command started from a terminal
    )


def test_demo_should_replicate_live_and_find_estuary_equal_to_source_when_run_for_a_few_seconds(tmp_path):
    demo = _demo(tmp_path, "--seconds", "3")
    out, _ = demo.communicate(timeout=80)

    assert demo.returncode == 0, out
    assert "all endpoints OK" in out
    assert "replicating" in out
    assert "estuary == source: OK" in out
    assert "stand-ins stopped" in out
    assert processes_using(tmp_path) == {}


def test_demo_should_catch_up_verify_and_stop_everything_when_its_process_group_gets_ctrl_c(tmp_path):
    demo = _demo(tmp_path, "--seconds", "60")
    assert demo.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the writer and the replicator are running
        line = demo.stdout.readline()
        lines.append(line)
        if not line or " replicating |" in line:
            break
    os.killpg(demo.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole group, servers included
    out, _ = demo.communicate(timeout=60)
    out = "".join(lines) + out

    assert demo.returncode == 0, out
    assert "estuary == source: OK" in out
    assert "stand-ins stopped" in out
    assert processes_using(tmp_path) == {}
