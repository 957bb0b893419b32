"""Quickstart validation scenarios (feature list T032): what the Entra ID release promises, shown on stand-ins.

Starts the local stand-ins (nx-27017 behind the OIDC-enforcing proxy, the managed identity endpoint stub, a
second nx-27017 for an estuary) and runs seven scenarios through the code the app runs: ``python -m shared``
(``shared.cli.main``), passes built by ``build_services``, and the ``ClientFactory`` / ``TokenProvider`` behind every
MongoClient. Each prints one ``PASS`` / ``FAIL`` line saying what it proves; ``--verbose`` also shows the
command output behind it. Exit status 0 only when every scenario passes. Everything started is stopped on exit,
Ctrl-C and SIGTERM included. Run: ``./scripts/quickstart.sh`` (or ``python -m localdev.quickstart``).

This module is the runner and its output; the scenarios are in ``localdev.scenarios``, what they share (the
running stand-ins, checks, replication while writing) in ``localdev.scenario_support``.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from localdev.scenario_support import CheckFailedError, Stand
from localdev.scenarios import SCENARIOS
from localdev.standins.nx import NxServer
from localdev.standins.stack import LocalStack

__all__ = ["SCENARIOS", "main", "run", "run_scenarios"]


def run(work_dir: Path, verbose: bool) -> int:
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    logs = io.StringIO()  # the replicator's own warnings, shown with a failure (or with --verbose)
    handler = logging.StreamHandler(logs)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    started, passed = time.monotonic(), 0
    print(f"quickstart: {len(SCENARIOS)} scenarios against the local stand-ins (work directory {work_dir})\n")
    with LocalStack(work_dir / "stack") as stack, NxServer(work_dir / "estuary") as sink:
        os.environ.update(stack.environ())  # what the Functions host sets for an app with a managed identity
        stand = Stand(stack, sink, work_dir)
        try:
            passed = run_scenarios(stand, logs, verbose)
        finally:
            stand.close()
    print(f"\n{passed} of {len(SCENARIOS)} scenarios passed in {time.monotonic() - started:.1f}s; stand-ins stopped")
    return 0 if passed == len(SCENARIOS) else 1


def run_scenarios(stand: Stand, logs: io.StringIO, verbose: bool) -> int:
    """Run every scenario, print its line (and, on failure or with --verbose, what lies behind it)."""
    passed = 0
    for number, scenario in enumerate(SCENARIOS, 1):
        stand.transcript.clear()
        logs.seek(0)
        logs.truncate()
        at = time.monotonic()
        try:
            evidence, ok = scenario.run(stand), True
        except CheckFailedError as exc:
            evidence, ok = str(exc), False
        except Exception as exc:  # noqa: BLE001 (a scenario that crashed is a failed scenario, not a crash)
            evidence, ok = f"unexpected {type(exc).__name__}: {exc}", False
        passed += ok
        print(
            f"{'PASS' if ok else 'FAIL'}  {number}. {scenario.claim}: {evidence} [{time.monotonic() - at:.1f}s]",
            flush=True,
        )
        if verbose or not ok:
            details = [*stand.transcript, *([logs.getvalue().strip()] if logs.getvalue().strip() else [])]
            for block in details:
                print("\n".join(f"      | {line}" for line in block.splitlines()))
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/quickstart.sh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work-dir", type=Path, default=Path(".local/quickstart"), help="for the stand-ins' data and configs"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the commands' output for every scenario")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: _interrupt())  # stop the stand-ins like Ctrl-C does
    try:
        code = run(args.work_dir.resolve(), args.verbose)
    except KeyboardInterrupt:
        print("\ninterrupted; stand-ins stopped", file=sys.stderr)
        code = 130
    raise SystemExit(code)


def _interrupt() -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
