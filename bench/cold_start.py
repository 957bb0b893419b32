"""Cold start: the Functions worker's indexing import of ``function_app`` against importing ``azure.functions`` alone.

The worker imports ``function_app`` on every cold start to index the app, before any function runs. Each measurement
is a fresh interpreter timing only the import statement (interpreter start-up left out), the kinds alternating
(ABC...) after one untimed round that fills the bytecode caches:

* ``azure.functions``: ``import azure.functions``, the floor of any Python function app;
* ``function_app``: ``import function_app``, what indexing costs;
* ``first use``: ``import function_app``, then what the first invocation loads (the services, the configuration
  loader, the clients, ``test-auth``, OpenTelemetry), to show where the deferred imports went.

Target (issue 12): ``function_app`` at most 2 x ``azure.functions`` (ratio of medians). ``--app-dir`` measures another
checkout (``git archive <commit> | tar -x -C DIR``), for a before / after in the same session.
Run: ``.venv/bin/python -m bench.cold_start [--runs 15] [--app-dir DIR] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import machine
from bench.replication_report import spread

TARGET_RATIO = 2.0
ROOT = Path(__file__).resolve().parent.parent

_FIRST_USE = """
import shared
from shared.telemetry import ReplicationMetrics
for name in ("build_services", "get_config", "default_factory", "run_test_auth", "schedule"):
    getattr(shared, name)
ReplicationMetrics()
"""
KINDS = {
    "azure.functions": ("import azure.functions", ""),
    "function_app": ("import function_app", ""),
    "first use": ("import function_app", _FIRST_USE),
}
_TIMED = """
import time
started = time.perf_counter()
{statement}
indexed = time.perf_counter()
{first_use}
print(indexed - started, time.perf_counter() - started)
"""


def measure(kind: str, app_dir: Path) -> float:
    """Seconds of one import in a fresh interpreter (for ``first use``: the import and the first use)."""
    statement, first_use = KINDS[kind]
    out = subprocess.run(  # noqa: S603 (this interpreter, our own code)
        [sys.executable, "-c", _TIMED.format(statement=statement, first_use=first_use)],
        cwd=app_dir,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    _, total = (float(value) for value in out.stdout.split())
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed imports of each kind, alternating (default 15)")
    parser.add_argument("--app-dir", type=Path, default=ROOT, help="the checkout to measure (default this one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for kind in KINDS:  # untimed: compile to bytecode once
        measure(kind, args.app_dir)
    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.runs):
        for kind in KINDS:
            seconds[kind].append(measure(kind, args.app_dir))
    floor, app = seconds["azure.functions"], seconds["function_app"]
    ratio = statistics.median(app) / statistics.median(floor)
    results: dict[str, Any] = {
        "machine": machine(),
        "app_dir": str(args.app_dir),
        "runs": args.runs,
        "milliseconds": {kind: spread([1000 * s for s in values]) for kind, values in seconds.items()},
        "ratio_of_medians": round(ratio, 2),
        "ratio_per_run": spread([a / f for a, f in zip(app, floor, strict=True)], 2),
        "target_met": ratio <= TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"cold start on {results['machine']} ({args.app_dir}), {args.runs} fresh interpreters per kind, alternating")
    for kind, ms in results["milliseconds"].items():
        print(f"  import {kind:<16} median {ms['median']:7.1f} ms (min {ms['min']:.1f}, max {ms['max']:.1f})")
    per_run, met = results["ratio_per_run"], "yes" if results["target_met"] else "NO"
    print(
        f"  function_app / azure.functions {results['ratio_of_medians']:.2f} (ratio of medians; per run "
        f"{per_run['min']:.2f}-{per_run['max']:.2f}); target <= {TARGET_RATIO}: {met}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
