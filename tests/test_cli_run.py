"""``python -m shared run`` and ``status`` as real processes: SIGKILL mid-pass loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Harness, wait_until

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared", *args]


def write(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "replicator.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def config_for(harness: Harness, **stream: Any) -> dict[str, Any]:
    return harness.config(**stream).model_dump(mode="json")


def run_once(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli("run", "--once", "--config", path), cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_sigkill_in_the_middle_of_a_pass_should_lose_nothing(harness, tmp_path):
    assert run_once(write(tmp_path, config_for(harness, idle_timeout=0.5))).returncode == 0  # saves the start
    path = write(tmp_path, config_for(harness, idle_timeout=20, batch_size=50))
    runner = subprocess.Popen(cli("run", "--config", path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for chunk in range(20):
            harness.source.insert_many([{"_id": f"k{chunk:02}-{i:03}", "chunk": chunk} for i in range(100)])
            if chunk == 10:
                wait_until(lambda: harness.estuary.count_documents({}) > 0)
                runner.send_signal(signal.SIGKILL)  # no cleanup, no lease release, mid-stream
                runner.wait(10)
        harness.source.update_many({"chunk": {"$lt": 5}}, {"$set": {"updated": True}})
        harness.source.delete_many({"chunk": 7})
        assert harness.estuary.count_documents({}) < 2000  # it really died before finishing
        restarted = subprocess.Popen(
            cli("run", "--config", path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_until(harness.converged, timeout=60)  # after the dead worker's lease ran out
        restarted.send_signal(signal.SIGINT)
        out, err = restarted.communicate(timeout=30)
        assert restarted.returncode == 0, err
        assert "lease_held" in out  # it waited for the killed worker's lease instead of racing it
    finally:
        for process in (runner,):
            if process.poll() is None:
                process.kill()
    assert harness.estuary.count_documents({}) == 1900


def test_status_should_show_position_counters_and_exit_0(harness, tmp_path):
    path = write(tmp_path, config_for(harness, idle_timeout=0.5))
    assert run_once(path).returncode == 0
    harness.source.insert_many([{"_id": f"s{i}"} for i in range(5)])
    once = run_once(path)
    assert once.returncode == 0
    assert "orders: idle" in once.stdout
    assert "5 events" in once.stdout
    status = subprocess.run(cli("status", "--config", path), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0
    assert "orders: idle" in status.stdout
    assert "applied 5" in status.stdout
    as_json = subprocess.run(
        cli("status", "--json", "--config", path), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    (stream,) = json.loads(as_json.stdout)
    assert stream["counters"]["applied"] == 5
    assert stream["has_resume_token"] is True


def test_run_once_should_exit_1_when_a_stream_is_stopped(harness, tmp_path):
    path = write(tmp_path, config_for(harness, idle_timeout=0.5))
    assert run_once(path).returncode == 0
    harness.state.checkpoints.update_one(
        {"_id": "orders"}, {"$set": {"status": "stopped", "last_error": {"message": "the source reported 'drop'"}}}
    )
    once = run_once(path)
    assert once.returncode == 1
    assert "stopped" in once.stdout
    assert "the source reported 'drop'" in once.stdout


def test_run_should_refuse_an_unknown_stream_as_a_usage_error(harness, tmp_path):
    path = write(tmp_path, config_for(harness))
    result = subprocess.run(
        cli("run", "--stream", "nope", "--config", path), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "no stream named 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
