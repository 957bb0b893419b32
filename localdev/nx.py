"""Run a real nx-27017 (MongoDB wire protocol on SQLite) server as a child process.

No MongoDB server can be installed on the development machines, and nx-27017 is the closest stand-in that
speaks the wire protocol to an unmodified pymongo, including change streams. Every instance gets its own data
directory and its own pid file: with ``--db FILE`` same-named collections of different databases share one
table, and two instances sharing the default pid file refuse to start.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from localdev.service import Service

_log = logging.getLogger(__name__)

_STOP_GRACE_SECONDS = 10.0
_LOG_TAIL_LINES = 30


def _free_port(host: str) -> int:
    """Ask the kernel for a free port; there is a small race until the server binds it, acceptable here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class NxServer(Service):
    """One nx-27017 server process with its own data directory; stays on the same port across restarts."""

    def __init__(self, data_dir: Path, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port if port is not None else _free_port(host)
        self._process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        """Connection string for a direct (non-replica-set) connection."""
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def pid(self) -> int | None:
        """Process id while the server runs, else ``None``."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def pid_file(self) -> Path:
        """nx-27017 writes its pid here and refuses to start while the recorded process is alive."""
        return self.data_dir / "nx.pid"

    @property
    def log_file(self) -> Path:
        """nx-27017's own log."""
        return self.data_dir / "nx.log"

    @property
    def console_file(self) -> Path:
        """Captured stdout/stderr: the only place errors raised before nx configures its log file end up."""
        return self.data_dir / "nx.console.log"

    def start(self, timeout: float = 20.0) -> NxServer:
        """Start the process and wait until a ping succeeds; a no-op when already running.

        Raises ``RuntimeError`` with the end of the server's console output when it exits or does not answer
        within ``timeout`` seconds (the process is killed in that case).
        """
        if self.pid is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._console = self.console_file.open("ab")
        command = [
            sys.executable,
            "-m",
            "nx_27017.nx_27017",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "-p",
            str(self.port),
            "--pid-file",
            str(self.pid_file),
            "--log-file",
            str(self.log_file),
        ]
        # A session of its own: a terminal's Ctrl-C reaches the whole foreground process group, and the server
        # must not die before its owner has finished with it (the owner stops it).
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._process = process
        # A safety net for callers that forget stop(): never leave a server behind when the interpreter exits.
        atexit.register(self.kill)
        _log.debug("started nx-27017 pid %d on port %d (data dir %s)", process.pid, self.port, self.data_dir)
        try:
            self._wait_until_ready(process, timeout)
        except RuntimeError:
            self.kill()
            raise
        return self

    def _wait_until_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250
        )
        try:
            while True:
                if (code := process.poll()) is not None:
                    raise RuntimeError(f"nx-27017 exited with code {code} during start-up\n{self._log_tail()}")
                try:
                    client.admin.command("ping")
                except PyMongoError as exc:
                    if time.monotonic() >= deadline:
                        raise RuntimeError(
                            f"nx-27017 did not answer a ping on {self.uri} within {timeout:.0f}s ({exc})\n"
                            f"{self._log_tail()}"
                        ) from exc
                else:
                    if process.poll() is None:  # not some other server that already held the port
                        return
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            lines = self.console_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no console output)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    def stop(self) -> None:
        """Terminate gracefully (SIGTERM, then SIGKILL after a grace period) and reap the process; idempotent."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process, like a crash; the data directory keeps whatever SQLite committed."""
        self._end(signal.SIGKILL)
        # nx-27017 cannot remove its pid file when killed; the process is reaped, so the file is stale.
        self.pid_file.unlink(missing_ok=True)

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start(timeout)

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.kill)
            if process.poll() is None:
                process.send_signal(sig)
                try:
                    process.wait(_STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    _log.warning("nx-27017 pid %d ignored %s; killing it", process.pid, sig.name)
                    process.kill()
                    process.wait()
            _log.debug("nx-27017 pid %d ended with code %s", process.pid, process.returncode)
        if self._console is not None:
            with contextlib.suppress(OSError):
                self._console.close()
            self._console = None
