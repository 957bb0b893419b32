"""Operator actions and tick checks: token-age health, reset from now / resnapshot, status of a copy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from shared.cli import main
from shared.operations import check_token_ages, schedule, token_health
from shared.position import Checkpoint
from shared.replicate import reset_stream
from tests.conftest import Harness

pytestmark = pytest.mark.usefixtures("restore_logging")


def checkpoint(**fields: object) -> Checkpoint:
    return Checkpoint(stream="orders", resume_token={"_data": "t"}, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("age", "level"),
    [(10, "ok"), (60, "warning"), (90, "critical")],  # window: 100 MB at 1 MB/s = 100 s
)
def test_token_health_should_compare_the_tokens_age_with_the_change_log_window(age, level):
    health = token_health(
        checkpoint(token_saved_at=1000.0, source_bytes_per_s=1024 * 1024), change_log_mb=100, now=1000.0 + age
    )
    assert health.level == level
    assert health.window_s == pytest.approx(100.0)
    assert health.ratio == pytest.approx(age / 100)


def test_token_health_should_be_unknown_without_a_token_or_a_rate():
    assert token_health(Checkpoint(stream="orders"), change_log_mb=400, now=5.0).level == "unknown"
    assert token_health(checkpoint(token_saved_at=1.0), change_log_mb=400, now=5.0).level == "unknown"


def test_a_pass_should_record_the_sources_change_rate(harness: Harness):
    replicator = harness.replicator()
    replicator.run_pass("orders")
    harness.source.insert_many([{"_id": f"r{i}", "pad": "x" * 200} for i in range(100)])
    replicator.run_pass("orders")
    saved = harness.checkpoints.read("orders")
    assert saved is not None
    assert (saved.source_bytes_per_s or 0) > 1000


def test_the_tick_should_warn_about_an_aging_token_and_still_schedule(harness: Harness, caplog):
    services = harness.services()
    services.replicator.run_pass("orders")
    harness.state.checkpoints.update_one(
        {"_id": "orders"}, {"$set": {"token_saved_at": 0.0, "source_bytes_per_s": 10_000_000.0}}
    )
    with caplog.at_level(logging.WARNING, logger="shared"):
        messages = schedule(
            services.config,
            checkpoints=services.checkpoints,
            discovery=services.discovery,
            metrics=services.metrics,
            correlation_id="tick-1",
            now=100.0,
        )
    assert len(messages) == 1
    assert "its saved resume token is 100 s old" in caplog.text
    (health,) = check_token_ages(services.config, checkpoints=services.checkpoints, metrics=services.metrics, now=100.0)
    assert health.level == "critical"  # 400 MB at 10 MB/s is about 42 s
    assert harness.metrics.value("replicator_token_age_seconds", stream="orders", level="critical") >= 1


def test_reset_from_now_should_record_the_skipped_span_as_a_gap_and_clear_the_failure(harness: Harness):
    replicator = harness.replicator()
    replicator.run_pass("orders")
    harness.source.insert_one({"_id": "seen"})
    replicator.run_pass("orders")
    harness.state.checkpoints.update_one(
        {"_id": "orders"}, {"$set": {"status": "failed", "last_error": {"message": "history lost"}}}
    )
    harness.source.insert_one({"_id": "skipped"})  # written while the stream was failed: the reset skips it
    reset = reset_stream(harness.config().stream("orders"), "now", checkpoints=harness.checkpoints)
    assert reset.status == "idle"
    assert reset.last_error is None
    assert reset.resume_token is None
    assert [g["reason"] for g in reset.gaps] == ["operator reset: restarted from now"]
    replicator.run_pass("orders")
    harness.source.insert_one({"_id": "after"})
    replicator.run_pass("orders")
    assert sorted(d["_id"] for d in harness.estuary.find()) == ["after", "seen"]


def test_reset_to_resnapshot_should_copy_the_collection_again_and_converge(harness: Harness):
    replicator = harness.replicator()
    replicator.run_pass("orders")
    harness.source.insert_many([{"_id": f"k{i:03}"} for i in range(50)])
    harness.estuary.insert_one({"_id": "drifted"})  # the estuary drifted while nobody looked
    reset = reset_stream(harness.config().stream("orders"), "resnapshot", checkpoints=harness.checkpoints)
    assert reset.phase == "copying"
    result = replicator.run_pass("orders")
    assert result.copied == 50
    assert harness.converged()


def test_reset_should_refuse_while_a_pass_holds_the_lease(harness: Harness, tmp_path: Path, capsys):
    acquired = harness.checkpoints.acquire("orders", "busy-worker", 30)
    assert acquired is not None
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(harness.config().model_dump(mode="json")))
    assert main(["reset", "--config", str(path), "--stream", "orders", "--from", "now"]) == 1
    assert "a pass of stream orders is running" in capsys.readouterr().err


def test_status_should_show_a_copy_in_progress_with_its_estimate(harness: Harness, tmp_path: Path, capsys):
    harness.source.insert_many([{"_id": f"c{i:04}"} for i in range(1000)])
    config = harness.config(initial_sync=True, batch_size=100, time_budget=0.05)
    replicator = harness.replicator(config)
    replicator.run_pass("orders")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "COPYING    " in out
    assert "of ~1000 documents (initial_sync)" in out
