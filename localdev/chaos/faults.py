"""Which fault when (``FaultSchedule``, pure and seeded) and the thread that injects them (``Injector``).

The schedule draws every kind once, in a shuffled order, before any kind comes again, so that even a short run
meets many kinds; the gaps (2-4 s), targets, counts and durations come from the same seeded generator, so a seed
names a run. The injector applies each fault to the stand-ins or the workers and undoes it when its time is up
(restart a killed worker, SIGCONT a paused one, release a held path, end an outage); ``finish`` undoes everything
still pending at once. A fault that finds no target (every worker down or paused) is skipped and counted.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from localdev.chaos.workers import Workers
from localdev.chaos.world import LEASE_DURATION, World

_log = logging.getLogger(__name__)

KINDS = (
    "kill",  # SIGKILL a worker; restart it 2-5 s later
    "stop",  # SIGSTOP a worker past its lease (lease + 2-5 s), then SIGCONT
    "stall",  # hold one worker's estuary path 3-12 s, then deliver what it held, late
    "throttle",  # the estuary answers 16500 (request rate is large)
    "write_error",  # the estuary answers 91 (ShutdownInProgress), or one worker's estuary connections are reset
    "reauth",  # the source demands re-authentication (391)
    "revoke",  # every token issued before now is revoked at the source
    "identity_5xx",  # the identity endpoint answers 503
    "identity_outage",  # the identity endpoint is unreachable for 8-12 s (and tokens are needed meanwhile)
    "duplicate",  # a duplicated pass request: one more worker runs one pass of every stream
)


@dataclass(frozen=True)
class Fault:
    """One fault: its kind, the pause before it, and what it is done to and for how long (as the kind needs)."""

    kind: str
    after: float
    target: int
    count: int
    duration: float
    variant: str = ""


class FaultSchedule:
    """An endless, seeded sequence of faults; every kind once per round, in a shuffled order."""

    def __init__(self, seed: int, *, workers: int, lease: float = LEASE_DURATION, kinds: Sequence[str] = KINDS) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}" if unknown else "no fault kinds")
        self._rng = random.Random(seed)  # noqa: S311 (a schedule, not a secret)
        self._workers = workers
        self._lease = lease
        self._kinds = list(kinds)
        self._round: list[str] = []

    def __iter__(self) -> Iterator[Fault]:
        return self

    def __next__(self) -> Fault:
        rng = self._rng
        if not self._round:
            self._round = rng.sample(self._kinds, len(self._kinds))
        kind = self._round.pop(0)
        after, target = rng.uniform(2.0, 4.0), rng.randrange(self._workers)
        count, variant, duration = 1, "", 0.0
        if kind == "kill":
            duration = rng.uniform(2.0, 5.0)
        elif kind == "stop":
            duration = self._lease + rng.uniform(2.0, 5.0)
        elif kind == "stall":
            duration = rng.uniform(3.0, 12.0)
        elif kind == "throttle":
            count, variant = rng.randint(1, 6), rng.choice(("write_error", "command"))
        elif kind == "write_error":
            count, variant = rng.randint(1, 4), rng.choice(("shutdown", "reset"))
        elif kind == "reauth":
            count = rng.randint(1, 5)
        elif kind == "identity_5xx":
            count = rng.randint(1, 3)
        elif kind == "identity_outage":
            duration = rng.uniform(8.0, 12.0)
        return Fault(kind, after, target, count, duration, variant)

    def take(self, n: int) -> list[Fault]:
        """The next ``n`` faults."""
        return [next(self) for _ in range(n)]


class Injector(threading.Thread):
    """Injects the schedule's faults until ``stop``; keeps the workers up (restarting what ended on its own)."""

    def __init__(self, schedule: FaultSchedule, *, world: World, workers: Workers) -> None:
        super().__init__(name="injector", daemon=True)
        self._schedule = schedule
        self._world = world
        self._workers = workers
        self.stop = threading.Event()
        self.injected: collections.Counter[str] = collections.Counter()
        self.skipped: collections.Counter[str] = collections.Counter()
        self.timeline: list[tuple[float, str]] = []  # (epoch seconds, what was done), for the evidence
        self._undo: list[tuple[float, str, Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._outage_until = 0.0
        self.error: str | None = None

    def run(self) -> None:
        try:
            due = time.monotonic()
            fault = next(self._schedule)
            due += fault.after
            while not self.stop.wait(0.1):
                self.tick()
                if time.monotonic() >= due:
                    self._inject(fault)
                    fault = next(self._schedule)
                    due = time.monotonic() + fault.after
        except Exception as exc:  # noqa: BLE001 (a harness failure: stop injecting, say so in the report)
            self.error = f"{type(exc).__name__}: {exc}"
            _log.exception("the fault injector stopped")

    def tick(self) -> None:
        """Run the undo steps that are due; restart workers that ended on their own."""
        now = time.monotonic()
        with self._lock:
            due = [step for step in self._undo if step[0] <= now]
            self._undo = [step for step in self._undo if step[0] > now]
        for _, what, action in due:
            self._note(what)
            action()
        for index in self._workers.reap():
            self._later(
                3.0, f"restart worker {index} (it exited on its own)", functools.partial(self._workers.start, index)
            )

    def finish(self) -> None:
        """Undo everything still pending now (after ``stop`` and ``join``): workers up, paths released."""
        with self._lock:
            pending, self._undo = self._undo, []
        for _, what, action in pending:
            self._note(f"{what} (at the end)")
            action()
        self._world.release_all()
        for index in range(self._workers.count):
            self._workers.resume(index)
            self._workers.start(index)

    def _later(self, seconds: float, what: str, action: Callable[[], None]) -> None:
        with self._lock:
            self._undo.append((time.monotonic() + seconds, what, action))

    def _note(self, what: str) -> None:
        _log.info("chaos: %s", what)
        self.timeline.append((time.time(), what))

    def _inject(self, fault: Fault) -> None:
        done = _APPLY[fault.kind](self, fault)
        if done is None:
            self.skipped[fault.kind] += 1
            return
        self.injected[fault.kind] += 1
        self._note(f"{fault.kind}: {done}")

    def _worker(self, fault: Fault) -> int | None:
        """The target worker, or the next one that runs now."""
        running = self._workers.running()
        if not running:
            return None
        return min(running, key=lambda i: (i - fault.target) % self._workers.count)

    # -- the kinds (each returns what it did, or None when it found nothing to do it to) -------------------------

    def _do_kill(self, fault: Fault) -> str | None:
        index = self._worker(fault)
        if index is None or not self._workers.kill(index):
            return None
        self._later(fault.duration, f"restart worker {index}", lambda: self._workers.start(index))
        return f"worker {index} SIGKILL, restart in {fault.duration:.1f}s"

    def _do_stop(self, fault: Fault) -> str | None:
        index = self._worker(fault)
        if index is None or not self._workers.pause(index):
            return None
        self._later(fault.duration, f"SIGCONT worker {index}", lambda: self._workers.resume(index))
        return f"worker {index} SIGSTOP for {fault.duration:.1f}s"

    def _do_stall(self, fault: Fault) -> str | None:
        free = [i for i in range(len(self._world.paths)) if not self._world.paths[i].holding]
        if not free:
            return None
        index = min(free, key=lambda i: (i - fault.target) % len(self._world.paths))
        path = self._world.paths[index]
        path.hold()
        self._later(fault.duration, f"release worker {index}'s estuary path", path.release)
        return f"worker {index}'s estuary path held for {fault.duration:.1f}s"

    def _do_throttle(self, fault: Fault) -> str:
        as_write_error = fault.variant == "write_error"
        self._world.estuary.fail(
            "update", 16500, "Request rate is large", times=fault.count, write_error=as_write_error
        )
        return f"estuary 16500 on the next {fault.count} update(s) ({fault.variant})"

    def _do_write_error(self, fault: Fault) -> str:
        if fault.variant == "reset":
            path = self._world.paths[fault.target]
            return f"worker {fault.target}'s estuary connections reset ({path.reset_connections()})"
        self._world.estuary.fail("update", 91, "ShutdownInProgress", times=fault.count)
        return f"estuary 91 ShutdownInProgress on the next {fault.count} update(s)"

    def _do_reauth(self, fault: Fault) -> str:
        self._world.oidc.inject_reauth(fault.count)
        return f"source 391 on the next {fault.count} command(s)"

    def _do_revoke(self, fault: Fault) -> str:
        cutoff = math.floor(time.time())  # iat has whole seconds: tokens of this very second stay valid
        self._world.oidc.revoke_tokens_issued_before(cutoff)
        return f"tokens issued before {time.strftime('%H:%M:%S', time.localtime(cutoff))} revoked"

    def _do_identity_5xx(self, fault: Fault) -> str:
        self._world.stub.fail_next(fault.count, 503, message="Service unavailable (chaos)")
        return f"identity endpoint 503 on the next {fault.count} request(s)"

    def _do_identity_outage(self, fault: Fault) -> str:
        identity = self._world.identity
        identity.refuse(True)
        identity.reset_connections()  # kept-alive connections go too
        self._world.oidc.inject_reauth(self._workers.count)  # so that tokens are needed during the outage
        self._outage_until = max(self._outage_until, time.monotonic() + fault.duration)

        def back() -> None:
            if time.monotonic() >= self._outage_until - 0.2:  # an outage that began meanwhile goes on
                identity.refuse(False)

        self._later(fault.duration, "identity endpoint back", back)
        return f"identity endpoint unreachable for {fault.duration:.1f}s, {self._workers.count} reauth(s) forced"

    def _do_duplicate(self, fault: Fault) -> str:
        self._workers.duplicate(fault.target)
        return f"duplicated pass request (run --once with worker {fault.target}'s configuration)"


_APPLY: dict[str, Callable[[Injector, Fault], str | None]] = {
    "kill": Injector._do_kill,
    "stop": Injector._do_stop,
    "stall": Injector._do_stall,
    "throttle": Injector._do_throttle,
    "write_error": Injector._do_write_error,
    "reauth": Injector._do_reauth,
    "revoke": Injector._do_revoke,
    "identity_5xx": Injector._do_identity_5xx,
    "identity_outage": Injector._do_identity_outage,
    "duplicate": Injector._do_duplicate,
}
