"""The quickstart validation scenarios (``scripts/quickstart.sh``): every one passes, and nothing is left running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localdev.quickstart import SCENARIOS
from tests.localdev.conftest import processes_using

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_leftovers")]


def test_quickstart_should_pass_every_scenario_and_stop_everything_it_started(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDENTITY_", "MSI_", "WEBSITE_"))}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(
        [sys.executable, "-m", "localdev.quickstart", "--work-dir", str(tmp_path / "quickstart")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    out = run.stdout + run.stderr

    lines = [line for line in run.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert run.returncode == 0, out
    assert [line.split(".", 1)[0] for line in lines] == [f"PASS  {n}" for n in range(1, len(SCENARIOS) + 1)], out
    assert len(SCENARIOS) == 7
    for line, scenario in zip(lines, SCENARIOS, strict=True):
        assert scenario.claim in line
    assert f"{len(SCENARIOS)} of {len(SCENARIOS)} scenarios passed" in out
    assert "stand-ins stopped" in out
    assert processes_using(tmp_path) == {}
