"""Reading the next batch while the previous one is written: order, the position, stops, errors, and no thread left.

The streaming loop runs on its own (``Streamer``) against nx-27017, or against the scripted source for what nx-27017
cannot produce (a lifecycle event, a lost history). The writer is the real ``EstuaryWriter`` with a hook that runs on
the pass thread just before each batch is written; a command listener on the source's client says which thread
brought events from the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import bson
import pytest
from bson.raw_bson import RawBSONDocument
from pymongo import monitoring
from pymongo.collection import Collection

from shared.auth.mongo_client import ClientFactory
from shared.clock import SystemClock
from shared.estuary import ApplyLanes, ApplyResult, EstuaryWriter, write_unordered
from shared.lease import HeldLease
from shared.position import CheckpointStore
from shared.replicate.outcome import PassResult, PassTimer, StreamHaltedError
from shared.replicate.streaming import READ_AHEAD_MAX_BYTES, Streamer, open_reader, reads_ahead
from shared.services import build_services
from shared.streams import Batch, HistoryLostError
from tests.change_streams import T0, Answer, change, plain
from tests.conftest import Harness

Before = Callable[[int, Sequence[RawBSONDocument]], None]


class Watched(EstuaryWriter):
    """The real writer; ``before(call, events)`` runs on the pass thread just before each batch is written."""

    def __init__(self, *args: Any, before: Before, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before = before
        self.calls = 0
        self.applied: list[Any] = []  # the documentKey _id of every event, in the order the batches came

    def apply(self, events: Sequence[RawBSONDocument], *, lanes: ApplyLanes | None = None) -> ApplyResult:
        self.calls += 1
        self.before(self.calls, events)
        result = super().apply(events, lanes=lanes)
        self.applied.extend(event["documentKey"]["_id"] for event in events)
        return result


class Reads(monitoring.CommandListener):
    """The threads whose change-stream commands (aggregate, getMore) brought events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[str] = []

    def on_read_thread(self) -> int:
        with self._lock:
            return sum(name.startswith("read-orders") for name in self._threads)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        cursor = event.reply.get("cursor") or {}
        if event.command_name in ("aggregate", "getMore") and (cursor.get("firstBatch") or cursor.get("nextBatch")):
            with self._lock:
                self._threads.append(threading.current_thread().name)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@dataclass
class Streaming:
    streamer: Streamer
    writer: Watched
    checkpoints: CheckpointStore
    start: Mapping[str, Any]

    def run(self, *, stop: threading.Event | None = None, idle_timeout: float = 0.5) -> str:
        timer = PassTimer(SystemClock(), budget=30, idle_timeout=idle_timeout, stop=stop or threading.Event())
        return self.streamer.run(timer)

    def position(self) -> dict[str, Any] | None:
        checkpoint = self.checkpoints.read("orders")
        assert checkpoint is not None
        return plain(checkpoint.resume_token)


@pytest.fixture
def reads() -> Reads:
    return Reads()


@pytest.fixture
def factory(reads: Reads) -> Iterator[ClientFactory]:
    made = ClientFactory(client_options={"serverSelectionTimeoutMS": 5000, "event_listeners": [reads]})
    yield made
    made.close()


def streaming(
    harness: Harness,
    factory: ClientFactory,
    before: Before,
    *,
    source: Collection[RawBSONDocument] | None = None,
    start: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Streaming:
    """A streamer holding the stream's lease, from ``start`` (default: the source's position now)."""
    services = build_services(harness.config(**overrides), factory=factory, metrics=harness.metrics.replication)
    stream = services.config.stream("orders")
    source = source if source is not None else factory.collection(stream.source)
    clock = SystemClock()
    if start is None:
        capture = open_reader(stream, source, clock=clock, token=None)
        start = capture.current_position()
        capture.close()
    held = services.checkpoints.acquire("orders", "overlap-test", stream.lease_duration)
    assert held is not None
    services.checkpoints.save(held.lease, duration=stream.lease_duration, resume_token=start)
    writer = Watched(
        partial(write_unordered, factory.collection(stream.estuary)),
        services.dead_letters,
        stream="orders",
        max_attempts=3,
        before=before,
    )
    streamer = Streamer(
        stream,
        source=source,
        writer=writer,
        checkpoints=services.checkpoints,
        held=HeldLease(held.lease, clock=clock),
        clock=clock,
        metrics=harness.metrics.replication,
        result=PassResult("orders", "idle"),
        token=start,
        start_after=False,
    )
    return Streaming(streamer, writer, services.checkpoints, start)


def documents(first: int, n: int) -> list[dict[str, Any]]:
    return [{"_id": f"d{i:04d}", "v": i} for i in range(first, first + n)]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def read_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("read-", "apply-"))]


def our_threads() -> set[threading.Thread]:
    """Threads that keep a process alive (pymongo's monitors are daemons and come and go on their own)."""
    return {t for t in threading.enumerate() if not t.daemon}


# ---------------------------------------------------------------------------------------------- nx-27017


def test_the_next_batch_should_be_read_while_one_is_written_and_the_position_saved_only_after_it(
    harness, factory, reads
):
    positions: list[dict[str, Any] | None] = []
    last_tokens: list[dict[str, Any] | None] = []
    read_while_writing: list[bool] = []

    def before(call: int, events: Sequence[RawBSONDocument]) -> None:
        positions.append(run.position())
        last_tokens.append(plain(events[-1]["_id"]))
        if call == 1:  # these arrive after batch 1 was read: only a read running now can bring them
            already = reads.on_read_thread()
            harness.source.insert_many(documents(500, 300))
            read_while_writing.append(wait_for(lambda: reads.on_read_thread() > already))

    run = streaming(harness, factory, before, batch_size=500, poll_interval=2.0)
    harness.source.insert_many(documents(0, 500))
    assert run.run() == "idle"
    assert read_while_writing == [True]
    assert run.writer.applied == [d["_id"] for d in documents(0, 800)]  # every event once, in order
    assert positions[0] == plain(run.start)
    assert positions[1] == last_tokens[0]  # batch 2 was read long before: the position waited for batch 1's ack
    assert run.position() == last_tokens[-1]
    assert harness.converged()
    assert read_threads() == []


def test_a_stop_while_a_batch_is_read_ahead_should_drop_it_unapplied_and_the_next_run_should_read_it_again(
    harness, factory, reads
):
    stop = threading.Event()
    last_tokens: list[dict[str, Any] | None] = []

    def before(call: int, events: Sequence[RawBSONDocument]) -> None:
        last_tokens.append(plain(events[-1]["_id"]))
        if call == 1:
            already = reads.on_read_thread()
            harness.source.insert_many(documents(500, 300))
            assert wait_for(lambda: reads.on_read_thread() > already)  # batch 2 is read, waiting to be applied
            stop.set()

    run = streaming(harness, factory, before, batch_size=500, poll_interval=2.0)
    harness.source.insert_many(documents(0, 500))
    threads = our_threads()
    assert run.run(stop=stop) == "interrupted"
    assert our_threads() == threads
    assert read_threads() == []
    assert run.writer.calls == 1
    assert harness.estuary.count_documents({}) == 500  # batch 2 dropped unapplied
    assert run.position() == last_tokens[0]
    assert run.run() == "idle"  # the same streamer, as a pass that goes on would: batch 2 is read again
    assert run.writer.applied == [d["_id"] for d in documents(0, 800)]
    assert harness.converged()


def test_an_error_while_writing_should_stop_the_read_ahead_and_leave_the_position_and_no_thread(
    harness, factory, reads
):
    def before(call: int, events: Sequence[RawBSONDocument]) -> None:
        raise RuntimeError("the estuary exploded")

    run = streaming(harness, factory, before, batch_size=100, poll_interval=0.5)
    harness.source.insert_many(documents(0, 300))
    threads = our_threads()
    with pytest.raises(RuntimeError, match="exploded"):
        run.run()
    assert our_threads() == threads
    assert read_threads() == []
    assert run.position() == plain(run.start)
    assert harness.estuary.count_documents({}) == 0


# ---------------------------------------------------------------------------------------------- scripted source
def never(call: int, events: Sequence[RawBSONDocument]) -> None:
    pass


def test_a_lifecycle_event_read_ahead_should_be_handled_after_the_batches_before_it_were_applied(
    harness, factory, scripted, scripted_collection
):
    scripted.aggregates = [
        Answer([change("t1", _id="a"), change("t2", _id="b"), change("t3", _id="c"), change("t4", "drop")])
    ]
    run = streaming(harness, factory, never, source=scripted_collection, start=T0, batch_size=2)
    with pytest.raises(StreamHaltedError, match="'drop'"):
        run.run()
    assert run.writer.applied == ["a", "b", "c"]
    assert run.position() == {"_data": "t3"}
    assert sorted(d["_id"] for d in harness.estuary.find()) == ["a", "b", "c"]
    assert read_threads() == []


def test_a_history_lost_while_reading_ahead_should_surface_after_the_batch_before_it_was_applied_and_saved(
    harness, factory, scripted, scripted_collection
):
    scripted.aggregates = [Answer([change("t1", _id="a"), change("t2", _id="b"), change("t3", _id="c")])]
    scripted.get_mores = [Answer(code=286, message="Resume of change stream was not possible")]
    run = streaming(harness, factory, never, source=scripted_collection, start=T0, batch_size=2)
    with pytest.raises(HistoryLostError):
        run.run()
    assert run.writer.applied == ["a", "b"]  # c was read, but its batch never completed
    assert run.position() == {"_data": "t2"}
    assert read_threads() == []


# ---------------------------------------------------------------------------------------------- when to read ahead


def test_the_next_batch_should_be_read_ahead_unless_this_one_ends_at_a_lifecycle_event_or_holds_too_many_bytes():
    def event(i: int, pad: int = 0) -> RawBSONDocument:
        return RawBSONDocument(bson.encode({"_id": {"_data": f"t{i}"}, "operationType": "insert", "pad": b"x" * pad}))

    small = [event(i) for i in range(3)]
    assert reads_ahead(Batch(events=small))
    assert not reads_ahead(Batch())  # nothing to write: the next read happens now
    assert not reads_ahead(Batch(events=small, lifecycle=event(9)))  # its policy may move the reader first
    piece = READ_AHEAD_MAX_BYTES // 4
    assert reads_ahead(Batch(events=[event(i, piece - 100) for i in range(4)]))
    assert not reads_ahead(Batch(events=[event(i, piece) for i in range(4)]))  # memory: one batch and that much
