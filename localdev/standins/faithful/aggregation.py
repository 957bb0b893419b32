"""The few aggregation pipelines callers of this project send, over raw documents.

Stages: ``$match``, ``$skip``, ``$limit``, ``$sort``, ``$project`` (plain inclusion/exclusion), ``$count`` and
``$group`` whose ``_id`` is a constant, a ``"$field"`` path or a document of those, with ``{$sum: <number or
"$field">}`` accumulators. pymongo's ``count_documents(filter, skip=, limit=)`` sends
``[{$match: filter}, {$skip: n}?, {$limit: n}?, {$group: {_id: 1, n: {$sum: 1}}}]`` and reads ``n`` of the only
result (no result means 0). Any other stage fails with 40324 (unrecognized pipeline stage), so that a caller with a
fallback (``$sample``...) takes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import bson
from bson.decimal128 import Decimal128, create_decimal128_context

from localdev.standins.faithful import rawdoc
from localdev.standins.faithful.errors import BAD_VALUE, UNRECOGNIZED_PIPELINE_STAGE, CommandError
from localdev.standins.faithful.matching import matches, order_key, project, sort_documents

_UNKNOWN_GROUP_OPERATOR = 15952


def stage_name(stage: Any) -> str:
    if not isinstance(stage, Mapping) or len(stage) != 1:
        raise CommandError(BAD_VALUE, "A pipeline stage specification object must contain exactly one field.")
    return str(next(iter(stage)))


def run_pipeline(docs: list[bytes], pipeline: list[Any]) -> list[bytes]:
    for stage in pipeline:
        name = stage_name(stage)
        spec = stage[name]
        if name == "$match":
            docs = [doc for doc in docs if matches(doc, spec)]
        elif name == "$skip":
            docs = docs[_count(spec, name) :]
        elif name == "$limit":
            docs = docs[: _count(spec, name)]
        elif name == "$sort":
            docs = sort_documents(docs, spec)
        elif name == "$project":
            docs = [project(doc, spec) for doc in docs]
        elif name == "$count":
            docs = [bson.encode({str(spec): len(docs)})]
        elif name == "$group":
            docs = _group(docs, spec)
        else:
            raise CommandError(UNRECOGNIZED_PIPELINE_STAGE, f"Unrecognized pipeline stage name: '{name}'")
    return docs


def _count(value: Any, stage: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CommandError(BAD_VALUE, f"invalid argument to {stage} stage: {value!r}")
    return int(value)


def _evaluate(doc: bytes, expression: Any) -> Any:
    if isinstance(expression, str) and expression.startswith("$"):
        found = rawdoc.lookup(doc, expression[1:].split("."))
        return found[0] if len(found) == 1 else found or None
    if isinstance(expression, Mapping):
        if next(iter(expression), "").startswith("$"):
            raise CommandError(UNRECOGNIZED_PIPELINE_STAGE, f"expression {dict(expression)!r} is not supported")
        return {name: _evaluate(doc, sub) for name, sub in expression.items()}
    return expression


def _add(total: Any, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
        return total  # $sum ignores what is not a number
    if isinstance(total, Decimal128) or isinstance(value, Decimal128):
        context = create_decimal128_context()
        a = total.to_decimal() if isinstance(total, Decimal128) else Decimal(total)
        b = value.to_decimal() if isinstance(value, Decimal128) else Decimal(value)
        return Decimal128(context.add(a, b))
    return total + value


def _group(docs: list[bytes], spec: Any) -> list[bytes]:
    if not isinstance(spec, Mapping) or "_id" not in spec:
        raise CommandError(15955, "a group specification must include an _id")
    sums: dict[str, Any] = {}
    for name, accumulator in spec.items():
        if name == "_id":
            continue
        if not isinstance(accumulator, Mapping) or list(accumulator) != ["$sum"]:
            raise CommandError(_UNKNOWN_GROUP_OPERATOR, f"unknown group operator in {name!r} (only $sum here)")
        sums[name] = accumulator["$sum"]
    groups: dict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = {}
    for doc in docs:
        key_value = _evaluate(doc, spec["_id"])
        _, totals = groups.setdefault(order_key(key_value), (key_value, dict.fromkeys(sums, 0)))
        for name, operand in sums.items():
            totals[name] = _add(totals[name], _evaluate(doc, operand))
    return [bson.encode({"_id": value, **totals}) for value, totals in groups.values()]
