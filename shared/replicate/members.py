"""A pass over some collections of a scoped stream: each collection's own pass, a few at a time, each read until
caught up, all within the stream's time budget.

One collection never blocks or stops the others: a collection whose pass fails has the failure recorded on its own
checkpoint (``status`` shows it, the next tick tries again) and the others go on; the group pass itself does not
raise for it, so one failing collection cannot send the other collections' queue message to the poison queue.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from shared import scope
from shared.errors import ConfigError
from shared.mongo_errors import explain
from shared.replicate.outcome import PassResult
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from shared.clock import Clock
    from shared.config import StreamConfig

RunPass = Callable[..., PassResult]  # Replicator.run_pass

_log = get_logger(__name__)


def run_members(
    run_pass: RunPass,
    stream: StreamConfig,
    members: Sequence[str],
    *,
    stop: threading.Event,
    clock: Clock,
) -> list[PassResult]:
    """A drained pass of each member of ``stream``, ``collection_concurrency`` at a time; results in member order.

    Members left when the budget runs out (or ``stop`` is set) are reported with outcome ``budget`` and zero work.
    """
    if stream.scope == "collection":
        raise ConfigError([f"stream '{stream.name}' replicates one collection; it has no collections to choose from"])
    deadline = clock.monotonic() + stream.time_budget

    def one(member: str) -> PassResult:
        unit = scope.unit_name(stream.name, member)
        left = deadline - clock.monotonic()
        if stop.is_set() or left <= 0:
            return PassResult(unit, "budget")
        try:
            return run_pass(unit, stop=stop, drain=True, budget=left)
        except Exception as exc:  # noqa: BLE001 (recorded on the collection's checkpoint; the others go on)
            message, _ = explain(exc)
            _log.error("stream %s: pass failed (the next tick tries again): %s", unit, message)
            return PassResult(unit, "error", detail=message)

    workers = min(stream.collection_concurrency, max(1, len(members)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{stream.name}-pass") as pool:
        # Each task runs in a copy of this thread's context, so its logs keep the caller's correlation id.
        contexts = [contextvars.copy_context() for _ in members]
        return list(pool.map(lambda job: job[0].run(one, job[1]), zip(contexts, members, strict=True)))
