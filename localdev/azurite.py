"""Run Azurite (Microsoft's Azure Storage emulator, from npm) as a child process: the queue service only.

The Functions host cannot run here, so tests play its part: they put the timer's messages on a real queue and
read them back the way the host's queue trigger does. Azurite gives them a real Azure Storage queue endpoint
on loopback, spoken to by the real ``azure-storage-queue`` client. It is installed by ``scripts/bootstrap.sh``
from ``package-lock.json`` into ``node_modules`` and started with:

* ``--disableTelemetry``: otherwise Azurite tries to send usage data to Microsoft;
* ``--skipApiVersionCheck``: otherwise a storage SDK newer than the Azurite release is refused;
* ``--loose``: ignore headers and parameters Azurite does not implement instead of failing the request;
* ``--inMemoryPersistence``: nothing is written to disk; every start is an empty account (capped at 256 MB by
  ``--extentMemoryLimit``; the default cap is half the machine's memory);
* ``--silent``: no access log on the console (only start-up lines and errors are captured).
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import logging
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from localdev.service import Service

_log = logging.getLogger(__name__)

# The storage emulator's published development account and key (the same for every Azurite and the old
# Storage Emulator; documented at https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
# Not a secret: it only opens a local emulator.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_REPO_ROOT = Path(__file__).resolve().parent.parent
_STOP_GRACE_SECONDS = 10.0
_LOG_TAIL_LINES = 30


def _free_port(host: str) -> int:
    """Ask the kernel for a free port; there is a small race until Azurite binds it, acceptable here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Azurite(Service):
    """One Azurite queue service process on a free loopback port, its console captured in ``work_dir``."""

    def __init__(
        self, work_dir: Path, *, port: int | None = None, host: str = "127.0.0.1", node_modules: Path | None = None
    ) -> None:
        self.work_dir = Path(work_dir)
        self.host = host
        self.port = port if port is not None else _free_port(host)
        self.executable = (node_modules or _REPO_ROOT / "node_modules") / ".bin" / "azurite-queue"
        self._process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None

    @property
    def queue_endpoint(self) -> str:
        """The account's queue service URL (path-style, as Azurite serves it)."""
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """A storage connection string for the development account, pointing at this queue service only."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"QueueEndpoint={self.queue_endpoint};"
        )

    @property
    def pid(self) -> int | None:
        """Process id while Azurite runs, else ``None``."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def console_file(self) -> Path:
        """Captured stdout/stderr of the Azurite process."""
        return self.work_dir / "azurite.console.log"

    def start(self, timeout: float = 30.0) -> Azurite:
        """Start the process and wait until the queue service answers HTTP; a no-op when already running.

        Raises ``RuntimeError`` when Azurite is not installed, exits, or does not answer within ``timeout``
        seconds (with the end of its console output; the process is killed in that case).
        """
        if self.pid is not None:
            return self
        if not self.executable.exists():
            raise RuntimeError(
                f"Azurite is not installed ({self.executable} is missing); run ./scripts/test.sh once, which "
                "installs it from package-lock.json with npm (Node.js 20.6 or newer is required)"
            )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._console = self.console_file.open("ab")
        command = [
            str(self.executable),
            "--queueHost",
            self.host,
            "--queuePort",
            str(self.port),
            "--inMemoryPersistence",  # excludes --location; cwd is work_dir in case anything is written anyway
            "--extentMemoryLimit",
            "256",  # MB; the default is half the machine's memory
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
        ]
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command, cwd=self.work_dir, stdin=subprocess.DEVNULL, stdout=self._console, stderr=subprocess.STDOUT
        )
        self._process = process
        # A safety net for callers that forget stop(): never leave Azurite behind when the interpreter exits.
        atexit.register(self.stop)
        _log.debug("started Azurite queue service pid %d on %s", process.pid, self.queue_endpoint)
        try:
            self._wait_until_ready(process, timeout)
        except RuntimeError:
            self._end(signal.SIGKILL)
            raise
        return self

    def _wait_until_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if (code := process.poll()) is not None:
                raise RuntimeError(f"Azurite exited with code {code} during start-up\n{self._log_tail()}")
            try:
                status = self._probe()
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"Azurite did not answer on {self.queue_endpoint} within {timeout:.0f}s ({exc})\n"
                        f"{self._log_tail()}"
                    ) from exc
                time.sleep(0.1)
                continue
            if process.poll() is None:  # not some other server that already held the port
                _log.debug("Azurite answered HTTP %d", status)
                return

    def _probe(self) -> int:
        """One unauthenticated request; any HTTP answer (403 here) means the service is up."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
        try:
            connection.request("GET", f"/{ACCOUNT_NAME}?comp=list")
            return connection.getresponse().status
        finally:
            connection.close()

    def _log_tail(self) -> str:
        try:
            lines = self.console_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no console output)"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(no console output)"

    def stop(self) -> None:
        """Terminate gracefully (SIGTERM, then SIGKILL after a grace period) and reap the process; idempotent."""
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                process.send_signal(sig)
                try:
                    process.wait(_STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    _log.warning("Azurite pid %d ignored %s; killing it", process.pid, sig.name)
                    process.kill()
                    process.wait()
            _log.debug("Azurite pid %d ended with code %s", process.pid, process.returncode)
        if self._console is not None:
            with contextlib.suppress(OSError):
                self._console.close()
            self._console = None
