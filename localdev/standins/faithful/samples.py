"""Documents that a lossy path would change: for tests that must prove bytes survive (here and elsewhere)."""

from __future__ import annotations

import uuid
from typing import Any

import bson
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

COMPOUND_ID = {"b": 1, "a": Decimal128("1.5")}


def exotic_document(doc_id: Any = COMPOUND_ID, **extra: Any) -> bytes:
    """Every BSON value a decode/re-encode could alter, fields in non-alphabetical order, ``extra`` fields last.

    Dates outside Python's range (top level, nested, in an array), Decimal128 NaN and -0, doubles -0.0/NaN/inf,
    Int32 vs Int64, binary subtypes 0/3/4/0x80, Timestamp, Regex with flags, MinKey/MaxKey, code with and without
    scope, a DBRef with an extra field, an ObjectId, ``$``-prefixed and dotted field names.
    """
    return bson.encode(
        {
            "_id": doc_id,
            "zeta": 1,
            "alpha": Int64(1),
            "far_future": DatetimeMS(2**62),
            "far_past": DatetimeMS(-(2**62)),
            "dec_nan": Decimal128("NaN"),
            "dec_negative_zero": Decimal128("-0"),
            "negative_zero": -0.0,
            "nan": float("nan"),
            "inf": float("inf"),
            "bin0": Binary(b"\x00\x01", 0),
            "bin3": Binary(b"0123456789abcdef", 3),
            "bin4": Binary(uuid.uuid4().bytes, 4),
            "bin80": Binary(b"user-defined", 0x80),
            "ts": Timestamp(1, 2),
            "regex": Regex("a.c", "imsx"),
            "min": MinKey(),
            "max": MaxKey(),
            "code": Code("f()"),
            "code_scope": Code("f(x)", {"x": 1}),
            "ref": DBRef("c", 1, "db", extra=1),
            "oid": ObjectId(),
            "nested": {"when": DatetimeMS(2**62), "list": [DatetimeMS(-(2**62)), {"deep": Decimal128("-0")}]},
            "$dollar": 1,
            "dot.ted": 2,
            **extra,
        }
    )
