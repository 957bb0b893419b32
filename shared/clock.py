"""Time as a dependency: token expiry, backoff and durations are tested with a fake clock, never by sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What the replicator needs from time: wall-clock seconds (token expiry), a monotonic timer, a sleep."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
