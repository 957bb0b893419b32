"""The end of a run: its figures, the verdict (``problems``, ``exit_code``) and how they are shown.

A run passes only when a full ``verify`` finds no difference, the stored bytes of every document are identical on
both sides, every dead letter is a planted poison document (and at least one was parked when any was planted: the
refusal path ran), the replicator caught up, no worker ended on its own, and the harness itself did not fail.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class Report:
    """Everything a run reports (``--json`` prints it as one object, plus ``ok`` and ``problems``)."""

    seconds: float
    workers: int
    seed: int
    faults: dict[str, int]
    faults_skipped: dict[str, int]
    events_written: dict[str, int]
    events: dict[str, int]  # per stream: the checkpoint's ``events`` counter (change events read and saved)
    applied: dict[str, int]  # per stream: the checkpoint's ``applied`` counter
    dead_letters: dict[str, Any]
    longest_lag: float
    lag_by_stream: dict[str, float]
    caught_up: bool
    catch_up_seconds: float
    verify: dict[str, Any]
    bytes: dict[str, Any]
    operations: dict[str, int] = field(default_factory=dict)
    seeded: int = 0
    passes: dict[str, Any] = field(default_factory=dict)
    worker_restarts: int = 0
    worker_exits: list[dict[str, Any]] = field(default_factory=list)  # ended on their own: findings
    forced_at_shutdown: list[str] = field(default_factory=list)
    duplicate_exits: dict[str, int] = field(default_factory=dict)  # exit code -> how many ``run --once`` ended so
    pids: list[int] = field(default_factory=list)
    token_requests: int = 0
    reauth_sent: int = 0
    harness_errors: list[str] = field(default_factory=list)
    work_dir: str = ""
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"ok": not problems(self), "problems": problems(self), **asdict(self)}


def problems(report: Report) -> list[str]:
    """Why the run failed; empty when it passed."""
    found = []
    if not report.verify.get("ok"):
        found.append(f"verify: {report.verify.get('report', {}).get('verdict', 'failed')}")
    if not report.bytes.get("identical"):
        found.append("stored bytes differ between source and estuary")
    dead = report.dead_letters
    if dead.get("not_poison_count", 0):
        found.append(f"{dead['not_poison_count']} dead letter(s) are not planted poison documents")
    if dead.get("planted", 0) and not dead.get("poison_parked", 0):
        found.append("poison documents were planted but none was parked")
    if not report.caught_up:
        found.append(f"the replicator did not catch up within {report.catch_up_seconds:.0f}s")
    if report.worker_exits:
        found.append(f"{len(report.worker_exits)} worker exit(s) nobody asked for")
    found += [f"harness: {error}" for error in report.harness_errors]
    return found


def exit_code(report: Report) -> int:
    """0 when the run passed, 1 otherwise."""
    return EXIT_OK if not problems(report) else EXIT_FAILED


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False)


def _by_kind(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) or "none"


def render_text(report: Report) -> str:
    """The human summary: figures first, then the verdict and, if any, the problems."""
    dead = report.dead_letters
    compared = report.bytes.get("streams", {})
    documents = sum(s.get("source", 0) for s in compared.values())
    verify = report.verify.get("report", {})
    outcomes = report.passes.get("outcomes", {})
    lines = [
        f"chaos run: {report.seconds:.0f}s, {report.workers} workers, seed {report.seed}"
        + (" (interrupted)" if report.interrupted else ""),
        f"faults injected: {sum(report.faults.values())} ({_by_kind(report.faults)})",
    ]
    if report.faults_skipped:
        lines.append(f"faults skipped (no target): {_by_kind(report.faults_skipped)}")
    lines += [
        f"events written: {sum(report.events_written.values())} ({_by_kind(report.events_written)}); "
        f"{report.seeded} documents seeded before the start (initial sync)",
        f"events read and saved by the checkpoints: {sum(report.events.values())} ({_by_kind(report.events)}), "
        f"{'each written event once' if report.events == report.events_written else 'NOT the events written'}; "
        f"applied: {sum(report.applied.values())} (the rest collapsed or skipped)",
        f"passes: {_by_kind(outcomes)}; {report.passes.get('failures', 0)} failed and retried; "
        f"{report.worker_restarts} worker restarts; duplicated requests ended with {_by_kind(report.duplicate_exits)}",
        f"dead letters: {dead.get('parked', 0)} parked, {dead.get('poison_parked', 0)} of "
        f"{dead.get('planted', 0)} planted poison documents, {dead.get('not_poison_count', 0)} other",
        f"longest lag: {report.longest_lag:.1f}s ({_lags(report.lag_by_stream)})",
        f"token requests served: {report.token_requests}; 391 sent by the source: {report.reauth_sent}",
        f"caught up in {report.catch_up_seconds:.1f}s" if report.caught_up else "did NOT catch up",
        f"verify: {verify.get('verdict', 'no report')} (exit {report.verify.get('exit')})",
        f"stored bytes: {'identical' if report.bytes.get('identical') else 'DIFFERENT'} ({documents} documents)",
    ]
    for name, stream in compared.items():
        for kind, ids in stream.get("ids", {}).items():
            lines.append(f"  {name}: {stream[kind]} {kind}, e.g. {', '.join(ids)}")
    for exit_ in report.worker_exits:
        lines.append(f"  {exit_['worker']} exited with {exit_['code']} on its own (log: {exit_['log']})")
    if report.forced_at_shutdown:
        lines.append(f"needed SIGKILL at shutdown: {', '.join(report.forced_at_shutdown)}")
    found = problems(report)
    lines.append("RESULT: " + ("OK" if not found else "FAILED"))
    lines += [f"  - {problem}" for problem in found]
    lines.append(f"logs and configuration: {report.work_dir}")
    return "\n".join(lines)


def _lags(by_stream: dict[str, float]) -> str:
    return ", ".join(f"{name} {lag:.1f}s" for name, lag in sorted(by_stream.items()))
