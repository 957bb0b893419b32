"""Update documents applied to raw documents: replacements, and the operators ``$set``, ``$setOnInsert``,
``$inc``, ``$unset`` on top-level and dotted fields.

A replacement is stored as the exact bytes the client sent (with the ``_id`` element of the document in front
when the replacement has none). Operators splice new values into the existing bytes (see ``rawdoc``), so the
fields they do not name keep their bytes. An upsert starts from the filter's equality fields, ``_id`` first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128, create_decimal128_context
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument

from localdev.standins.faithful import rawdoc
from localdev.standins.faithful.errors import (
    BAD_VALUE,
    FAILED_TO_PARSE,
    IMMUTABLE_FIELD,
    TYPE_MISMATCH,
    WriteFailedError,
)
from localdev.standins.faithful.matching import equality_fields, order_key

OPERATORS = ("$set", "$setOnInsert", "$inc", "$unset")
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


@dataclass
class Change:
    """What an update did: the new bytes and, for operators, the fields set (as elements named by their path)
    and removed: a change event's ``updateDescription``."""

    document: bytes
    replaced: bool
    updated: list[bytes] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def parse(update: Any) -> tuple[Mapping[str, Any], bool]:
    """The update document, and whether it holds operators (else it is a replacement)."""
    if isinstance(update, list):
        raise WriteFailedError(FAILED_TO_PARSE, "pipeline-style updates are not supported by this server")
    if not isinstance(update, Mapping):
        raise WriteFailedError(FAILED_TO_PARSE, "the update must be a document")
    # As the server decides: operators when the first field starts with '$' (a replacement may hold
    # '$'-prefixed fields further on).
    keys = list(update)
    if not keys or not keys[0].startswith("$"):
        return update, False
    if not all(key.startswith("$") for key in keys):
        raise WriteFailedError(FAILED_TO_PARSE, "an update mixes operators and plain fields")
    return update, True


def _raw(document: Mapping[str, Any]) -> bytes:
    return (
        bytes(document.raw)
        if isinstance(document, RawBSONDocument)
        else rawdoc.build(rawdoc.encode_element(k, v) for k, v in document.items())
    )


def replacement(current: bytes, new: Mapping[str, Any]) -> Change:
    """The replacement's exact bytes; its ``_id`` must be the document's (the current ``_id`` is added if absent)."""
    raw = _raw(new)
    id_element = rawdoc.get(current, "_id")
    new_id = rawdoc.get(raw, "_id")
    if new_id is None:
        if id_element is not None:
            raw = rawdoc.build([id_element.raw, *(e.raw for e in rawdoc.elements(raw))])
    elif id_element is not None and order_key(new_id.decode()) != order_key(id_element.decode()):
        raise WriteFailedError(
            IMMUTABLE_FIELD,
            "After applying the update, the (immutable) field '_id' was found to have been altered",
        )
    return Change(raw, replaced=True)


def _add(current: Any, increment: Any, path: str) -> Any:
    numeric = (int, float, Decimal128)
    if not isinstance(increment, numeric) or isinstance(increment, bool):
        raise WriteFailedError(TYPE_MISMATCH, f"Cannot increment with non-numeric argument: {{{path}: {increment!r}}}")
    if current is None:
        return increment
    if not isinstance(current, numeric) or isinstance(current, bool):
        raise WriteFailedError(TYPE_MISMATCH, f"Cannot apply $inc to a value of non-numeric type at '{path}'")
    if isinstance(current, Decimal128) or isinstance(increment, Decimal128):
        context = create_decimal128_context()
        a = current.to_decimal() if isinstance(current, Decimal128) else Decimal(current)
        b = increment.to_decimal() if isinstance(increment, Decimal128) else Decimal(increment)
        return Decimal128(context.add(a, b))
    if isinstance(current, float) or isinstance(increment, float):
        return float(current) + float(increment)
    total = int(current) + int(increment)
    if abs(total) > _INT64_MAX:
        raise WriteFailedError(BAD_VALUE, f"Failed to apply $inc operations to current value of '{path}': overflow")
    if isinstance(current, Int64) or isinstance(increment, Int64) or abs(total) > _INT32_MAX:
        return Int64(total)
    return total


def apply_operators(current: bytes, update: Mapping[str, Any], *, inserting: bool) -> Change:
    """``current`` with the operators applied; ``$setOnInsert`` only when ``inserting``."""
    doc = current
    change = Change(doc, replaced=False)
    for op, fields in update.items():
        if op not in OPERATORS:
            raise WriteFailedError(FAILED_TO_PARSE, f"Unknown modifier: {op}. Expected a valid update modifier")
        if not isinstance(fields, Mapping):
            raise WriteFailedError(FAILED_TO_PARSE, f"Modifiers operate on fields but we found another type for {op}")
        if op == "$setOnInsert" and not inserting:
            continue
        for path, value in fields.items():
            parts = path.split(".")
            if parts[0] == "_id" and not inserting:
                _check_id_unchanged(doc, op, parts, value)
            if op == "$unset":
                without = rawdoc.unset_path(doc, parts)
                if without is not None:
                    doc = without
                    change.removed.append(path)
                continue
            if op == "$inc":
                existing = rawdoc.get_path(doc, parts)
                value = _add(None if existing is None else existing.decode(), value, path)
            doc = rawdoc.set_path(doc, parts, value)
            change.updated.append(rawdoc.encode_element(path, value))
    change.document = doc
    return change


def _check_id_unchanged(doc: bytes, op: str, parts: list[str], value: Any) -> None:
    existing = rawdoc.get_path(doc, parts)
    if op == "$set" and existing is not None and order_key(existing.decode()) == order_key(value):
        return
    raise WriteFailedError(
        IMMUTABLE_FIELD, "Performing an update on the path '_id' would modify the immutable field '_id'"
    )


def upsert_seed(query: Mapping[str, Any]) -> bytes:
    """The document an upsert starts from: the filter's equality fields (``_id`` first)."""
    doc = rawdoc.EMPTY
    for path, value in equality_fields(query):
        doc = rawdoc.set_path(doc, path.split("."), value)
    return id_first(doc)


def id_first(doc: bytes) -> bytes:
    """``doc`` with its ``_id`` as the first field, a new ObjectId when it has none (as the server stores it)."""
    items = rawdoc.elements(doc)
    ids = [item for item in items if item.name == "_id"]
    if ids and items[0].name == "_id":
        return doc
    head = ids[0].raw if ids else rawdoc.encode_element("_id", ObjectId())
    return rawdoc.build([head, *(item.raw for item in items if item.name != "_id")])


def upserted(query: Mapping[str, Any], update: Any) -> Change:
    """The document an upsert inserts, from the filter and a replacement or operators."""
    update, operators = parse(update)
    if operators:
        change = apply_operators(upsert_seed(query), update, inserting=True)
        change.document = id_first(change.document)
        return change
    raw = _raw(update)
    if rawdoc.get(raw, "_id") is None:
        seed_id = rawdoc.get(upsert_seed(query), "_id")
        head = seed_id.raw if seed_id is not None else rawdoc.encode_element("_id", ObjectId())
        raw = rawdoc.build([head, *(e.raw for e in rawdoc.elements(raw))])
    return Change(raw, replaced=True)
