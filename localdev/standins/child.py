"""A server run as a child process: console captured, waited for until it answers, never left behind."""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import socket
import subprocess
import time
from abc import abstractmethod
from pathlib import Path
from typing import IO, Self

from localdev.standins.service import Service

_log = logging.getLogger(__name__)

_STOP_GRACE_SECONDS = 10.0
_LOG_TAIL_LINES = 30


def free_port(host: str) -> int:
    """Ask the kernel for a free port; there is a small race until the server binds it, acceptable here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ChildProcess(Service):
    """Subclasses say how to start the server (``_command``) and how to tell that it answers (``_probe``)."""

    label: str = "server"

    def __init__(self, work_dir: Path, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.work_dir = Path(work_dir).resolve()  # absolute: the child runs with it as its working directory
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None

    @abstractmethod
    def _command(self) -> list[str]: ...

    @abstractmethod
    def _probe(self) -> None:
        """Return when the server answers; raise ``OSError`` (or the client's error) when it does not yet."""

    @property
    def pid(self) -> int | None:
        """Process id while the server runs, else ``None``."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def console_file(self) -> Path:
        """Captured stdout/stderr: where errors raised before the server sets up its own log end up."""
        return self.work_dir / f"{self.label}.console.log"

    def start(self, timeout: float = 20.0) -> Self:
        """Start the process and wait until it answers; a no-op when already running.

        Raises ``RuntimeError`` with the end of the console output when it exits or does not answer within
        ``timeout`` seconds (the process is killed in that case).
        """
        if self.pid is not None:
            return self
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._console = self.console_file.open("ab")
        # A session of its own: a terminal's Ctrl-C reaches the whole foreground process group, and the server
        # must not die before its owner has finished with it (the owner stops it).
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            self._command(),
            cwd=self.work_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._process = process
        # A safety net for callers that forget stop(): never leave a server behind when the interpreter exits.
        atexit.register(self.kill)
        _log.debug("started %s pid %d on port %d", self.label, process.pid, self.port)
        try:
            self._wait_until_ready(process, timeout)
        except RuntimeError:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        """Terminate gracefully (SIGTERM, then SIGKILL after a grace period) and reap the process; idempotent."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process, like a crash."""
        self._end(signal.SIGKILL)

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start again on the same port and directory."""
        self.stop()
        self.start(timeout)

    def _wait_until_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if (code := process.poll()) is not None:
                raise RuntimeError(f"{self.label} exited with code {code} during start-up\n{self._log_tail()}")
            try:
                self._probe()
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"{self.label} did not answer on port {self.port} within {timeout:.0f}s ({exc})\n"
                        f"{self._log_tail()}"
                    ) from exc
                time.sleep(0.1)
                continue
            if process.poll() is None:  # not some other server that already held the port
                return

    def _log_tail(self) -> str:
        try:
            lines = self.console_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no console output)"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(no console output)"

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.kill)
            if process.poll() is None:
                process.send_signal(sig)
                try:
                    process.wait(_STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    _log.warning("%s pid %d ignored %s; killing it", self.label, process.pid, sig.name)
                    process.kill()
                    process.wait()
            _log.debug("%s pid %d ended with code %s", self.label, process.pid, process.returncode)
        if self._console is not None:
            with contextlib.suppress(OSError):
                self._console.close()
            self._console = None
