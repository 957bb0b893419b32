"""``_id`` values as the replicator shows, orders and matches them, whatever their BSON type.

* ``render_id``: Extended JSON, cut short, for reports and examples (never a document's contents);
* ``bson_sort_key``: MongoDB's order of ``_id`` values (BSON type first, then value), to walk two collections
  side by side in ``_id`` order;
* ``id_key`` / ``unique_ids``: exact bytes (type included: 1, 1.0 and "1" are three ``_id`` values).
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import bson
from bson import json_util
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from shared.errors import ReplicatorError

MAX_ID_CHARS = 64  # a rendered _id is cut beyond this


class UnorderableIdError(ReplicatorError):
    """An ``_id`` whose place in MongoDB's order is not modelled (JavaScript code, or not a BSON value)."""


def render_id(value: Any) -> str:
    """An ``_id`` as Extended JSON, cut to ``MAX_ID_CHARS``."""
    text = json_util.dumps(value)
    return text if len(text) <= MAX_ID_CHARS else text[: MAX_ID_CHARS - 1] + "…"


def bson_sort_key(value: Any) -> tuple[Any, ...]:
    """A key that orders ``_id`` values as MongoDB sorts them: BSON type order, then value (binary strings).

    Raises ``UnorderableIdError`` for types that cannot be an ``_id`` or whose order is not modelled (JavaScript code).
    """
    if isinstance(value, MinKey):
        return (0,)
    if value is None:
        return (1,)
    if isinstance(value, bool):  # before int: bool is an int in Python, not in BSON
        return (8, value)
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, int | float | Decimal):
        nan = value.is_nan() if isinstance(value, Decimal) else isinstance(value, float) and math.isnan(value)
        return (2, 0) if nan else (2, 1, value)  # numbers compare by value across types; NaN first
    if isinstance(value, Code):  # a str subclass with its own BSON type
        raise UnorderableIdError(f"cannot order an _id of BSON type JavaScript code: {render_id(value)}")
    if isinstance(value, str):
        return (3, value)  # code point order is UTF-8 byte order, MongoDB's simple collation
    if isinstance(value, Mapping):
        return (4, tuple((bson_sort_key(v)[0], name, bson_sort_key(v)) for name, v in value.items()))
    if isinstance(value, list | tuple):
        return (5, tuple(bson_sort_key(v) for v in value))
    if isinstance(value, bytes):  # Binary is a bytes subclass; plain bytes are subtype 0
        subtype = value.subtype if isinstance(value, Binary) else 0
        return (6, len(value), subtype, bytes(value))
    if isinstance(value, ObjectId):
        return (7, value.binary)
    if isinstance(value, datetime | DatetimeMS):
        return (9, _millis(value))
    if isinstance(value, Timestamp):
        return (10, value.time, value.inc)
    if isinstance(value, MaxKey):
        return (12,)
    raise UnorderableIdError(f"cannot order an _id of type {type(value).__name__}: {render_id(value)}")


def _millis(value: datetime | DatetimeMS) -> int:
    if isinstance(value, DatetimeMS):
        return int(value)
    return calendar.timegm(value.utctimetuple()) * 1000 + value.microsecond // 1000  # naive means UTC


def id_key(value: Any) -> bytes:
    """An ``_id`` as exact bytes (type included), for matching the documents of a re-read."""
    return bson.encode({"_id": value})


def unique_ids(values: Sequence[Any]) -> list[Any]:
    """The values in their first order, each exact value once."""
    seen: dict[bytes, Any] = {}
    for value in values:
        seen.setdefault(id_key(value), value)
    return list(seen.values())
