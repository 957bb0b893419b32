"""``validate`` and ``test-auth``: is the configuration usable, and can every endpoint be reached with it."""

from __future__ import annotations

import argparse
import json

from shared.auth.mongo_client import ClientFactory
from shared.cli.common import EXIT_FAILED, EXIT_OK, Command, add_config, seconds
from shared.clock import SystemClock
from shared.config_loader import load_config
from shared.diagnostics import AuthReport, EndpointReport, run_test_auth

# ---------------------------------------------------------------------------------------------- validate


def _configure_validate(parser: argparse.ArgumentParser) -> None:
    add_config(parser)


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
    add_config(parser)
    parser.add_argument(
        "--timeout", type=seconds, default=10.0, metavar="SECONDS", help="how long to try to reach each cluster"
    )


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


COMMANDS = (
    Command("validate", "check the configuration file and exit", _configure_validate, execute_validate),
    Command("test-auth", "get tokens and ping every endpoint", _configure_test_auth, execute_test_auth),
)
