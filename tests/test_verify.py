"""``verify`` on nx-27017: in sync, planted differences, writes during the check, transforms, bounded memory.

What ``verify_stream`` finds; the command line that prints it (text, JSON, exit codes) is in tests/test_verify_cli.py.
"""

from __future__ import annotations

import random
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

import bson
import pytest
from bson.binary import Binary
from bson.codec_options import CodecOptions
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.errors import InvalidBSON
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from shared.clock import SystemClock
from shared.config import TransformConfig
from shared.verify import (
    StreamVerification,
    VerifyError,
    VerifyOptions,
    bson_sort_key,
    classify,
    id_and_key,
    merge_join,
    sample_ids,
    verify_stream,
)
from tests.conftest import FakeClock, Harness

MODES = ["sample", "all"]


pytestmark = pytest.mark.usefixtures("restore_logging")


def doc(i: int, **extra: Any) -> dict[str, Any]:
    return {"_id": f"d{i:04}", "v": i, "name": f"n{i}", "tags": ["a", "b"], "nested": {"x": i}, **extra}


def replicated(harness: Harness, n: int = 40, **stream: Any) -> None:
    """A first pass saves the start position; then changes in the source, replicated by a second pass."""
    replicator = harness.replicator(harness.config(**stream))
    assert replicator.run_pass("orders").outcome == "idle"
    harness.source.insert_many([doc(i, secret=f"s{i}") for i in range(n)])
    harness.source.update_one({"_id": "d0001"}, {"$set": {"v": "changed"}})
    harness.source.delete_one({"_id": "d0002"})
    assert replicator.run_pass("orders").events == n + 2


def copied(harness: Harness, n: int = 30) -> None:
    """Source and estuary written directly with the same documents."""
    harness.source.insert_many([doc(i) for i in range(n)])
    harness.estuary.insert_many([doc(i) for i in range(n)])


def verify(harness: Harness, mode: str = "sample", *, clock: Any = None, **options: Any) -> StreamVerification:
    stream = harness.config(**options.pop("stream", {})).streams[0]
    options.setdefault("recheck_delay", 0.05)
    return verify_stream(
        stream,
        harness.factory.collection(stream.source),
        harness.factory.collection(stream.estuary),
        options=VerifyOptions(mode=mode, **options),  # type: ignore[arg-type]
        clock=clock or SystemClock(),
        rng=random.Random(7),
    )


# ---------------------------------------------------------------------------------------------- in sync


@pytest.mark.parametrize("mode", MODES)
def test_verify_should_report_in_sync_when_the_replicator_converged(harness, mode):
    replicated(harness)
    report = verify(harness, mode)
    assert report.ok
    assert (report.source_count, report.estuary_count) == (39, 39)
    assert report.checked == 39  # the sample (1000) covers the whole collection, and the union is distinct
    assert report.sampled == (0 if mode == "all" else 78)
    assert report.sample_method == ("all" if mode == "all" else "$sample")
    assert (report.missing.total, report.extra.total, report.differing.total) == (0, 0, 0)
    assert (report.rechecked, report.recovered) == (0, 0)


@pytest.mark.parametrize("mode", MODES)
def test_verify_should_report_in_sync_when_both_are_empty(harness, mode):
    report = verify(harness, mode)
    assert report.ok
    assert (report.source_count, report.estuary_count, report.checked) == (0, 0, 0)


# ---------------------------------------------------------------------------------------------- differences


@pytest.mark.parametrize("mode", MODES)
def test_verify_should_find_a_missing_an_extra_and_modified_documents(harness, mode):
    copied(harness)
    harness.estuary.delete_one({"_id": "d0003"})
    harness.estuary.insert_one({"_id": "zz-extra", "v": 1})
    harness.estuary.update_one({"_id": "d0007"}, {"$set": {"v": -7}})
    reordered = {"_id": "d0009", "name": "n9", "v": 9, "tags": ["a", "b"], "nested": {"x": 9}}
    harness.estuary.replace_one({"_id": "d0009"}, reordered)  # the same fields in another order
    harness.estuary.replace_one({"_id": "d0011"}, doc(11, v=11.0))  # same number, another BSON type
    report = verify(harness, mode)
    assert not report.ok
    assert (report.source_count, report.estuary_count) == (30, 30)  # equal counts hide a missing + an extra
    assert (report.missing.total, report.missing.examples) == (1, ['"d0003"'])
    assert (report.extra.total, report.extra.examples) == (1, ['"zz-extra"'])
    assert report.differing.total == 3
    assert sorted(report.differing.examples) == ['"d0007"', '"d0009"', '"d0011"']
    assert (report.rechecked, report.recovered, report.unrechecked) == (5, 0, 0)


def test_field_order_alone_should_count_as_a_difference(harness):
    harness.source.insert_one({"_id": "a", "x": 1, "y": 2})
    harness.estuary.insert_one({"_id": "a", "y": 2, "x": 1})
    assert verify(harness, "all").differing.examples == ['"a"']


def test_the_default_should_compare_every_document_and_only_then_say_in_sync(harness):
    copied(harness, 30)
    full, sample = verify(harness, VerifyOptions().mode), verify(harness, "sample")
    assert (full.mode, full.checked, full.verdict, full.to_dict()["complete"]) == ("all", 30, "in sync", True)
    assert (sample.ok, sample.complete, sample.to_dict()["complete"]) == (True, False, False)
    assert sample.verdict == "no difference in 30 sampled documents; not a full comparison"


# ---------------------------------------------------------------------------------------------- writes during the check


@pytest.mark.parametrize("mode", MODES)
def test_differences_fixed_during_the_recheck_delay_should_count_as_recovered(harness, mode):
    copied(harness)
    harness.estuary.update_one({"_id": "d0004"}, {"$set": {"v": "stale"}})
    harness.source.insert_one(doc(100))  # not replicated yet: missing, and the counts differ

    def replicate_late() -> None:
        time.sleep(0.2)
        harness.estuary.replace_one({"_id": "d0004"}, doc(4))
        harness.estuary.insert_one(doc(100))

    writer = threading.Thread(target=replicate_late)
    writer.start()
    try:
        report = verify(harness, mode, recheck_delay=1.0)
    finally:
        writer.join()
    assert report.ok, report
    assert (report.rechecked, report.recovered) == (2, 2)
    assert (report.source_count, report.estuary_count) == (31, 31)  # counted again after the delay


class FixingClock(FakeClock):
    """A fake clock whose sleep stands for the replicator catching up meanwhile."""

    def __init__(self, fix: Any) -> None:
        super().__init__()
        self.fix = fix

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.fix()


def test_recheck_should_wait_the_delay_once_on_the_injected_clock(harness):
    copied(harness, 5)
    harness.estuary.delete_many({})
    clock = FixingClock(lambda: harness.estuary.insert_many([doc(i) for i in range(5)]))
    report = verify(harness, "all", clock=clock, recheck_delay=2.0)
    assert clock.sleeps == [2.0]
    assert report.ok
    assert (report.rechecked, report.recovered) == (5, 5)


def test_no_recheck_should_wait_when_nothing_differs(harness):
    copied(harness, 5)
    clock = FakeClock()
    assert verify(harness, "sample", clock=clock, recheck_delay=2.0).ok
    assert clock.sleeps == []


def test_differences_beyond_the_recheck_limit_should_be_reported_without_a_second_look(harness):
    copied(harness, 10)
    harness.estuary.delete_many({})
    report = verify(harness, "all", recheck_limit=3)
    assert (report.missing.total, report.rechecked, report.unrechecked) == (10, 3, 7)
    assert report.missing.examples == [f'"d{i:04}"' for i in range(10)]


# ---------------------------------------------------------------------------------------------- transform


@pytest.mark.parametrize("mode", MODES)
def test_a_transform_should_be_applied_to_the_source_before_comparing(harness, mode):
    transform = {"rename": {"name": "title"}, "drop": ["secret"]}
    replicated(harness, 20, transform=transform)
    assert "title" in (harness.estuary.find_one({"_id": "d0005"}) or {})
    assert verify(harness, mode, stream={"transform": transform}).ok
    assert not verify(harness, mode).ok  # without the transform, every document differs
    harness.estuary.replace_one({"_id": "d0005"}, doc(5, secret="s5"))  # the source form, untransformed
    report = verify(harness, mode, stream={"transform": transform})
    assert (report.differing.total, report.differing.examples) == (1, ['"d0005"'])


def test_a_source_document_the_transform_cannot_decode_should_count_as_differing():
    data = bson.encode({"_id": 1, "d": DatetimeMS(2**62)})  # beyond datetime: the default options cannot decode it
    with pytest.raises(InvalidBSON):
        dict(RawBSONDocument(data))
    assert classify(RawBSONDocument(data), RawBSONDocument(data), TransformConfig(rename={"d": "when"})) == "differing"
    assert classify(RawBSONDocument(data), RawBSONDocument(data), None) is None  # no transform: bytes as they are


class Unreadable:
    """A source whose document "x" comes back with a top level that does not decode (a date beyond datetime)."""

    bad = RawBSONDocument(bson.encode({"_id": "x", "v": DatetimeMS(2**62)}))

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def find(self, *args: Any, **kwargs: Any) -> Iterator[RawBSONDocument]:
        return (self.bad if id_and_key(d)[0] == "x" else d for d in self._inner.find(*args, **kwargs))


@pytest.mark.parametrize("mode", MODES)
def test_a_document_the_transform_cannot_decode_should_not_stop_the_comparison(harness, mode):
    harness.source.insert_many([doc(i) for i in range(5)] + [{"_id": "x", "v": 0}])
    harness.estuary.insert_many([{("value" if k == "v" else k): v for k, v in doc(i).items()} for i in range(5)])
    harness.estuary.insert_one({"_id": "x", "value": 0})
    stream = harness.config(transform={"rename": {"v": "value"}}).streams[0]
    source = cast(Any, Unreadable(harness.factory.collection(stream.source)))
    options = VerifyOptions(mode=mode, recheck_delay=0)
    report = verify_stream(
        stream, source, harness.factory.collection(stream.estuary), options=options, clock=FakeClock()
    )
    assert (report.error, report.checked, report.missing.total, report.extra.total) == (None, 6, 0, 0)
    assert report.differing.examples == ['"x"']  # the 5 others compared, and equal


def test_id_and_key_should_agree_with_bson_sort_key_without_decoding_the_rest():
    for value in ["", "é-ü", "x" * 5000, ObjectId("0123456789abcdef01234567")]:
        data = bson.encode({"_id": value, "when": DatetimeMS(2**62)})  # the rest would not decode (default options)
        for raw in (RawBSONDocument(data), RawBSONDocument(memoryview(data))):  # large documents come as views
            assert id_and_key(raw) == (value, bson_sort_key(value))
    others: list[dict[str, Any]] = [{"_id": 7, "a": 1}, {"a": 1, "_id": "second"}, {"_id": datetime(2024, 1, 1)}]
    for document in others:
        raw = RawBSONDocument(bson.encode(document), CodecOptions(document_class=RawBSONDocument))
        assert id_and_key(raw) == (document["_id"], bson_sort_key(document["_id"]))


# ---------------------------------------------------------------------------------------------- sampling


class NoSample:
    """A collection on a server without ``$sample``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.scans = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def aggregate(self, pipeline: Any, **kwargs: Any) -> Any:
        raise OperationFailure("Unrecognized pipeline stage name: '$sample'", code=40324)

    def find(self, *args: Any, **kwargs: Any) -> Any:
        self.scans += 1
        return self._inner.find(*args, **kwargs)


def test_sampling_should_fall_back_to_a_bounded_reservoir_when_sample_is_refused(harness):
    harness.source.insert_many([doc(i) for i in range(200)])
    collection = NoSample(harness.factory.collection(harness.config().streams[0].source))
    first, method = sample_ids(cast(Any, collection), 10, batch_size=50, rng=random.Random(1))
    second, _ = sample_ids(cast(Any, collection), 10, batch_size=50, rng=random.Random(2))
    assert method == "scan"
    assert len(first) == len(set(first)) == 10
    assert first != second
    assert first != [f"d{i:04}" for i in range(10)]  # not simply the first _ids of the scan


def test_verify_should_still_find_differences_without_sample(harness):
    copied(harness, 50)
    harness.estuary.delete_one({"_id": "d0010"})
    stream = harness.config().streams[0]
    report = verify_stream(
        stream,
        cast(Any, NoSample(harness.factory.collection(stream.source))),
        cast(Any, NoSample(harness.factory.collection(stream.estuary))),
        options=VerifyOptions(mode="sample", recheck_delay=0),
        clock=SystemClock(),
    )
    assert report.sample_method == "scan"
    assert (report.checked, report.missing.examples) == (50, ['"d0010"'])


def test_a_small_sample_should_check_about_twice_its_size(harness):
    copied(harness, 300)
    report = verify(harness, "sample", sample=25)
    assert report.ok
    assert 25 <= report.checked <= 50  # 25 from each side, overlaps counted once


# ---------------------------------------------------------------------------------------------- bounded memory


def test_all_should_hold_a_batch_not_the_collection(harness):
    n, payload = 20_000, "p" * 1000  # about 20 MB per side
    for start in range(0, n, 2000):
        chunk = [{"_id": f"k{i:06}", "payload": payload, "i": i} for i in range(start, start + 2000)]
        harness.source.insert_many(chunk)
        harness.estuary.insert_many(chunk)
    harness.estuary.update_one({"_id": "k019999"}, {"$set": {"i": -1}})
    tracemalloc.start()
    try:
        report = verify(harness, "all", batch_size=200)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.checked == n
    assert report.differing.examples == ['"k019999"']
    assert peak < 4_000_000, f"peak {peak} bytes"  # a few batches of ~200 KB, far below the ~40 MB read


# ---------------------------------------------------------------------------------------------- _id order


def test_bson_sort_key_should_order_like_mongodb():
    ordered = [
        MinKey(),
        None,
        float("nan"),
        -1.5,
        1,
        Int64(2),
        Decimal128("2.5"),
        "",
        "B",
        "a",
        "é",
        {"a": 1},
        {"a": 1, "b": 1},
        {"b": 0},  # the first field's type decides before its name
        {"a": "s"},
        Binary(b"\x09", 0),
        Binary(b"\x00\x00", 0),
        Binary(b"\x00\x00", 4),
        ObjectId("000000000000000000000000"),
        ObjectId("ffffffffffffffffffffffff"),
        False,
        True,
        datetime(1969, 12, 31),
        datetime(2024, 1, 1),
        Timestamp(1, 1),
        Timestamp(1, 2),
        MaxKey(),
    ]
    shuffled = ordered[:]
    random.Random(3).shuffle(shuffled)
    assert [repr(v) for v in sorted(shuffled, key=bson_sort_key)] == [repr(v) for v in ordered]


class Listed:
    """A collection that returns the given _ids, in the given order, whatever the sort asked for."""

    def __init__(self, *ids: str) -> None:
        self.ids = ids

    def find(self, *args: Any, **kwargs: Any) -> Iterator[RawBSONDocument]:
        return iter(RawBSONDocument(bson.encode({"_id": i})) for i in self.ids)


def test_merge_join_should_refuse_a_side_not_in_id_order():
    with pytest.raises(VerifyError, match="out of ascending _id order"):
        list(merge_join(cast(Any, Listed("a", "c")), cast(Any, Listed("b", "a")), None, batch_size=10))


def test_merge_join_should_pair_both_sides_by_id():
    findings = merge_join(cast(Any, Listed("a", "c", "d")), cast(Any, Listed("b", "c", "e")), None, batch_size=10)
    assert list(findings) == [("missing", "a"), ("extra", "b"), (None, "c"), ("missing", "d"), ("extra", "e")]
