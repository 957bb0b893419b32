"""The worker processes: ``python -m shared run`` per worker, as production runs them, and the faults done to them.

Each worker runs every stream's passes back to back and competes with the others through the streams' leases.
The injector kills (SIGKILL), pauses (SIGSTOP, then SIGCONT) and restarts them; a worker that exits on its own is
a finding (``unexpected``), restarted so that the run goes on. Extra short-lived workers (``run --once``) stand
for a duplicated pass request. Every process started here is stopped by ``shutdown``: SIGCONT, SIGTERM, then
SIGKILL after a grace period. Used from the injector thread and the main thread, hence the lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 20.0  # seconds a worker has to finish its batch after SIGTERM


@dataclass
class Worker:
    """One worker slot: its configuration, its current process (``None`` while down) and what happened to it."""

    index: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0
    exits: list[int] = field(default_factory=list)  # return codes of processes this harness did not end


@dataclass(frozen=True)
class Exit:
    """A process that ended without being told to: a crash, or a stream that needs a person."""

    worker: str
    code: int
    log: str


class Workers:
    """The worker slots, plus the duplicated-request workers; thread-safe."""

    def __init__(self, configs: list[Path], *, env: dict[str, str], work_dir: Path) -> None:
        # Only the identity endpoint given here: none inherited from a shell that had one (App Service, VM, Arc).
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("IDENTITY_", "MSI_", "IMDS_"))}
        self._env = {**inherited, **env, "PYTHONUNBUFFERED": "1"}
        self._work_dir = work_dir
        self._slots = [Worker(i, path, work_dir / f"worker-{i}.log") for i, path in enumerate(configs)]
        self._extras: list[subprocess.Popen[bytes]] = []
        self._lock = threading.RLock()
        self._logs: list[IO[bytes]] = []
        self.pids: list[int] = []
        self.unexpected: list[Exit] = []
        self.duplicates_ended: list[int] = []

    @property
    def count(self) -> int:
        return len(self._slots)

    def start_all(self) -> None:
        for slot in self._slots:
            self.start(slot.index)

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``python -m shared ARGS`` in its own session (a Ctrl-C in the terminal is ours to pass on)."""
        out = log.open("ab")
        self._logs.append(out)
        out.write(f"\n--- {time.strftime('%H:%M:%S')} started: python -m shared {' '.join(args)}\n".encode())
        out.flush()
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", "shared", "-v", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
        )
        self.pids.append(process.pid)
        return process

    def start(self, index: int) -> None:
        """(Re)start worker ``index`` if it is down."""
        with self._lock:
            slot = self._slots[index]
            if slot.process is None:
                slot.process = self._spawn(["run", "--config", str(slot.config)], slot.log)
                slot.paused = False
                slot.starts += 1

    def running(self) -> list[int]:
        """Workers that run now: started, not paused."""
        with self._lock:
            return [s.index for s in self._slots if s.process is not None and not s.paused]

    def kill(self, index: int) -> bool:
        """SIGKILL worker ``index`` (it stays down until ``start``); whether it was running."""
        with self._lock:
            slot = self._slots[index]
            if slot.process is None or slot.paused:
                return False
            slot.process.kill()
            slot.process.wait()
            _log.info("worker %d (pid %d) killed", index, slot.process.pid)
            slot.process = None
            return True

    def pause(self, index: int) -> bool:
        """SIGSTOP worker ``index``; whether it was running."""
        with self._lock:
            slot = self._slots[index]
            if slot.process is None or slot.paused:
                return False
            slot.process.send_signal(signal.SIGSTOP)
            slot.paused = True
            return True

    def resume(self, index: int) -> None:
        """SIGCONT worker ``index`` if it is paused."""
        with self._lock:
            slot = self._slots[index]
            if slot.process is not None and slot.paused:
                slot.process.send_signal(signal.SIGCONT)
            slot.paused = False

    def duplicate(self, index: int) -> None:
        """A duplicated pass request: one more worker with ``index``'s configuration, one pass per stream."""
        with self._lock:
            slot = self._slots[index]
            log = self._work_dir / f"duplicate-{len(self._extras)}.log"
            self._extras.append(self._spawn(["run", "--once", "--config", str(slot.config)], log))

    def reap(self) -> list[int]:
        """Note processes that ended on their own; the workers among them are down (to be restarted)."""
        ended = []
        with self._lock:
            for slot in self._slots:
                if slot.process is not None and not slot.paused and (code := slot.process.poll()) is not None:
                    _log.error("worker %d (pid %d) exited with %d", slot.index, slot.process.pid, code)
                    slot.exits.append(code)
                    self.unexpected.append(Exit(f"worker-{slot.index}", code, str(slot.log)))
                    slot.process = None
                    ended.append(slot.index)
            for process in [p for p in self._extras if p.poll() is not None]:
                self._extras.remove(process)
                self.duplicates_ended.append(int(process.returncode))
        return ended

    def restarts(self) -> int:
        with self._lock:
            return sum(max(0, s.starts - 1) for s in self._slots)

    def shutdown(self, grace: float = SHUTDOWN_GRACE) -> list[str]:
        """Stop every process started here (SIGTERM, then SIGKILL after ``grace``); the ones that needed SIGKILL."""
        with self._lock:
            self.reap()
            processes = [(f"worker-{s.index}", s.process) for s in self._slots if s.process is not None]
            processes += [(f"duplicate-{n}", p) for n, p in enumerate(self._extras)]
            for slot in self._slots:
                self.resume(slot.index)
            for _, process in processes:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
            deadline = time.monotonic() + grace
            forced = []
            for name, process in processes:
                try:
                    code = process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    forced.append(name)
                    process.kill()
                    process.wait()
                    continue
                if name.startswith("worker") and code not in (0, -signal.SIGTERM):
                    self.unexpected.append(Exit(name, code, str(self._work_dir / f"{name}.log")))
            for slot in self._slots:
                slot.process = None
            self._extras.clear()
            for out in self._logs:
                out.close()
            self._logs.clear()
        return forced
