"""``python -m localdev.chaos``: run the soak, print the report, exit 0 only when nothing diverged.

The run: stand-ins up, configuration written, documents seeded, workers started; once every stream streams, the
workload, the fault injector and the lag sampler start. After the duration (or Ctrl-C / SIGTERM) the workload and
the injector stop, every fault is undone, the workers catch up and are stopped, and the comparisons run. A second
Ctrl-C skips the catch-up. Everything started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from localdev.chaos import monitor
from localdev.chaos.faults import FaultSchedule, Injector
from localdev.chaos.report import EXIT_FAILED, EXIT_USAGE, Report, exit_code, render_json, render_text
from localdev.chaos.workers import Workers
from localdev.chaos.workload import POISON_PATIENCE, Workload
from localdev.chaos.world import World, write_configs
from shared.auth.mongo_client import ClientFactory
from shared.config_loader import load_config
from shared.services import Services, build_services

_log = logging.getLogger("localdev.chaos")

DEFAULT_WORK_DIR = Path(".local/chaos")
SEED_DOCUMENTS = 100  # per stream, before the workers start: the initial sync copies them
STARTUP_TIMEOUT = 90.0
CATCH_UP_TIMEOUT = 90.0
PROGRESS_EVERY = 30.0


@dataclasses.dataclass(frozen=True)
class Options:
    seconds: float
    workers: int
    seed: int
    work_dir: Path
    rate: float
    json: bool


class Signals:
    """Ctrl-C and SIGTERM set ``stop`` (end the run early); a second one sets ``hurry`` (skip the catch-up)."""

    def __init__(self) -> None:
        self.stop, self.hurry = threading.Event(), threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda _signum, _frame: (self.hurry if self.stop.is_set() else self.stop).set())


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="scripts/chaos.sh", description=__doc__.splitlines()[0])
    duration = parser.add_mutually_exclusive_group()
    duration.add_argument("--minutes", type=float, help="how long to inject faults (default 10)")
    duration.add_argument("--seconds", type=float, help="the same, in seconds")
    parser.add_argument("--workers", type=int, default=3, help="worker processes competing for passes (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the faults and the workload (default: random)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help=f"default {DEFAULT_WORK_DIR}")
    parser.add_argument("--rate", type=float, default=100.0, help="source writes per second (default 100)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60.0 * (args.minutes if args.minutes is not None else 10)
    if seconds <= 0 or args.rate <= 0:
        parser.error("the duration and --rate must be positive")
    if not 1 <= args.workers <= 16:
        parser.error("--workers must be between 1 and 16")
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    return Options(seconds, args.workers, seed, args.work_dir, args.rate, args.json)


def main(argv: list[str] | None = None) -> None:
    try:
        options = parse(argv)
    except SystemExit as exc:  # argparse: 2 for bad usage, 0 for --help
        raise SystemExit(EXIT_USAGE if exc.code else 0) from None
    raise SystemExit(run(options, Signals()))


def configure_logging(work_dir: Path) -> None:
    """Warnings on stderr; the driver's own account (every fault injected and undone) in ``driver.log``."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(logging.WARNING)
    file = logging.FileHandler(work_dir / "driver.log")
    file.setLevel(logging.INFO)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in (terminal, file):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    logging.getLogger("localdev.chaos").setLevel(logging.INFO)


def say(options: Options, text: str) -> None:
    """Progress: on stdout in text mode, on stderr with ``--json`` (stdout then holds only the report)."""
    print(text, file=sys.stderr if options.json else sys.stdout, flush=True)


def prepare(work_dir: Path) -> None:
    """A clean work directory: the logs and configuration files of the previous run go."""
    if work_dir.exists():
        for entry in work_dir.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    work_dir.mkdir(parents=True, exist_ok=True)


def run(options: Options, signals: Signals) -> int:
    prepare(options.work_dir)
    configure_logging(options.work_dir)
    factory = ClientFactory(client_options={"serverSelectionTimeoutMS": 10_000})
    try:
        with World(options.workers) as world:
            worker_configs, direct = write_configs(world, options.work_dir)
            services = build_services(load_config(direct), factory=factory)
            workers = Workers(worker_configs, env=world.environ(), work_dir=options.work_dir)
            try:
                report = soak(options, signals, world, workers, services, direct)
            finally:
                workers.shutdown()  # before the stand-ins go: nothing of ours outlives the run
            print(render_json(report) if options.json else "\n" + render_text(report), flush=True)
            return exit_code(report)
    finally:
        factory.close()


def soak(
    options: Options, signals: Signals, world: World, workers: Workers, services: Services, direct: Path
) -> Report:
    """The run itself, from the seeded source to the figures (the caller stops what is left)."""
    workload = Workload(world.source.uri, rate=options.rate, seed=options.seed, parked=monitor.parked_check(services))
    try:
        return _soak(options, signals, world, workers, services, direct, workload)
    finally:
        workload.close()


def _soak(
    options: Options,
    signals: Signals,
    world: World,
    workers: Workers,
    services: Services,
    direct: Path,
    workload: Workload,
) -> Report:
    workload.seed(SEED_DOCUMENTS)
    say(options, f"stand-ins up; {options.workers} workers starting (logs in {options.work_dir})")
    workers.start_all()
    errors: list[str] = []
    if not monitor.wait_for(monitor.streaming(services.checkpoints), timeout=STARTUP_TIMEOUT, give_up=signals.stop):
        errors.append(f"the streams were not streaming {STARTUP_TIMEOUT:.0f}s after the start")
    injector = Injector(FaultSchedule(options.seed, workers=options.workers), world=world, workers=workers)
    sampler = monitor.LagSampler(services.checkpoints, workload)
    started = time.monotonic()
    if not errors:
        say(options, f"streaming; workload {options.rate:g} writes/s and faults for {options.seconds:g}s")
        workload.start()
        injector.start()
        sampler.start()
        progress_at = started + PROGRESS_EVERY
        while not signals.stop.wait(0.2) and time.monotonic() - started < options.seconds:
            if not (workload.is_alive() and injector.is_alive()):
                break
            if time.monotonic() >= progress_at:
                progress_at += PROGRESS_EVERY
                say(options, _progress(started, workload, injector, sampler))
    elapsed = time.monotonic() - started
    injector.stop.set()
    if injector.is_alive():
        injector.join(30.0)
    injector.finish()
    workload.stop.set()  # the last poison documents are deleted once parked
    say(options, f"{elapsed:.0f}s: faults undone, workload stopping; catching up")
    if workload.is_alive():
        workload.join(POISON_PATIENCE + 15.0)
    caught_up, catch_up_seconds = monitor.catch_up(
        world, services.checkpoints, timeout=CATCH_UP_TIMEOUT, give_up=signals.hurry
    )
    sampler.stop.set()
    if sampler.is_alive():
        sampler.join(5.0)
    forced = workers.shutdown()
    say(options, "workers stopped; verifying")
    found = monitor.counters(services.checkpoints)
    for name, error in (("workload", workload.error), ("injector", injector.error)):
        if error:
            errors.append(f"{name}: {error}")
    return Report(
        seconds=round(elapsed, 1),
        workers=options.workers,
        seed=options.seed,
        faults=dict(injector.injected),
        faults_skipped=dict(injector.skipped),
        events_written=dict(workload.written),
        events={name: c.get("events", 0) for name, c in found.items()},
        applied={name: c.get("applied", 0) for name, c in found.items()},
        dead_letters=monitor.dead_letters(services, [(p.stream, p.doc_id) for p in workload.planted]),
        longest_lag=round(max(sampler.longest.values(), default=0.0), 2),
        lag_by_stream={name: round(lag, 2) for name, lag in sampler.longest.items()},
        caught_up=caught_up,
        catch_up_seconds=round(catch_up_seconds, 1),
        verify=monitor.run_verify(direct),
        bytes=monitor.compare_bytes(world),
        operations=dict(workload.operations),
        seeded=workload.seeded,
        passes=monitor.pass_outcomes(
            sorted({*options.work_dir.glob("worker-*.log"), *options.work_dir.glob("duplicate-*.log")})
        ),
        worker_restarts=workers.restarts(),
        worker_exits=[dataclasses.asdict(e) for e in workers.unexpected],
        forced_at_shutdown=forced,
        duplicate_exits={f"exit {code}": n for code, n in sorted(Counter(workers.duplicates_ended).items())},
        pids=list(workers.pids),
        token_requests=world.stub.request_count,
        reauth_sent=world.oidc.reauth_sent,
        harness_errors=errors,
        work_dir=str(options.work_dir),
        interrupted=signals.stop.is_set(),
    )


def _progress(started: float, workload: Workload, injector: Injector, sampler: monitor.LagSampler) -> str:
    return (
        f"{time.monotonic() - started:5.0f}s | {sum(workload.written.values())} events written | "
        f"{sum(injector.injected.values())} faults | longest lag {max(sampler.longest.values(), default=0.0):.1f}s"
    )


__all__ = ["EXIT_FAILED", "main", "run"]
