"""``python -m shared``: the replicator's command line.

Each command is a ``configure_*`` + ``execute_*`` pair. ``main`` is the one place that maps outcomes to exit
codes: 0 success, 1 a check or run failed, 2 bad usage or configuration. Errors print one line plus a
``Tip:``; ``--debug`` shows the traceback of unexpected ones. This is the only module that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from shared.auth.mongo_client import ClientFactory
from shared.clock import SystemClock
from shared.config_loader import load_config
from shared.diagnostics import AuthReport, EndpointReport, run_test_auth
from shared.errors import ConfigError, ReplicatorError
from shared.position import Checkpoint
from shared.redaction import redact_text
from shared.replicate import PassResult, Replicator
from shared.telemetry import ReplicationMetrics, configure_logging, correlation

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    configure_logging(level=level, json_lines=args.log_format == "json")
    execute: Command = args.execute
    try:
        return execute(args)
    except ConfigError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "problems": exc.problems}, indent=2))
        else:
            _fail(exc)
        return EXIT_USAGE
    except ReplicatorError as exc:
        _fail(exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {redact_text(str(exc))}", file=sys.stderr)
        print("Tip: run again with --debug to see the traceback", file=sys.stderr)
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared", description="MongoDB / Azure DocumentDB change-stream replicator."
    )
    parser.add_argument("--debug", action="store_true", help="debug logs, and tracebacks for unexpected errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="informational logs (token acquisition, ...)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format on stderr")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for name, configure, execute, help_text in (
        ("validate", _configure_validate, execute_validate, "check the configuration file and exit"),
        ("test-auth", _configure_test_auth, execute_test_auth, "get tokens and ping every endpoint"),
        ("run", _configure_run, execute_run, "replicate: passes for every enabled stream until Ctrl-C"),
        ("status", _configure_status, execute_status, "each stream's checkpoint: position, lag, counters, errors"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        configure(sub)
        sub.set_defaults(execute=execute)
    return parser


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML or JSON configuration (default: the REPLICATOR_CONFIG setting)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


# ---------------------------------------------------------------------------------------------- validate


def _configure_validate(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)


def execute_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    endpoints = list(config.endpoints())
    summary = {
        "ok": True,
        "streams": len(config.streams),
        "enabled_streams": sum(s.enabled for s in config.streams),
        "endpoints": len(endpoints),
        "entra_endpoints": sum(e.auth_method == "entra" for _, e in endpoints),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"configuration OK: {summary['streams']} stream(s), {summary['enabled_streams']} enabled; "
            f"{summary['endpoints']} endpoint(s), {summary['entra_endpoints']} using Entra ID"
        )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- test-auth


def _configure_test_auth(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)
    parser.add_argument(
        "--timeout", type=_seconds, default=10.0, metavar="SECONDS", help="how long to try to reach each cluster"
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def execute_test_auth(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    factory = ClientFactory(client_options={"serverSelectionTimeoutMS": int(args.timeout * 1000)})
    try:
        report = run_test_auth(config, factory, clock=SystemClock())
    finally:
        factory.close()
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_report(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def render_report(report: AuthReport) -> str:
    """The human form of a test-auth report: one block per endpoint, failures with a Tip."""
    blocks = [_render_endpoint(e) for e in report.endpoints]
    failed = sum(not e.ok for e in report.endpoints)
    verdict = "all endpoints OK" if not failed else f"{failed} of {len(report.endpoints)} endpoint(s) FAILED"
    return "\n\n".join([*blocks, verdict])


def _render_endpoint(e: EndpointReport) -> str:
    lines = [f"[{'ok' if e.ok else 'FAIL'}] {e.name}  {e.target}"]
    if e.token is None:
        lines.append("    auth   connection string")
    else:
        t = e.token
        lines.append(f"    auth   entra via {t.credential}")
        if t.acquired:
            lines.append(
                f"    token  acquired in {t.duration_ms} ms; audience {t.audience}; tenant {t.tenant_id}; "
                f"principal (object id) {t.principal_id}; expires in {t.expires_in_s} s"
            )
            lines.extend(f"    token  PROBLEM: {p}" for p in t.problems)
        else:
            lines.extend(_error_lines("token", t.error, t.hint))
    p = e.ping
    if p.ok:
        lines.append(f"    ping   ok in {p.duration_ms} ms")
    else:
        lines.extend(_error_lines("ping", p.error, p.hint, skipped=p.skipped))
    return "\n".join(lines)


def _error_lines(step: str, error: str | None, hint: str | None, *, skipped: bool = False) -> list[str]:
    out = [f"    {step:<6} {'skipped' if skipped else 'FAILED'}: {error}"]
    if hint:
        out.append(f"           Tip: {hint}")
    return out


def _fail(exc: ReplicatorError) -> None:
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"Tip: {exc.hint}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- run

_FAILED_OUTCOMES = frozenset({"stopped", "failed"})
_RETRY_PAUSE = 5.0  # seconds before a stream's next pass after one that raised
_LEASE_HELD_PAUSE = 2.0  # seconds before asking again for a stream another worker holds


def _configure_run(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)
    parser.add_argument("--once", action="store_true", help="one pass per stream, then exit")
    parser.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")


def execute_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    factory = ClientFactory()
    replicator = Replicator(config, factory=factory, clock=SystemClock(), metrics=ReplicationMetrics())
    names = args.stream or [s.name for s in config.streams if s.enabled]
    for name in names:
        replicator.stream(name)  # unknown names are a usage error before anything starts
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    failures: list[str] = []
    report = _print_json_line if args.json else _print_pass
    workers = [
        threading.Thread(target=_run_stream, args=(replicator, n, stop, args.once, failures, report), name=n)
        for n in names
    ]
    for worker in workers:
        worker.start()
    try:
        while any(w.is_alive() for w in workers):
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("stopping: finishing the current batches...", file=sys.stderr)
        stop.set()
        for worker in workers:
            worker.join()
    finally:
        factory.close()
    return EXIT_FAILED if failures else EXIT_OK


def _run_stream(
    replicator: Replicator,
    name: str,
    stop: threading.Event,
    once: bool,
    failures: list[str],
    report: Callable[[PassResult], None],
) -> None:
    while not stop.is_set():
        with correlation():
            try:
                result = replicator.run_pass(name, stop=stop)
            except Exception as exc:  # noqa: BLE001 (the pass recorded it; a long run must outlive any pass)
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {redact_text(str(exc))}"
                print(f"{name}: pass failed: {message}", file=sys.stderr)
                if once:
                    failures.append(name)
                    return
                stop.wait(_RETRY_PAUSE)
                continue
        report(result)
        if result.outcome in _FAILED_OUTCOMES:
            failures.append(name)
            return
        if once:
            return
        if result.outcome == "lease_held":
            stop.wait(_LEASE_HELD_PAUSE)  # another worker has it; look again later instead of spinning


def _print_pass(result: PassResult) -> None:
    lag = f"{result.lag_seconds:.1f}s" if result.lag_seconds is not None else "-"
    rate = result.events / result.seconds if result.seconds else 0.0
    line = (
        f"{result.stream}: {result.outcome:<11} {result.events} events ({rate:.0f}/s), {result.applied} applied, "
        f"{result.dead_lettered} dead-lettered, lag {lag}, {result.seconds:.1f}s"
    )
    print(line + (f" - {result.detail}" if result.detail else ""), flush=True)


def _print_json_line(result: PassResult) -> None:
    print(json.dumps(asdict(result)), flush=True)


# ---------------------------------------------------------------------------------------------- status


def _configure_status(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)


def execute_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    factory = ClientFactory()
    try:
        replicator = Replicator(config, factory=factory, clock=SystemClock(), metrics=ReplicationMetrics())
        rows = [(s.name, replicator.checkpoints.read(s.name)) for s in config.streams]
    finally:
        factory.close()
    now = time.time()
    if args.json:
        print(json.dumps([_status_dict(name, cp, now) for name, cp in rows], indent=2, default=str))
    else:
        print("\n\n".join(_render_status(name, cp, now) for name, cp in rows))
    return EXIT_FAILED if any(cp and cp.status in _FAILED_OUTCOMES for _, cp in rows) else EXIT_OK


def _status_dict(name: str, cp: Checkpoint | None, now: float) -> dict[str, object]:
    if cp is None:
        return {"stream": name, "status": "never run"}
    return {
        "stream": name,
        "status": cp.status,
        "checkpoint_age_s": _age(cp.updated_at, now),
        "last_event_age_s": _age(cp.last_event_at, now),
        "has_resume_token": cp.resume_token is not None,
        "counters": cp.counters,
        "last_error": cp.last_error,
        "gaps": cp.gaps,
        "lease_owner": cp.lease_owner if (cp.lease_expires_at or 0) > now else None,
    }


def _render_status(name: str, cp: Checkpoint | None, now: float) -> str:
    if cp is None:
        return f"{name}: never run"
    data = _status_dict(name, cp, now)
    counters = ", ".join(f"{k} {v}" for k, v in sorted(cp.counters.items())) or "none yet"
    lines = [
        f"{name}: {cp.status}" + (f" (pass running on {data['lease_owner']})" if data["lease_owner"] else ""),
        f"    checkpoint {_ago(data['checkpoint_age_s'])}; last applied event {_ago(data['last_event_age_s'])}",
        f"    counters   {counters}",
    ]
    if cp.last_error:
        lines.append(f"    last error {cp.last_error.get('message')} ({_ago(_age(cp.last_error.get('at'), now))})")
    for gap in cp.gaps[-3:]:
        lines.append(
            f"    GAP        events from {_when(gap.get('from'))} to {_when(gap.get('to'))} were not "
            f"replicated: {gap.get('reason')}"
        )
    return "\n".join(lines)


def _age(at: object, now: float) -> float | None:
    return round(now - at, 1) if isinstance(at, int | float) else None


def _ago(age: object) -> str:
    return f"{age:.0f}s ago" if isinstance(age, int | float) else "never"


def _when(at: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if isinstance(at, int | float) else "the start"
