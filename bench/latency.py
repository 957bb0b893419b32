"""A network path with latency for the benchmarks: the fault proxy with a delay, in a child process of its own.

A server on loopback answers in microseconds; a cluster in another zone or region adds a round trip to every
command, which is what concurrent writers and reading ahead hide. ``LatencyProxy`` forwards every client->server
chunk ``delay`` seconds after it arrived (``FaultProxy.delay``; connections are delayed independently, as on a real
network). It runs in a process of its own: in the benchmark's process its event loop would compete for the GIL with
the very client being measured.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from localdev.standins.child import ChildProcess

ROOT = Path(__file__).resolve().parent.parent

_SERVE = """
import signal, sys, threading
sys.path.insert(0, sys.argv[1])
from localdev.standins.fault_proxy import FaultProxy

proxy = FaultProxy(upstream=(sys.argv[2], int(sys.argv[3])), port=int(sys.argv[4])).start()
proxy.delay(float(sys.argv[5]))
ended = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: ended.set())
ended.wait()
proxy.stop()
"""


class LatencyProxy(ChildProcess):
    """A proxy in front of ``upstream`` (host, port) adding ``delay`` seconds to every request."""

    label = "latency-proxy"

    def __init__(self, work_dir: Path, *, upstream: tuple[str, int], delay: float) -> None:
        super().__init__(work_dir)
        self.upstream = upstream
        self.delay = delay

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def _command(self) -> list[str]:
        host, port = self.upstream
        return [sys.executable, "-c", _SERVE, str(ROOT), host, str(port), str(self.port), str(self.delay)]

    def _probe(self) -> None:
        socket.create_connection((self.host, self.port), timeout=0.25).close()
