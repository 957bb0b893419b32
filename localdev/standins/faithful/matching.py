"""Query filters, projections and sorts over raw documents, in MongoDB's order of BSON values.

Values are ordered with ``shared.id_values.bson_sort_key`` (BSON type first, numbers by value across their types);
the types it does not model (regular expressions, JavaScript code, DBPointer) are placed where the server puts
them, between Timestamp and MaxKey. Equality is equality of those keys, so ``1``, ``1.0`` and ``Int64(1)`` are
equal, as in a MongoDB query. ``$gt``/``$gte``/``$lt``/``$lte`` compare only within one type bracket (numbers
with numbers, strings with strings...) unless the bound is MinKey or MaxKey, as the server does.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bson.code import Code
from bson.dbref import DBRef
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.regex import Regex

from localdev.standins.faithful import rawdoc
from localdev.standins.faithful.errors import BAD_VALUE, CommandError
from shared.id_values import UnorderableIdError, bson_sort_key

Filter = Mapping[str, Any]
_COMPARISONS = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def order_key(value: Any) -> tuple[Any, ...]:
    """A sort key that orders any BSON value as MongoDB does (hashable: usable as a dictionary key)."""
    if isinstance(value, Mapping):
        return (4, tuple((order_key(v)[0], name, order_key(v)) for name, v in value.items()))
    if isinstance(value, list | tuple):
        return (5, tuple(order_key(v) for v in value))
    try:
        return bson_sort_key(value)
    except UnorderableIdError:
        pass
    if isinstance(value, Regex):
        return (11, 0, value.pattern, value.flags)
    if isinstance(value, DBRef):  # a DBPointer decodes as a DBRef
        return (11, 1, value.collection, order_key(value.id))
    if isinstance(value, Code):
        if value.scope is None:
            return (11, 2, str(value))
        return (11, 3, str(value), order_key(value.scope))
    return (11, 9, repr(value))


def expand(values: Sequence[Any]) -> list[Any]:
    """Each value, and the elements of those that are arrays: what a query condition is tried against."""
    out: list[Any] = []
    for value in values:
        out.append(value)
        if isinstance(value, list):
            out.extend(value)
    return out


def _regex(value: Any) -> re.Pattern[str]:
    if isinstance(value, Regex):
        value = value.try_compile()
    if isinstance(value, re.Pattern):
        return value
    raise CommandError(BAD_VALUE, f"$regex has to be a string or a regular expression, not {value!r}")


def _equal(values: Sequence[Any], operand: Any) -> bool:
    if not values:
        return operand is None  # null matches a missing field
    if isinstance(operand, Regex | re.Pattern):
        pattern = _regex(operand)
        return any(isinstance(v, str) and pattern.search(v) for v in expand(values)) or any(
            order_key(v) == order_key(operand) for v in expand(values)
        )
    wanted = order_key(operand)
    return any(order_key(v) == wanted for v in expand(values))


def _compare(values: Sequence[Any], op: str, bound: Any) -> bool:
    wanted = order_key(bound)
    across_types = isinstance(bound, MinKey | MaxKey)
    compare = _COMPARISONS[op]
    for value in expand(values):
        key = order_key(value)
        if (across_types or key[0] == wanted[0]) and compare(key, wanted):
            return True
    return False


def _operators(values: Sequence[Any], condition: Mapping[str, Any]) -> bool:
    for op, operand in condition.items():
        if op == "$eq":
            ok = _equal(values, operand)
        elif op == "$ne":
            ok = not _equal(values, operand)
        elif op in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise CommandError(BAD_VALUE, f"{op} needs an array")
            ok = any(_equal(values, item) for item in operand) == (op == "$in")
        elif op in _COMPARISONS:
            ok = _compare(values, op, operand)
        elif op == "$exists":
            ok = bool(values) == bool(operand)
        elif op == "$regex":
            pattern = operand if isinstance(operand, Regex) else Regex(operand, condition.get("$options", ""))
            ok = _equal(values, pattern)
        elif op == "$options":
            ok = True
        elif op == "$not":
            ok = not _field(values, operand)
        else:
            raise CommandError(BAD_VALUE, f"unknown operator: {op}")
        if not ok:
            return False
    return True


def _is_operator_document(condition: Any) -> bool:
    return isinstance(condition, Mapping) and next(iter(condition), "").startswith("$")


def _field(values: Sequence[Any], condition: Any) -> bool:
    if _is_operator_document(condition):
        return _operators(values, condition)
    return _equal(values, condition)


def matches(doc: bytes, query: Filter) -> bool:
    """Whether the raw document satisfies the filter; only the fields the filter names are decoded."""
    for key, condition in query.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(condition, list) or not condition:
                raise CommandError(BAD_VALUE, f"{key} must be a nonempty array")
            results = (matches(doc, sub) for sub in condition)
            ok = all(results) if key == "$and" else any(results) if key == "$or" else not any(results)
        elif key == "$comment":
            ok = True
        elif key.startswith("$"):
            raise CommandError(BAD_VALUE, f"unknown top level operator: {key}")
        else:
            ok = _field(rawdoc.lookup(doc, key.split(".")), condition)
        if not ok:
            return False
    return True


def equality_fields(query: Filter) -> list[tuple[str, Any]]:
    """The ``field: value`` equalities a filter pins down (top level, ``$eq``, inside ``$and``): an upsert's seed."""
    found: list[tuple[str, Any]] = []
    for key, condition in query.items():
        if key == "$and" and isinstance(condition, list):
            for sub in condition:
                found += equality_fields(sub)
        elif key.startswith("$"):
            continue
        elif not _is_operator_document(condition):
            found.append((key, condition))
        elif "$eq" in condition:
            found.append((key, condition["$eq"]))
    return found


def id_equalities(query: Filter) -> list[Any] | None:
    """The ``_id`` values a filter allows, when it names them (``_id: v``, ``$eq``, ``$in``): a lookup shortcut."""
    if "_id" not in query:
        return None
    condition = query["_id"]
    if not _is_operator_document(condition):
        return None if isinstance(condition, Regex | re.Pattern | list) else [condition]
    if set(condition) == {"$eq"} and not isinstance(condition["$eq"], Regex | list):
        return [condition["$eq"]]
    if set(condition) == {"$in"} and isinstance(condition["$in"], list):
        items = condition["$in"]
        return None if any(isinstance(v, Regex | re.Pattern | list) for v in items) else list(items)
    return None


def _projection_tree(spec: Mapping[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """(tree of dotted paths, inclusion?, keep _id?) of a projection; only plain inclusions/exclusions."""
    tree: dict[str, Any] = {}
    keep_id = True
    modes = set()
    for path, flag in spec.items():
        if isinstance(flag, Mapping) or path.startswith("$") or not isinstance(flag, bool | int | float):
            raise CommandError(BAD_VALUE, f"projection operator of {path!r} is not supported here")
        if path == "_id":
            keep_id = bool(flag)
            continue
        modes.add(bool(flag))
        node = tree
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is True:
                break
            node = child
        else:
            node[parts[-1]] = True
    if len(modes) > 1:
        raise CommandError(31254, "Cannot do exclusion on a field in inclusion projection")
    return tree, modes != {False}, keep_id


def _apply(doc: bytes, tree: dict[str, Any], include: bool) -> bytes:
    kept: list[bytes] = []
    for item in rawdoc.elements(doc):
        node = tree.get(item.name)
        if node is None:
            if not include:
                kept.append(item.raw)
        elif node is True:
            if include:
                kept.append(item.raw)
        elif item.kind == rawdoc.DOCUMENT:
            kept.append(item.raw[: item.value_offset] + _apply(item.value, node, include))
        elif item.kind == rawdoc.ARRAY:
            inner = [
                sub.raw[: sub.value_offset] + _apply(sub.value, node, include)
                for sub in rawdoc.elements(item.value)
                if sub.kind == rawdoc.DOCUMENT or not include
            ]
            kept.append(item.raw[: item.value_offset] + rawdoc.build(inner))
        elif not include:
            kept.append(item.raw)
    return rawdoc.build(kept)


def project(doc: bytes, spec: Mapping[str, Any] | None) -> bytes:
    """The document as an inclusion or exclusion projection shows it (kept values are the exact bytes)."""
    if not spec:
        return doc
    tree, include, keep_id = _projection_tree(spec)
    if include:
        tree = {"_id": True, **tree} if keep_id else tree
    elif not keep_id:
        tree = {"_id": True, **tree}
    return _apply(doc, tree, include)


def sort_documents(docs: list[bytes], spec: Mapping[str, Any] | None) -> list[bytes]:
    """Stable sort by the spec's fields (``1``/``-1``; missing sorts as null; an array by its min/max element)."""
    if not spec:
        return docs
    ordered = list(docs)
    for path, direction in reversed(list(spec.items())):
        if path == "$natural":
            ordered = ordered if direction >= 0 else ordered[::-1]
            continue
        if isinstance(direction, Mapping) or direction not in (1, -1):
            raise CommandError(BAD_VALUE, f"sort direction of {path!r} must be 1 or -1")
        parts = path.split(".")
        ordered.sort(key=functools.partial(_sort_key, parts=parts, direction=direction), reverse=direction == -1)
    return ordered


def _sort_key(doc: bytes, parts: list[str], direction: int) -> tuple[Any, ...]:
    values = [v for v in expand(rawdoc.lookup(doc, parts)) if not isinstance(v, list)] or [None]
    keys = [order_key(v) for v in values]
    return min(keys) if direction == 1 else max(keys)
