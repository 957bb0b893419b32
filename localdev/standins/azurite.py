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

import http.client
from pathlib import Path

from localdev.standins.child import ChildProcess

# The storage emulator's published development account and key (the same for every Azurite and the old
# Storage Emulator; documented at https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
# Not a secret: it only opens a local emulator.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_REPO_ROOT = Path(__file__).resolve().parents[2]


class Azurite(ChildProcess):
    """One Azurite queue service process on a free loopback port, its console captured in ``work_dir``."""

    label = "azurite"

    def __init__(
        self, work_dir: Path, *, port: int | None = None, host: str = "127.0.0.1", node_modules: Path | None = None
    ) -> None:
        super().__init__(work_dir, port=port, host=host)
        self.executable = (node_modules or _REPO_ROOT / "node_modules") / ".bin" / "azurite-queue"

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

    def start(self, timeout: float = 30.0) -> Azurite:
        """Start Azurite and wait until the queue service answers HTTP (see ``ChildProcess.start``)."""
        if not self.executable.exists():
            raise RuntimeError(
                f"Azurite is not installed ({self.executable} is missing); run ./scripts/test.sh once, which "
                "installs it from package-lock.json with npm (Node.js 20.6 or newer is required)"
            )
        return super().start(timeout)

    def _command(self) -> list[str]:
        return [
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

    def _probe(self) -> None:
        """One unauthenticated request; any HTTP answer (403 here) means the service is up."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
        try:
            connection.request("GET", f"/{ACCOUNT_NAME}?comp=list")
            connection.getresponse()
        finally:
            connection.close()
