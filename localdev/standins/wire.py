"""MongoDB wire-message framing: just enough to read, inspect, rewrite and answer client requests.

Only the opcodes a modern driver sends are understood: ``OP_MSG`` for every command and ``OP_QUERY`` for
the legacy first ``isMaster`` of a connection (answered with ``OP_REPLY``). ``OP_COMPRESSED`` never appears
because the proxy removes compression from the handshake. Reference:
https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bson
from bson.errors import BSONError

OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013

# OP_MSG flag bits.
CHECKSUM_PRESENT = 1 << 0
MORE_TO_COME = 1 << 1
EXHAUST_ALLOWED = 1 << 16

_HEADER = struct.Struct("<iiii")
# MongoDB's own limit (maxMessageSizeBytes); anything larger means a corrupt or hostile stream.
MAX_MESSAGE_SIZE = 48_000_000

_request_ids = itertools.count(1)


class WireError(Exception):
    """The peer sent bytes that are not a well-formed message of a supported kind."""


@dataclass(frozen=True)
class Message:
    """One framed wire message; ``raw`` includes the 16-byte header."""

    request_id: int
    response_to: int
    op_code: int
    raw: bytes


@dataclass(frozen=True)
class OpMsg:
    """A decoded ``OP_MSG``; kind-1 document sequences are kept as raw bytes so they survive re-encoding."""

    flags: int
    body: dict[str, Any]
    sequences: tuple[tuple[str, bytes], ...] = ()

    @property
    def command_name(self) -> str:
        """The command is the first key of the body, as the server defines it."""
        return next(iter(self.body), "")


@dataclass(frozen=True)
class OpQuery:
    """A decoded ``OP_QUERY``; the bytes around the query document are kept verbatim for re-encoding."""

    namespace: str
    query: dict[str, Any]
    prefix: bytes  # flags, namespace, numberToSkip, numberToReturn
    suffix: bytes  # the optional returnFieldsSelector

    @property
    def command_name(self) -> str:
        """For ``<db>.$cmd`` queries the first key of the query document names the command."""
        return next(iter(self.query), "")


def next_request_id() -> int:
    """Request ids for messages the proxy itself originates (replies it answers without upstream)."""
    return next(_request_ids)


async def read_message(reader: asyncio.StreamReader) -> Message:
    """Read exactly one message; raises ``asyncio.IncompleteReadError`` when the peer closes."""
    header = await reader.readexactly(_HEADER.size)
    length, request_id, response_to, op_code = _HEADER.unpack(header)
    if not _HEADER.size <= length <= MAX_MESSAGE_SIZE:
        raise WireError(f"invalid message length {length}")
    body = await reader.readexactly(length - _HEADER.size)
    return Message(request_id, response_to, op_code, header + body)


def _frame(op_code: int, payload: bytes, *, request_id: int, response_to: int) -> bytes:
    return _HEADER.pack(_HEADER.size + len(payload), request_id, response_to, op_code) + payload


def _cstring(data: bytes, offset: int) -> tuple[str, int]:
    end = data.index(b"\x00", offset)
    return data[offset:end].decode(), end + 1


def decode_op_msg(message: Message) -> OpMsg:
    """Decode the sections of an ``OP_MSG``, dropping the trailing checksum if one is present."""
    data = message.raw
    (flags,) = struct.unpack_from("<I", data, _HEADER.size)
    end = len(data) - 4 if flags & CHECKSUM_PRESENT else len(data)
    offset = _HEADER.size + 4
    body: dict[str, Any] | None = None
    sequences: list[tuple[str, bytes]] = []
    try:
        while offset < end:
            kind = data[offset]
            offset += 1
            (size,) = struct.unpack_from("<i", data, offset)
            if kind == 0:
                body = bson.decode(data[offset : offset + size])
            elif kind == 1:
                identifier, docs_start = _cstring(data, offset + 4)
                sequences.append((identifier, data[docs_start : offset + size]))
            else:
                raise WireError(f"unknown OP_MSG section kind {kind}")
            offset += size
    except (struct.error, ValueError, BSONError) as exc:
        raise WireError(f"malformed OP_MSG: {exc}") from exc
    if body is None:
        raise WireError("OP_MSG without a body section")
    return OpMsg(flags, body, tuple(sequences))


def encode_op_msg(
    body: Mapping[str, Any],
    *,
    request_id: int,
    response_to: int = 0,
    flags: int = 0,
    sequences: tuple[tuple[str, bytes], ...] = (),
) -> bytes:
    """Encode an ``OP_MSG`` without a checksum (the checksum bit is cleared whatever ``flags`` says)."""
    payload = [struct.pack("<I", flags & ~CHECKSUM_PRESENT), b"\x00", bson.encode(body)]
    for identifier, docs in sequences:
        name = identifier.encode() + b"\x00"
        payload += [b"\x01", struct.pack("<i", 4 + len(name) + len(docs)), name, docs]
    return _frame(OP_MSG, b"".join(payload), request_id=request_id, response_to=response_to)


def decode_op_query(message: Message) -> OpQuery:
    """Decode an ``OP_QUERY``: flags, namespace, skip, limit, query document, optional field selector."""
    data = message.raw
    try:
        namespace, offset = _cstring(data, _HEADER.size + 4)
        offset += 8  # numberToSkip, numberToReturn
        (size,) = struct.unpack_from("<i", data, offset)
        query = bson.decode(data[offset : offset + size])
    except (struct.error, ValueError, BSONError) as exc:
        raise WireError(f"malformed OP_QUERY: {exc}") from exc
    return OpQuery(namespace, query, data[_HEADER.size : offset], data[offset + size :])


def encode_op_query(query: OpQuery, *, request_id: int) -> bytes:
    """Re-encode an ``OP_QUERY`` whose query document may have been edited."""
    payload = query.prefix + bson.encode(query.query) + query.suffix
    return _frame(OP_QUERY, payload, request_id=request_id, response_to=0)


def encode_op_reply(document: Mapping[str, Any], *, request_id: int, response_to: int) -> bytes:
    """Encode an ``OP_REPLY`` carrying one document: the answer to a command sent as ``OP_QUERY``."""
    # responseFlags 0, cursorId 0, startingFrom 0, numberReturned 1.
    payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(document)
    return _frame(OP_REPLY, payload, request_id=request_id, response_to=response_to)
