"""What the driver measures: the lag while the run goes on, the catch-up at the end, and the final comparisons.

The lag of a stream at a sample is the time of the newest source write acknowledged before the sample minus the
time of the last event its checkpoint saved (what the estuary is known to have), when positive. At the end: the
streams' checkpoint counters, the exact stored bytes of every source and estuary document by ``_id``, a full
``python -m shared verify`` (a separate process, as an operator runs it), and the dead letters, each of which must
be a planted poison document.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import bson
from bson import json_util
from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError

from localdev.chaos.workload import Workload
from localdev.chaos.world import STREAMS, World
from shared.position import CheckpointStore
from shared.raw_bson import RAW
from shared.services import Services

_log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 0.5
_MAX_IDS = 10  # _ids listed per kind of difference


class LagSampler(threading.Thread):
    """Samples every stream's checkpoint every ``SAMPLE_INTERVAL`` until ``stop``; keeps the longest lag."""

    def __init__(self, checkpoints: CheckpointStore, workload: Workload) -> None:
        super().__init__(name="lag", daemon=True)
        self._checkpoints = checkpoints
        self._workload = workload
        self.stop = threading.Event()
        self.longest: dict[str, float] = {s.name: 0.0 for s in STREAMS}
        self.longest_at: dict[str, float] = {}
        self.samples = 0
        self.read_errors = 0

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_INTERVAL):
            self.sample()

    def sample(self) -> None:
        acked = dict(self._workload.acked_at)  # before reading the checkpoints: writes acknowledged by now
        for stream in STREAMS:
            newest = acked.get(stream.name)
            if newest is None:
                continue
            try:
                checkpoint = self._checkpoints.read(stream.name)
            except Exception:  # noqa: BLE001 (a sample missed is no finding; counted)
                self.read_errors += 1
                continue
            applied = checkpoint.last_event_at if checkpoint else None
            lag = newest - applied if applied is not None else 0.0
            if lag > self.longest[stream.name]:
                self.longest[stream.name], self.longest_at[stream.name] = lag, time.time()
        self.samples += 1


def counters(checkpoints: CheckpointStore) -> dict[str, dict[str, int]]:
    """Every stream's checkpoint counters (``events``, ``applied``, ``dead_lettered``, ...)."""
    found = {}
    for stream in STREAMS:
        checkpoint = checkpoints.read(stream.name)
        found[stream.name] = dict(checkpoint.counters) if checkpoint else {}
    return found


def _by_id(documents: Iterable[bytes]) -> dict[bytes, bytes]:
    return {bson.encode({"_id": RawBSONDocument(raw, RAW)["_id"]}): raw for raw in documents}


def show_id(key: bytes) -> str:
    """An ``_id`` (as the bytes of ``{_id: value}``) in extended JSON, type included."""
    return _show(bson.decode(key)["_id"])


def compare_bytes(world: World) -> dict[str, Any]:
    """Source and estuary documents of every stream, compared as stored bytes by ``_id``."""
    streams = {}
    for stream in STREAMS:
        source = _by_id(world.source.documents(stream.source_ns))
        estuary = _by_id(world.estuary.documents(stream.estuary_ns))
        missing = [k for k in source if k not in estuary]
        extra = [k for k in estuary if k not in source]
        differing = [k for k in source if k in estuary and source[k] != estuary[k]]
        streams[stream.name] = {
            "source": len(source),
            "estuary": len(estuary),
            "missing": len(missing),
            "extra": len(extra),
            "differing": len(differing),
            "ids": {
                kind: [show_id(k) for k in keys[:_MAX_IDS]]
                for kind, keys in (("missing", missing), ("extra", extra), ("differing", differing))
                if keys
            },
        }
    identical = all(not (s["missing"] or s["extra"] or s["differing"]) for s in streams.values())
    return {"identical": identical, "streams": streams}


def catch_up(
    world: World, checkpoints: CheckpointStore, *, timeout: float, give_up: threading.Event
) -> tuple[bool, float]:
    """Wait until the estuary holds the source's bytes and the checkpoints stopped counting events (the
    replicator has nothing left to apply); whether it did within ``timeout``, and how long it took."""
    started = time.monotonic()
    last: dict[str, dict[str, int]] | None = None
    steady_since: float | None = None
    while time.monotonic() - started < timeout and not give_up.is_set():
        now = counters(checkpoints)
        steady = now == last and compare_bytes(world)["identical"]
        steady_since = (steady_since or time.monotonic()) if steady else None
        if steady_since is not None and time.monotonic() - steady_since >= 3.0:
            return True, time.monotonic() - started
        last = now
        give_up.wait(0.5)
    return False, time.monotonic() - started


def run_verify(config: Path) -> dict[str, Any]:
    """``python -m shared verify --config CONFIG --json`` (every document): its exit code and report."""
    command = [sys.executable, "-m", "shared", "verify", "--config", str(config), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {"ok": False, "verdict": "no report", "stdout": done.stdout[-2000:], "stderr": done.stderr[-2000:]}
    return {"exit": done.returncode, "ok": done.returncode == 0 and report.get("ok") is True, "report": report}


def _show(value: Any) -> str:
    return json_util.dumps(value, json_options=json_util.CANONICAL_JSON_OPTIONS)


def parked_check(services: Services) -> Callable[[str, Any], bool]:
    """Whether a dead letter of ``stream`` holds the event of the document ``_id`` (for the workload's poison)."""

    def parked(stream: str, doc_id: Any) -> bool:
        wanted = _show(doc_id)
        try:
            return any(
                _show(event.document_key.get("_id")) == wanted
                for chunk in services.dead_letters.iter_parked(stream, 500)
                for event in chunk
            )
        except PyMongoError:
            return False

    return parked


def dead_letters(services: Services, planted: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Every parked event: how many, how many are planted poison documents, and which are not."""
    poison = {(stream, _show(doc_id)) for stream, doc_id in planted}
    parked, others = Counter[str](), []
    poison_parked: set[tuple[str, str]] = set()
    for stream in STREAMS:
        for chunk in services.dead_letters.iter_parked(stream.name, 500):
            for event in chunk:
                parked[stream.name] += 1
                key = (stream.name, _show(event.document_key.get("_id")))
                if key in poison:
                    poison_parked.add(key)
                else:
                    others.append({"stream": stream.name, "_id": key[1], "code": event.error_code})
    return {
        "parked": sum(parked.values()),
        "by_stream": dict(parked),
        "planted": len(poison),
        "poison_parked": len(poison_parked),
        "not_poison": others[:_MAX_IDS],
        "not_poison_count": len(others),
    }


_OUTCOME = re.compile(r"^(\w+): (\w+)\s+\d+ events")
_FAILED = re.compile(r"^(\w+): pass failed: (.*)$")


def pass_outcomes(logs: Iterable[Path]) -> dict[str, Any]:
    """Pass outcomes and pass failures, counted from the workers' output (``run`` prints one line per pass)."""
    outcomes: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if match := _OUTCOME.match(line):
                outcomes[match.group(2)] += 1
            elif match := _FAILED.match(line):
                failures[re.sub(r"\d+(\.\d+)?", "N", match.group(2))[:160]] += 1
    return {"outcomes": dict(outcomes), "failures": sum(failures.values()), "failure_kinds": dict(failures)}


def wait_for(condition: Callable[[], bool], *, timeout: float, give_up: threading.Event) -> bool:
    """Poll ``condition`` until it holds, ``timeout`` passes or ``give_up`` is set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not give_up.is_set():
        try:
            if condition():
                return True
        except Exception:  # noqa: BLE001 (not there yet: a server still starting, a checkpoint not yet written)
            _log.debug("not ready yet", exc_info=True)
        give_up.wait(0.5)
    return False


def streaming(checkpoints: CheckpointStore) -> Callable[[], bool]:
    """A condition: every stream finished its initial copy and saved a position to stream from."""

    def check() -> bool:
        found = [checkpoints.read(s.name) for s in STREAMS]
        return all(cp is not None and cp.phase != "copying" and cp.resume_token is not None for cp in found)

    return check


def totals(found: Mapping[str, Mapping[str, int]], name: str) -> int:
    return sum(c.get(name, 0) for c in found.values())
