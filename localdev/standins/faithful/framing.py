"""OP_MSG requests decoded without loss: the body with ``shared.raw_bson.RAW``, document sequences as exact bytes.

``localdev.standins.wire`` frames messages (reading, and encoding replies); its ``decode_op_msg`` decodes bodies
with default codec options, which raise on a date outside Python's range and turn values into Python types, so
this server splits the sections itself. Reference:
https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/#op_msg
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument

from localdev.standins import wire
from localdev.standins.faithful.rawdoc import MalformedBSONError, split_documents
from shared.raw_bson import RAW

_HEADER_SIZE = 16


@dataclass(frozen=True)
class Request:
    """One command: top-level fields of the body (sub-documents stay ``RawBSONDocument``), and kind-1 sequences."""

    flags: int
    body: dict[str, Any]
    sequences: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def command_name(self) -> str:
        return next(iter(self.body), "")

    @property
    def db(self) -> str:
        return str(self.body.get("$db", "admin"))

    def documents(self, name: str) -> list[bytes]:
        """The exact bytes of the documents of a sequence (or, failing that, of the body's array ``name``)."""
        if name in self.sequences:
            return self.sequences[name]
        value = self.body.get(name) or []
        return [bytes(doc.raw) for doc in value if isinstance(doc, RawBSONDocument)]


def decode_request(message: wire.Message) -> Request:
    data = message.raw
    try:
        (flags,) = struct.unpack_from("<I", data, _HEADER_SIZE)
        end = len(data) - 4 if flags & wire.CHECKSUM_PRESENT else len(data)
        offset = _HEADER_SIZE + 4
        body: dict[str, Any] | None = None
        sequences: dict[str, list[bytes]] = {}
        while offset < end:
            kind = data[offset]
            offset += 1
            (size,) = struct.unpack_from("<i", data, offset)
            if kind == 0:
                document = RawBSONDocument(data[offset : offset + size], RAW)
                body = dict(document.items())
            elif kind == 1:
                name_end = data.index(b"\x00", offset + 4)
                identifier = data[offset + 4 : name_end].decode()
                sequences.setdefault(identifier, []).extend(split_documents(data[name_end + 1 : offset + size]))
            else:
                raise wire.WireError(f"unknown OP_MSG section kind {kind}")
            offset += size
    except (struct.error, ValueError, BSONError, MalformedBSONError) as exc:
        raise wire.WireError(f"malformed OP_MSG: {exc}") from exc
    if body is None:
        raise wire.WireError("OP_MSG without a body section")
    return Request(flags, body, sequences)
