"""What a pass reports, and the three ways it can end: out of time, halted for an operator, or failed."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shared.errors import ReplicatorError

if TYPE_CHECKING:
    from shared.clock import Clock

# "error": a collection's pass in a group pass raised; recorded on its checkpoint, retried on the next tick.
# "dropped": a scoped stream's collection is gone from the source.
PassOutcome = Literal[
    "idle", "budget", "interrupted", "lease_held", "lease_lost", "stopped", "failed", "dropped", "error"
]
TimeOutcome = Literal["idle", "budget", "interrupted"]
HaltStatus = Literal["stopped", "failed", "dropped"]
DROPPED_MESSAGE = "the source collection no longer exists (dropped or renamed); its estuary collection is kept"


@dataclass
class PassResult:
    """What one pass did; ``outcome`` says why it ended."""

    stream: str
    outcome: PassOutcome
    events: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    batches: int = 0
    copied: int = 0  # documents copied by an initial sync / resnapshot in this pass
    lag_seconds: float | None = None
    seconds: float = 0.0
    detail: str | None = None


class StreamHaltedError(ReplicatorError):
    """The stream cannot go on until a person acts (a lost resume token under ``fail``, a lifecycle event under
    ``stop``, ``_id`` values a copy cannot range over): the pass records ``status`` and ``error`` and ends."""

    def __init__(
        self, status: HaltStatus, message: str, *, hint: str | None = None, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.error = {"message": message, **({"hint": hint} if hint else {}), **(details or {})}


class PassTimer:
    """Decides when a pass ends for lack of time or work: stopped from outside, out of budget, or idle too long.

    The first verdict stands: once ``expired`` said yes, ``outcome`` says why, whichever phase asks later.
    """

    def __init__(self, clock: Clock, *, budget: float, idle_timeout: float, stop: threading.Event) -> None:
        self._clock = clock
        self._deadline = clock.monotonic() + budget
        self._idle_timeout = idle_timeout
        self._stop = stop
        self._ended = False
        self.outcome: TimeOutcome = "idle"

    def expired(self, active_at: float) -> bool:
        """Whether the pass must end now; ``active_at`` is when work last arrived (events, a copied batch)."""
        if not self._ended:
            now = self._clock.monotonic()
            if self._stop.is_set():
                self._ended, self.outcome = True, "interrupted"
            elif now >= self._deadline:
                self._ended, self.outcome = True, "budget"
            elif now - active_at >= self._idle_timeout:
                self._ended, self.outcome = True, "idle"
        return self._ended
