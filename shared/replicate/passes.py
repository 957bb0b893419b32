"""One pass of one stream: take the lease, (copy,) stream changes, save positions, until the budget or idleness.

The rules a pass keeps:

* the checkpoint moves only after the estuary acknowledged the batch, and also after empty polls (so an idle
  stream's token does not age out of the change log);
* a worker that lost its lease stops before writing anything more; a stream whose lease is held elsewhere ends
  the pass quietly;
* a lost resume token follows ``on_history_lost`` (``fail``: the stream stops, loudly; ``resnapshot``: the
  collection is copied again; ``start_now``: a gap is recorded and reported; ``rewind``: the stream reopens at the
  last applied event's cluster time, replaying, else follows ``rewind_fallback``); lifecycle events follow
  ``on_invalidate``; nothing is skipped silently;
* any other failure is recorded on the checkpoint (``status`` shows it) and re-raised, so the Functions queue
  retries the message and finally moves it to ``-poison``.

``Replicator.run_pass`` holds the lease; ``_Pass.run`` is the one place that decides the outcome; the phases are
``copying.Copy`` and ``streaming.Streamer``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from shared.errors import ConfigError, ReplicatorError
from shared.estuary import EstuaryWriter
from shared.fence import EstuaryFence
from shared.lease import HeldLease, LeaseLostError
from shared.mongo_errors import explain
from shared.position import CopyProgress, hold_lease
from shared.replicate.copying import Copy, begin_copy
from shared.replicate.members import run_members
from shared.replicate.outcome import DROPPED_MESSAGE, PassResult, PassTimer, StreamHaltedError
from shared.replicate.routing import Collections, Ends, pass_ends
from shared.replicate.streaming import IDLE_SAVE_INTERVAL, Streamer
from shared.streams import HistoryLostError, at_time, describe_time, rewind_time
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bson import Timestamp
    from bson.raw_bson import RawBSONDocument

    from shared.clock import Clock
    from shared.config import ReplicatorConfig
    from shared.dead_letters import DeadLetters
    from shared.discovery import Discovery
    from shared.estuary import Applies
    from shared.position import CheckpointStore, Held
    from shared.replicate.outcome import PassOutcome, TimeOutcome
    from shared.telemetry import ReplicationMetrics

_REWINDS_PER_PASS = 3  # on_history_lost: rewind; a stream that keeps losing its position follows rewind_fallback

_log = get_logger(__name__)


class Replicator:
    """Runs passes of the configured streams (one instance per process; passes of different streams may run in
    parallel threads)."""

    def __init__(
        self,
        config: ReplicatorConfig,
        *,
        checkpoints: CheckpointStore,
        dead_letters: DeadLetters,
        collections: Collections,
        discovery: Discovery,
        clock: Clock,
        metrics: ReplicationMetrics,
    ) -> None:
        self._config = config
        self._checkpoints = checkpoints
        self._dead_letters = dead_letters
        self._collections = collections
        self._discovery = discovery
        self._clock = clock
        self._metrics = metrics

    def run_pass(
        self, name: str, *, stop: threading.Event | None = None, drain: bool = False, budget: float | None = None
    ) -> PassResult:
        """One pass of the stream ``name`` (or unit ``stream/collection``); raises when it failed in a way worth
        retrying. ``drain``: end once caught up (a collection of a scoped stream); ``budget``: at most this long."""
        stream = self._config.stream(name)
        if stream.scope != "collection" and stream.cursor == "per_collection":
            raise ConfigError(
                [f"stream '{name}' covers the matching collections of a {stream.scope}: its passes are per collection"],
                hint="run_collections runs some of them; python -m shared status lists them",
            )
        started = self._clock.monotonic()
        with hold_lease(self._checkpoints, name, duration=stream.lease_duration, role="pass") as held:
            if held is None:
                _log.info("stream %s: lease held by another worker, nothing to do", name, extra={"stream": name})
                result = PassResult(name, "lease_held")
            else:
                result = _Pass(
                    pass_ends(
                        stream,
                        collections=self._collections,
                        accepts=self._discovery.accepts,
                        dead_letters=self._dead_letters,
                        clock=self._clock,
                    ),
                    held,
                    checkpoints=self._checkpoints,
                    dead_letters=self._dead_letters,
                    clock=self._clock,
                    metrics=self._metrics,
                    stop=stop or threading.Event(),
                    drain=drain,
                    budget=min(stream.time_budget, budget or stream.time_budget),
                ).run()
        result.seconds = self._clock.monotonic() - started
        self._metrics.passes.add(1, {"stream": name, "outcome": result.outcome})
        _log.info(
            "stream %s: pass ended (%s): %d events, %d applied, %d dead-lettered, %d batches in %.1fs",
            name,
            result.outcome,
            result.events,
            result.applied,
            result.dead_lettered,
            result.batches,
            result.seconds,
            extra={"event": "pass_ended", "stream": name, "outcome": result.outcome},
        )
        return result

    def run_requested(self, name: str, collections: Sequence[str] = ()) -> list[PassResult]:
        """What a queue message asks for: a pass of the stream, or of some collections of a scoped stream."""
        return self.run_collections(name, collections) if collections else [self.run_pass(name)]

    def run_collections(
        self, name: str, members: Sequence[str], *, stop: threading.Event | None = None
    ) -> list[PassResult]:
        """One pass over ``members`` of the scoped stream ``name``, each until caught up (see ``members``)."""
        return run_members(
            self.run_pass, self._config.stream(name), members, stop=stop or threading.Event(), clock=self._clock
        )


class _Pass:
    """One pass of one stream, holding its lease: the phases in order, and the outcome decided in ``run``."""

    def __init__(
        self,
        ends: Ends,
        held: Held,
        *,
        checkpoints: CheckpointStore,
        dead_letters: DeadLetters,
        clock: Clock,
        metrics: ReplicationMetrics,
        stop: threading.Event,
        drain: bool,
        budget: float,
    ) -> None:
        self._stream = stream = ends.stream
        self._checkpoint = held.checkpoint
        self._held = HeldLease(held.lease, clock=clock)
        self._checkpoints = checkpoints
        self._dead_letters = dead_letters
        _, self._source, self._estuary, self._route = ends
        self._clock = clock
        self._metrics = metrics
        self._stop = stop
        self._budget = budget
        self._drain = drain
        # Draining, a pass ends at the first poll that finds nothing: an idle collection costs one poll.
        self._idle_timeout = min(stream.idle_timeout, stream.poll_interval) if drain else stream.idle_timeout
        self._attributes = {"stream": stream.name}
        self._started = clock.monotonic()
        self._result = PassResult(stream.name, "idle")
        self._fence = (
            None
            if self._estuary is None
            else EstuaryFence(
                self._estuary,
                stream=stream.name,
                held=self._held,
                mode=stream.fencing,
                write_timeout=stream.estuary_write_timeout,
                clock=clock,
            )
        )

    def run(self) -> PassResult:
        checkpoint = self._checkpoint
        outcome: PassOutcome
        if checkpoint.status in ("stopped", "failed", "dropped"):  # an operator (or discovery) acts first
            outcome, detail = checkpoint.status, (checkpoint.last_error or {}).get("message")
        else:
            streamer = self._streamer()
            try:
                outcome, detail = self._settle(streamer)
            except LeaseLostError as exc:
                _log.warning("stream %s: %s", self._stream.name, exc.message, extra=self._attributes)
                outcome, detail = "lease_lost", None
            except Exception as exc:
                self._record_failure(exc)
                raise
            finally:
                streamer.close()
        self._result.outcome, self._result.detail = outcome, detail
        return self._result

    def _settle(self, streamer: Streamer) -> tuple[PassOutcome, str | None]:
        """Run the phases, then record how the stream stands: idle (with its change rate) or halted."""
        try:
            outcome = self._phases(streamer)
        except StreamHaltedError as halt:
            self._checkpoints.set_status(self._held.lease, halt.status, error=halt.error)
            return halt.status, halt.message
        self._checkpoints.set_status(self._held.lease, "idle", extra=self._rate_fields(streamer.bytes_read))
        return outcome, None

    def _phases(self, streamer: Streamer) -> TimeOutcome:
        """Copy when a copy is due (resuming one under way), then stream; recover from a lost token by policy."""
        checkpoint = self._checkpoint
        if self._drain and isinstance(self._source, Collection) and not _exists(self._source):
            # DocumentDB sends no drop event: a scoped stream's collection is looked for before each pass.
            raise StreamHaltedError("dropped", DROPPED_MESSAGE)
        self._checkpoints.set_status(self._held.lease, "running")
        timer = PassTimer(self._clock, budget=self._budget, idle_timeout=self._idle_timeout, stop=self._stop)
        copying = (checkpoint.snapshot or CopyProgress(reason="")) if checkpoint.phase == "copying" else None
        if self._stream.initial_sync and checkpoint.status == "new" and checkpoint.resume_token is None:
            copying = begin_copy(self._checkpoints, self._held.lease, stream=self._stream.name, reason="initial_sync")
        while True:
            if copying is not None:
                handoff = self._copy().run(copying, timer)
                if handoff is None:
                    return timer.outcome
                streamer.restart_at(handoff, saved=True)
                copying = None
            try:
                return streamer.run(timer)
            except HistoryLostError as exc:
                copying = self._history_lost(exc, streamer)

    def _history_lost(self, exc: HistoryLostError, streamer: Streamer) -> CopyProgress | None:
        """Apply ``on_history_lost``: halt, or the copy to run (resnapshot), or ``None`` to stream on from a cluster
        time (rewind) or from now (start_now); a rewind that cannot be done follows ``rewind_fallback``."""
        name, policy, message = self._stream.name, self._stream.on_history_lost, exc.message
        log_extra = {**self._attributes, "event": "history_lost"}
        saved = self._checkpoints.read(name) or self._checkpoint  # with the batches this pass applied
        if policy == "rewind":
            to = rewind_time(saved.last_cluster_time, saved.last_event_at, self._stream.rewind_margin)
            rewinds = saved.counters.get("rewinds", 0) - self._checkpoint.counters.get("rewinds", 0)
            if exc.at is not None:
                why = ""  # the reader's message names the time the change log no longer reaches
            elif to is None:
                why = "; no applied event's time is known to rewind to"
            elif rewinds >= _REWINDS_PER_PASS:
                why = f"; lost again after {rewinds} rewinds in this pass"
            else:
                self._rewind(exc, streamer, to)
                return None
            policy = self._stream.rewind_fallback
            message = f"{message}{why} (rewind_fallback: {policy})"
        if policy == "fail":
            _log.error("stream %s: %s; stream stopped", name, message, extra=log_extra)
            raise StreamHaltedError("failed", message, hint=exc.hint)
        streamer.close()
        if policy == "resnapshot":
            _log.error(
                "stream %s: %s; copying the collection again (on_history_lost: resnapshot)",
                name,
                message,
                extra=log_extra,
            )
            self._checkpoints.set_status(
                self._held.lease, "running", error={"message": message, "recovery": "resnapshot"}
            )
            return begin_copy(self._checkpoints, self._held.lease, stream=name, reason=f"resnapshot after: {message}")
        since = saved.last_event_at or self._checkpoint.updated_at
        self._checkpoints.record_gap(self._held.lease, since=since, reason=message)
        self._metrics.gaps.add(1, self._attributes)
        _log.error(
            "stream %s: %s; continuing from now (on_history_lost: start_now), gap recorded",
            name,
            message,
            extra={**self._attributes, "event": "gap_recorded"},
        )
        streamer.restart_at(None, saved=False)
        return None

    def _rewind(self, exc: HistoryLostError, streamer: Streamer, to: Timestamp) -> None:
        """Reopen at cluster time ``to`` (on_history_lost: rewind): the events since are applied again."""
        self._checkpoints.record_rewind(
            self._held.lease, position=at_time(to), to=to, by="on_history_lost", reason=exc.message
        )
        _log.warning(
            "stream %s: %s; rewinding to %s, %.0f s before the last applied event (on_history_lost: rewind): the "
            "events since then are applied again",
            self._stream.name,
            exc.message,
            describe_time(to),
            self._stream.rewind_margin,
            extra={**self._attributes, "event": "history_rewound"},
        )
        streamer.restart_at(at_time(to), saved=False)  # saved at the first poll: the server's token replaces the time

    def _streamer(self) -> Streamer:
        return Streamer(
            self._stream,
            source=self._source,
            writer=self._writer(),
            checkpoints=self._checkpoints,
            held=self._held,
            clock=self._clock,
            metrics=self._metrics,
            result=self._result,
            token=self._checkpoint.resume_token,
            start_after=self._checkpoint.start_after,
            idle_save_interval=0.0 if self._drain else IDLE_SAVE_INTERVAL,
        )

    def _writer(self) -> Applies:
        if self._route is not None:
            return self._route(self._held)
        return EstuaryWriter(
            self._estuary_fence().write,
            self._dead_letters,
            stream=self._stream.name,
            max_attempts=self._stream.max_apply_attempts,
            transform=self._stream.transform,
        )

    def _estuary_fence(self) -> EstuaryFence:
        if self._fence is None:  # validation keeps copies and single change streams apart
            raise ReplicatorError(f"stream {self._stream.name}: a single change stream has no one estuary to copy to")
        return self._fence

    def _copy(self) -> Copy:
        if not isinstance(self._source, Collection) or self._estuary is None:
            raise ReplicatorError(f"stream {self._stream.name}: a single change stream cannot copy its collections")
        return Copy(
            self._stream,
            source=self._source,
            estuary=self._estuary,
            write=self._estuary_fence().write,
            dead_letters=self._dead_letters,
            checkpoints=self._checkpoints,
            held=self._held,
            clock=self._clock,
            metrics=self._metrics,
            result=self._result,
        )

    def _rate_fields(self, bytes_read: int) -> dict[str, Any]:
        """The source's recent change volume (bytes/s, smoothed over passes), for the token-age warning."""
        elapsed = self._clock.monotonic() - self._started
        if elapsed <= 0:
            return {}
        rate = bytes_read / elapsed
        previous = self._checkpoint.source_bytes_per_s
        return {"source_bytes_per_s": rate if previous is None else (previous + rate) / 2}

    def _record_failure(self, exc: Exception) -> None:
        message, _ = explain(exc)
        _log.error(
            "stream %s: pass failed: %s", self._stream.name, message, extra={**self._attributes, "event": "pass_failed"}
        )
        try:
            self._checkpoints.set_status(
                self._held.lease, "retrying", error={"message": message, "type": type(exc).__name__}
            )
        except (PyMongoError, ReplicatorError) as record_error:  # best effort: the original error matters
            _log.warning("stream %s: could not record the failure: %s", self._stream.name, record_error)


def _exists(collection: Collection[RawBSONDocument]) -> bool:
    return bool(collection.database.list_collection_names(filter={"name": collection.name}))
