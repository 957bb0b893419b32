"""Bounded retries, within one pass, of work that failed for a transient reason (network, throttling, election)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from shared.errors import TransientError
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from shared.clock import Clock

ATTEMPTS = 3  # tries within one pass; then the pass fails and the queue retries the message
_T = TypeVar("_T")

_log = get_logger(__name__)


def retry_transient(work: Callable[[], _T], *, what: str, stream: str, clock: Clock) -> _T:
    """Run ``work``; after a ``TransientError`` wait 1 s, 2 s, ... and run it again, ``ATTEMPTS`` times at most.

    ``work`` must be safe to run again: a batch applied twice leaves the same estuary, a copy resumes from the
    position the estuary acknowledged.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return work()
        except TransientError as exc:
            if attempt == ATTEMPTS:
                raise
            delay = 2.0 ** (attempt - 1)
            _log.warning(
                "stream %s: %s failed (%s), retrying in %.0fs",
                stream,
                what,
                exc.message,
                delay,
                extra={"stream": stream},
            )
            clock.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
