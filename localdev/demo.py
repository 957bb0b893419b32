"""The README's "run it locally" command: the replicator's commands against embedded stand-ins.

Starts nx-27017 behind the OIDC-enforcing proxy with the managed identity stub (``LocalStack``), writes a
configuration under ``.local/`` whose checkpoints and stream source authenticate with Entra ID and whose
estuary uses a plain connection string, then runs ``validate`` and ``test-auth`` exactly as a user would.
With ``--keep`` the stand-ins stay up until Ctrl-C so you can run ``python -m shared ...`` yourself.
Everything started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path

import yaml

from localdev.stack import LocalStack
from shared.cli import main as cli

LOCAL_DIR = Path(".local")


def run(keep: bool) -> int:
    shutil.rmtree(LOCAL_DIR / "stack", ignore_errors=True)
    with LocalStack(LOCAL_DIR / "stack") as stack:
        os.environ.update(stack.environ())  # what the Functions host sets for an app with a managed identity
        config = {
            "checkpoints": stack.entra_endpoint("replicator"),
            "streams": [
                {
                    "name": "orders",
                    "source": stack.entra_endpoint("shop", "orders"),
                    "estuary": stack.plain_endpoint("replica", "orders"),
                }
            ],
        }
        path = LOCAL_DIR / "replicator.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"stand-ins up: nx-27017 {stack.nx.uri}, OIDC proxy {stack.proxy.uri}, identity {stack.stub.endpoint}")
        print(f"configuration written to {path}\n")
        print(f"$ python -m shared validate --config {path}")
        code = cli(["validate", "--config", str(path)])
        print(f"\n$ python -m shared test-auth --config {path}")
        code = code or cli(["test-auth", "--config", str(path)])
        print(f"\ntoken requests served by the identity endpoint: {stack.stub.request_count}")
        if keep:
            _wait_for_interrupt(stack)
    print("stand-ins stopped")
    return code


def _wait_for_interrupt(stack: LocalStack) -> None:
    print("\nstand-ins stay up; in another shell:")
    for name, value in stack.environ().items():
        print(f"  export {name}={value}")
    print("  .venv/bin/python -m shared test-auth --config .local/replicator.yaml\nCtrl-C to stop.")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/run-local.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the stand-ins running until Ctrl-C")
    raise SystemExit(run(parser.parse_args().keep))


if __name__ == "__main__":
    main()
