"""Verification: does the estuary hold exactly what the replicator would have written from the source?

For one stream, compares the two collections:

* document by document, keyed by ``_id``, the estuary form of the source document (the raw BSON bytes, or
  ``bson.encode`` of the field mapping when the stream has a transform: what ``EstuaryWriter`` writes) against
  the estuary document's raw bytes, byte for byte. Both sides are read as raw BSON, so field order and numeric
  types count. A source document that cannot be put in its estuary form (the transform cannot decode it) counts
  as differing: it cannot be what the replicator wrote.
* By default every document (``mode="all"``, ``complete``): a merge-join of both collections read in ``_id``
  order, one cursor batch at a time, in constant memory; the document counts of both sides are those of this
  scan. ``mode="sample"`` is a quick check, not a comparison of every document: exact counts
  (``count_documents``) plus the documents of a sample (``$sample`` on both sides, or a bounded reservoir over
  an ``_id``-only scan where the server lacks ``$sample``); finding nothing there is not "in sync".

Writes keep flowing while this runs, so every ``_id`` found missing, extra or differing is read again on both
sides after ``recheck_delay``; only those still wrong are reported, the others are counted as recovered.
Reports carry totals and at most ``MAX_EXAMPLES`` rendered ``_id`` values per kind, never document contents.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import bson
from bson.errors import BSONError
from bson.objectid import ObjectId
from pymongo.errors import OperationFailure

from shared.errors import ReplicatorError
from shared.estuary import transformed
from shared.id_values import bson_sort_key, id_key, render_id, unique_ids
from shared.mongo_errors import is_transient
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from bson.raw_bson import RawBSONDocument
    from pymongo.collection import Collection

    from shared.clock import Clock
    from shared.config import StreamConfig, TransformConfig

Kind = Literal["missing", "extra", "differing"]
Mode = Literal["sample", "all"]
SampleMethod = Literal["$sample", "scan", "all"]  # "scan": reservoir over the _ids; "all": no sampling

KINDS: tuple[Kind, ...] = ("missing", "extra", "differing")
MAX_EXAMPLES = 20  # _ids listed per kind of difference
# What putting one source document in its estuary form can raise (its top level does not decode, a value does not
# encode): that document counts as differing instead of ending the comparison.
_UNFORMABLE = (BSONError, ValueError, TypeError, OverflowError)

_log = get_logger(__name__)


class VerifyError(ReplicatorError):
    """The comparison itself could not be made (as opposed to finding differences)."""


@dataclass(frozen=True)
class VerifyOptions:
    """How to compare: ``all`` documents (the default), or ``sample`` _ids from each side as a quick check; when to
    re-check suspects."""

    mode: Mode = "all"
    sample: int = 1000  # _ids drawn from each side in "sample" mode
    recheck_delay: float = 2.0  # seconds between finding a difference and reading that _id again
    batch_size: int = 500  # documents per cursor batch and per re-read by _id
    recheck_limit: int = 10_000  # differences re-checked at most; beyond, they are reported as found

    def __post_init__(self) -> None:
        if min(self.sample, self.batch_size, self.recheck_limit) < 1 or self.recheck_delay < 0:
            raise ValueError(f"sample, batch_size, recheck_limit must be >= 1 and recheck_delay >= 0: {self}")


@dataclass
class Discrepancies:
    """One kind of difference: how many, and the first few ``_id`` values (rendered, truncated)."""

    total: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, value: Any) -> None:
        self.total += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(render_id(value))

    def merge(self, other: Discrepancies) -> None:
        self.total += other.total
        self.examples.extend(other.examples[: MAX_EXAMPLES - len(self.examples)])


@dataclass
class StreamVerification:
    """What ``verify_stream`` found for one stream; ``ok`` when the counts agree and nothing differs."""

    stream: str
    mode: Mode
    source_count: int | None = None
    estuary_count: int | None = None
    sample_method: SampleMethod | None = None
    sampled: int = 0  # _ids drawn at random, both sides together, before removing the overlap
    checked: int = 0  # distinct _ids compared
    missing: Discrepancies = field(default_factory=Discrepancies)  # in the source, not in the estuary
    extra: Discrepancies = field(default_factory=Discrepancies)  # in the estuary, not in the source
    differing: Discrepancies = field(default_factory=Discrepancies)  # in both, different bytes
    rechecked: int = 0
    recovered: int = 0  # found wrong, right when read again after the delay
    unrechecked: int = 0  # found wrong after recheck_limit was reached: reported without a second look
    recheck_delay: float = 0.0
    seconds: float = 0.0
    error: str | None = None  # the comparison could not be made

    @property
    def complete(self) -> bool:
        """Every document was compared (not a sample, and no error)."""
        return self.mode == "all" and self.error is None

    @property
    def verdict(self) -> str:
        """One line that never claims more than was checked: only a complete comparison can be "in sync"."""
        if self.error is not None:
            return f"could not verify: {self.error}"
        if self.complete:
            return "in sync" if self.ok else "OUT OF SYNC"
        sampled = f"no difference in {self.checked} sampled documents; not a full comparison"
        return sampled if self.ok else "OUT OF SYNC, found in a sample"

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.source_count == self.estuary_count
            and not (self.missing.total or self.extra.total or self.differing.total)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "ok": self.ok,
            "complete": self.complete,
            "verdict": self.verdict,
            "mode": self.mode,
            "sample_method": self.sample_method,
            "source_count": self.source_count,
            "estuary_count": self.estuary_count,
            "sampled": self.sampled,
            "checked": self.checked,
            **{kind: {"total": d.total, "examples": d.examples} for kind, d in self.discrepancies().items()},
            "rechecked": self.rechecked,
            "recovered": self.recovered,
            "unrechecked": self.unrechecked,
            "recheck_delay_s": self.recheck_delay,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }

    def discrepancies(self) -> dict[Kind, Discrepancies]:
        return {"missing": self.missing, "extra": self.extra, "differing": self.differing}


def verify_stream(
    stream: StreamConfig,
    source: Collection[RawBSONDocument],
    estuary: Collection[RawBSONDocument],
    *,
    options: VerifyOptions,
    clock: Clock,
    rng: random.Random | None = None,
) -> StreamVerification:
    """Compare ``source`` and ``estuary`` (raw-BSON collections) as ``options`` says; see the module docstring."""
    started = clock.monotonic()
    report = StreamVerification(stream.name, options.mode, recheck_delay=options.recheck_delay)
    _log.info("stream %s: verifying (%s)", stream.name, options.mode, extra={"stream": stream.name})
    tally = _Tally(options.recheck_limit, clock)
    if options.mode == "all":
        report.sample_method = "all"
        findings = merge_join(source, estuary, stream.transform, batch_size=options.batch_size)
    else:
        report.source_count, report.estuary_count = _counts(source, estuary)
        if report.source_count != report.estuary_count:
            tally.suspicious_at = clock.monotonic()
        chooser = rng or random.Random()  # noqa: S311 (picks documents to compare, not a secret)
        from_source, source_method = sample_ids(source, options.sample, batch_size=options.batch_size, rng=chooser)
        from_estuary, estuary_method = sample_ids(estuary, options.sample, batch_size=options.batch_size, rng=chooser)
        report.sample_method = "scan" if "scan" in (source_method, estuary_method) else "$sample"
        report.sampled = len(from_source) + len(from_estuary)
        ids = unique_ids([*from_source, *from_estuary])
        findings = compare_ids(source, estuary, ids, stream.transform, batch_size=options.batch_size)
    for kind, value in findings:
        tally.add(kind, value)
    report.checked = tally.checked
    if options.mode == "all":  # every document of both sides was read: each side's count is what the scan read
        report.source_count = tally.checked - tally.found["extra"]
        report.estuary_count = tally.checked - tally.found["missing"]
    if tally.suspicious_at is not None:
        remaining = options.recheck_delay - (clock.monotonic() - tally.suspicious_at)
        if remaining > 0:
            clock.sleep(remaining)
        _recheck(report, source, estuary, tally.suspects, stream.transform, options.batch_size)
        if report.source_count != report.estuary_count:
            report.source_count, report.estuary_count = _counts(source, estuary)
    for kind, overflow in tally.overflow.items():
        report.discrepancies()[kind].merge(overflow)
        report.unrechecked += overflow.total
    report.seconds = clock.monotonic() - started
    found = (report.missing.total, report.extra.total, report.differing.total, report.recovered)
    _log.info(
        "stream %s: verified %d _ids (%s): %d missing, %d extra, %d differing, %d recovered",
        *(stream.name, report.checked, "complete" if report.complete else "sample", *found),
        extra={"event": "verified", "stream": stream.name, "ok": report.ok, "complete": report.complete},
    )
    return report


# ---------------------------------------------------------------------------------------------- comparing


Finding = tuple[Kind | None, Any]  # (None when the _id is fine, its _id value)


def compare_ids(
    source: Collection[RawBSONDocument],
    estuary: Collection[RawBSONDocument],
    ids: Sequence[Any],
    transform: TransformConfig | None,
    *,
    batch_size: int,
) -> Iterator[Finding]:
    """Read these ``_id`` values on both sides, ``batch_size`` at a time, and classify each one."""
    for start in range(0, len(ids), batch_size):
        chunk = list(ids[start : start + batch_size])
        query = {"_id": {"$in": chunk}}
        found_source = {id_key(id_and_key(d)[0]): d for d in source.find(query, batch_size=batch_size)}
        found_estuary = {id_key(id_and_key(d)[0]): d for d in estuary.find(query, batch_size=batch_size)}
        for value in chunk:
            key = id_key(value)
            yield classify(found_source.get(key), found_estuary.get(key), transform), value


def merge_join(
    source: Collection[RawBSONDocument],
    estuary: Collection[RawBSONDocument],
    transform: TransformConfig | None,
    *,
    batch_size: int,
) -> Iterator[Finding]:
    """Both collections read in ``_id`` order side by side: one document per side held, plus a cursor batch."""
    sources, estuaries = _in_id_order(source, batch_size, "source"), _in_id_order(estuary, batch_size, "estuary")
    s, e = next(sources, _END), next(estuaries, _END)
    while s is not _END or e is not _END:
        if s[0] < e[0]:
            yield "missing", s[1]
            s = next(sources, _END)
        elif e[0] < s[0]:
            yield "extra", e[1]
            e = next(estuaries, _END)
        else:
            yield classify(s[2], e[2], transform), s[1]
            s, e = next(sources, _END), next(estuaries, _END)


def classify(
    source_doc: RawBSONDocument | None, estuary_doc: RawBSONDocument | None, transform: TransformConfig | None
) -> Kind | None:
    """What is wrong with one ``_id`` (``None``: nothing, including gone from both sides); the bytes compared as
    they are. A source document that cannot be put in its estuary form is ``differing`` (see ``_UNFORMABLE``)."""
    if source_doc is None:
        return None if estuary_doc is None else "extra"
    if estuary_doc is None:
        return "missing"
    try:
        expected = expected_bytes(source_doc, transform)
    except _UNFORMABLE:
        return "differing"
    return None if expected == estuary_doc.raw else "differing"


def expected_bytes(document: RawBSONDocument, transform: TransformConfig | None) -> bytes | memoryview:
    """The estuary form of a source document, as raw BSON bytes (what ``EstuaryWriter`` writes)."""
    return document.raw if transform is None else bson.encode(transformed(document, transform))


_STRING_ID, _OBJECT_ID = b"\x02_id\x00", b"\x07_id\x00"  # the first element of most documents: type, name
_END: tuple[tuple[Any, ...], Any, Any] = ((99,), None, None)  # after the last document: beyond every sort key


def id_and_key(document: RawBSONDocument) -> tuple[Any, tuple[Any, ...]]:
    """A document's ``_id`` and its ``bson_sort_key``, read straight from the bytes when ``_id`` is the first field
    and a string or an ObjectId (as MongoDB stores it): the rest of the top level is not decoded."""
    raw = document.raw
    head = bytes(raw[4:9])
    if head == _STRING_ID:
        end = 13 + int.from_bytes(raw[9:13], "little") - 1  # int32 length, counting the trailing NUL
        value: Any = str(raw[13:end], "utf-8")
        return value, (3, value)  # bson_sort_key of a str
    if head == _OBJECT_ID:
        value = ObjectId(bytes(raw[9:21]))
        return value, (7, value.binary)  # bson_sort_key of an ObjectId
    value = document["_id"]
    return value, bson_sort_key(value)


def _in_id_order(
    collection: Collection[RawBSONDocument], batch_size: int, side: str
) -> Iterator[tuple[tuple[Any, ...], Any, RawBSONDocument]]:
    previous: tuple[Any, ...] | None = None
    for document in collection.find({}, sort=[("_id", 1)], batch_size=batch_size):
        value, key = id_and_key(document)
        if previous is not None and key <= previous:
            raise VerifyError(
                f"the {side} returned _id {render_id(value)} out of ascending _id order",
                hint="the server does not sort _id values in BSON order (mixed _id types?); verify with --sample",
            )
        previous = key
        yield key, value, document


# ---------------------------------------------------------------------------------------------- sampling


def sample_ids(
    collection: Collection[RawBSONDocument], size: int, *, batch_size: int, rng: random.Random
) -> tuple[list[Any], SampleMethod]:
    """Up to ``size`` distinct random ``_id`` values: by ``$sample`` when the server has it, else a reservoir."""
    try:
        pipeline = [{"$sample": {"size": size}}, {"$project": {"_id": 1}}]
        return unique_ids([d["_id"] for d in collection.aggregate(pipeline, batchSize=batch_size)])[:size], "$sample"
    except OperationFailure as exc:
        if is_transient(exc):
            raise
        where, why = f"{collection.database.name}.{collection.name}", exc.code
        message = "%s: $sample refused (%s); sampling by a scan of the _ids instead"
        _log.warning(message, where, why, extra={"event": "sample_fallback"})
    return _reservoir(collection, size, batch_size=batch_size, rng=rng), "scan"


def _reservoir(collection: Collection[RawBSONDocument], size: int, *, batch_size: int, rng: random.Random) -> list[Any]:
    """Algorithm R over an ``_id``-only scan: a uniform sample holding at most ``size`` values at any time."""
    chosen: list[Any] = []
    for seen, document in enumerate(collection.find({}, {"_id": 1}, batch_size=batch_size)):
        if seen < size:
            chosen.append(document["_id"])
        else:
            slot = rng.randrange(seen + 1)
            if slot < size:
                chosen[slot] = document["_id"]
    return chosen


# ---------------------------------------------------------------------------------------------- re-checking


class _Tally:
    """Findings of the first look: the first ``limit`` to re-check, the rest counted as found."""

    def __init__(self, limit: int, clock: Clock) -> None:
        self._limit = limit
        self._clock = clock
        self.checked = 0
        self.found: dict[Kind, int] = dict.fromkeys(KINDS, 0)  # at the first look
        self.suspects: list[Any] = []
        self.overflow: dict[Kind, Discrepancies] = {kind: Discrepancies() for kind in KINDS}
        self.suspicious_at: float | None = None

    def add(self, kind: Kind | None, value: Any) -> None:
        self.checked += 1
        if kind is None:
            return
        self.found[kind] += 1
        self.suspicious_at = self._clock.monotonic()
        if len(self.suspects) < self._limit:
            self.suspects.append(value)
        else:
            self.overflow[kind].add(value)


def _recheck(
    report: StreamVerification,
    source: Collection[RawBSONDocument],
    estuary: Collection[RawBSONDocument],
    suspects: Sequence[Any],
    transform: TransformConfig | None,
    batch_size: int,
) -> None:
    report.rechecked = len(suspects)
    for kind, value in compare_ids(source, estuary, suspects, transform, batch_size=batch_size):
        if kind is None:
            report.recovered += 1
        else:
            report.discrepancies()[kind].add(value)


def _counts(source: Collection[RawBSONDocument], estuary: Collection[RawBSONDocument]) -> tuple[int, int]:
    return source.count_documents({}), estuary.count_documents({})
