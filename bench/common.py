"""What the throughput benchmarks share to measure a run: peak RSS, the progress counter, the data check.

``replication_throughput`` and ``snapshot_throughput`` both time the replicator against a raw pymongo loop on
nx-27017; these helpers make their figures comparable: the same memory window, the same moment "done" is taken,
the same estuary-equals-source check and the same machine line.
"""

from __future__ import annotations

import os
import platform
import random
import re
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import Counter
from opentelemetry.util.types import Attributes
from pymongo.collection import Collection

MIB = 1024 * 1024

Doc = dict[str, Any]


def machine() -> str:
    """The machine line of a report: architecture, cores and Python, since the figures mean little without it."""
    return f"{platform.machine()}, {os.cpu_count()} cpu, Python {platform.python_version()}"


class PeakRss:
    """Peak resident set size of this process since ``reset``.

    Linux: ``VmHWM`` from /proc/self/status, reset by writing 5 to /proc/self/clear_refs (exact, and no
    sampling thread adding load). Elsewhere the process's lifetime peak (``getrusage``).
    """

    def __init__(self) -> None:
        self.exact = False

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.exact = False
        else:
            self.exact = True

    def current_mib(self) -> float:
        return self._status_kib("VmRSS") / 1024 if self.exact else self._lifetime_peak_mib()

    def peak_mib(self) -> float:
        return self._status_kib("VmHWM") / 1024 if self.exact else self._lifetime_peak_mib()

    @staticmethod
    def _status_kib(field: str) -> int:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        return int(match.group(1)) if match else 0

    @staticmethod
    def _lifetime_peak_mib() -> float:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class Progress(Counter):
    """Stands in for a replicator instrument (``events_read``, ``documents_copied``): counts, and notes when the count
    reached N.

    ``Replicator`` adds to it after the estuary and the checkpoint store acknowledged a batch. With ``stop``,
    reaching N also ends the pass (used when profiling, where the idle tail would only add sleep).
    """

    def __init__(
        self, target: int, stop: threading.Event | None = None, on_reached: Callable[[], None] | None = None
    ) -> None:
        self.target = target
        self.count = 0
        self.reached_at: float | None = None
        self._stop = stop
        self._on_reached = on_reached

    def add(self, amount: float, attributes: Attributes = None, context: Context | None = None) -> None:
        self.count += int(amount)
        if self.reached_at is None and self.count >= self.target:
            self.reached_at = time.perf_counter()
            if self._on_reached is not None:
                self._on_reached()
            if self._stop is not None:
                self._stop.set()


class CpuMeter:
    """CPU seconds (user + system) that processes used between ``start`` and ``stop``: the benchmark itself (every
    thread) and the servers, by name. On a 2-core machine their sum over the wall time says how close a run came to
    what the cores can give. Linux /proc; zeros elsewhere."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = {"client": None, **pids}
        self._started: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._started = {name: _cpu_seconds(pid) for name, pid in self._pids.items()}

    def stop(self) -> None:
        self.used = {name: round(_cpu_seconds(pid) - self._started[name], 3) for name, pid in self._pids.items()}


def _cpu_seconds(pid: int | None) -> float:
    try:
        stat = Path(f"/proc/{pid or 'self'}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def differences(source: Collection[Doc], estuary: Collection[Doc]) -> int:
    """Documents that differ between the two collections (missing, extra or unequal), by a streaming merge."""
    ours = iter(source.find({}, sort=[("_id", 1)], batch_size=1000))
    theirs = iter(estuary.find({}, sort=[("_id", 1)], batch_size=1000))
    a, b, diff = next(ours, None), next(theirs, None), 0
    while a is not None or b is not None:
        if a is not None and b is not None and a["_id"] == b["_id"]:
            diff += a != b
            a, b = next(ours, None), next(theirs, None)
        elif b is None or (a is not None and a["_id"] < b["_id"]):
            diff, a = diff + 1, next(ours, None)
        else:
            diff, b = diff + 1, next(theirs, None)
    return diff


def order_document(doc_id: str, i: int, rng: random.Random) -> Doc:
    """The benchmarks' workload document: JSON-native fields of a plausible order (about 300 bytes)."""
    return {
        "_id": doc_id,
        "customer": f"customer-{rng.randrange(1000):04d}",
        "qty": rng.randrange(1, 50),
        "price": round(rng.uniform(1, 500), 2) + 0.25,  # always fractional: stays a float through JSON
        "status": "new",
        "paid": rng.random() < 0.5,
        "tags": [f"tag-{rng.randrange(20)}" for _ in range(3)],
        "address": {"city": f"city-{rng.randrange(100)}", "zip": f"{rng.randrange(100000):05d}"},
        "note": "x" * rng.randrange(20, 120),
        "seq": i,
    }
