"""Raw BSON: the one set of codec options for the documents that pass through the replicator.

Documents stay ``RawBSONDocument`` from the source to the estuary: their bytes go back on the wire as they came.
Whatever must look inside one (pymongo's own replacement check calls ``len()``, which decodes the top level; a
``transform`` renames and drops top-level fields; ``verify`` orders ``_id`` values) decodes it with these options,
which accept every valid BSON value: a date outside Python's ``datetime`` range becomes a ``DatetimeMS`` instead of
raising ``InvalidBSON`` (real data has such sentinel dates), and nested documents stay raw.
https://www.mongodb.com/docs/languages/python/pymongo-driver/current/data-formats/dates-and-times/#handling-out-of-range-datetimes
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument

RAW: CodecOptions[RawBSONDocument] = CodecOptions(
    document_class=RawBSONDocument, datetime_conversion=DatetimeConversion.DATETIME_AUTO
)


def raw_document(document: Mapping[str, Any] | bytes) -> RawBSONDocument:
    """``document`` (a mapping, or BSON bytes) as a ``RawBSONDocument`` that decodes with ``RAW``."""
    data = document if isinstance(document, bytes) else bson.encode(document)
    return RawBSONDocument(data, RAW)
