"""Raw BSON documents as sequences of elements, read and edited without decoding what is not touched.

An element is kept as its exact bytes (type byte, name, value). Reading a field decodes that one element with
``shared.raw_bson.RAW`` (nested documents stay raw, out-of-range dates become ``DatetimeMS``); editing a field
re-encodes only the new value and splices it between the untouched bytes of its neighbours, so every other value
keeps its type and bit pattern (a NaN payload, -0.0, an Int64 that would fit in 32 bits, a Regex's flag order).
Reference: https://bsonspec.org/spec.html
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from localdev.standins.faithful.errors import PATH_NOT_VIABLE, WriteFailedError
from shared.raw_bson import RAW

DOCUMENT = 0x03
ARRAY = 0x04
_INT32 = struct.Struct("<i")
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0xFF: 0, 0x7F: 0}
_STRINGS = frozenset({0x02, 0x0D, 0x0E})  # int32 length, then the bytes (string, JavaScript code, symbol)
_SIZED = frozenset({DOCUMENT, ARRAY, 0x0F})  # int32 total size including itself (documents, code with scope)


class MalformedBSONError(ValueError):
    """Bytes that are not one well-formed BSON document."""


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a document: ``raw`` is its type byte, name and value; ``value`` the value's bytes."""

    name: str
    kind: int
    raw: bytes
    value_offset: int

    @property
    def value(self) -> bytes:
        return self.raw[self.value_offset :]

    def decode(self) -> Any:
        """The value, decoded with ``RAW`` (a sub-document is a ``RawBSONDocument`` of its exact bytes)."""
        return RawBSONDocument(build([self.raw]), RAW)[self.name]


def _int32(data: bytes, offset: int) -> int:
    (value,) = _INT32.unpack_from(data, offset)
    return int(value)


def _value_end(data: bytes, kind: int, start: int) -> int:
    if kind in _FIXED:
        return start + _FIXED[kind]
    if kind in _STRINGS:
        return start + 4 + _int32(data, start)
    if kind in _SIZED:
        return start + _int32(data, start)
    if kind == 0x05:  # binary: int32 length, subtype byte, bytes
        return start + 5 + _int32(data, start)
    if kind == 0x0B:  # regex: two C strings
        return data.index(b"\x00", data.index(b"\x00", start) + 1) + 1
    if kind == 0x0C:  # DBPointer: string, then a 12-byte ObjectId
        return start + 4 + _int32(data, start) + 12
    raise MalformedBSONError(f"unknown BSON element type 0x{kind:02x}")


def scan(doc: bytes) -> Iterator[tuple[str, int, int, int, int]]:
    """``(name, kind, start, value_start, end)`` of every element, as offsets into ``doc`` (nothing copied)."""
    try:
        (size,) = _INT32.unpack_from(doc, 0)
        if size != len(doc) or size < 5 or doc[-1] != 0:
            raise MalformedBSONError(f"document size {size} does not match its {len(doc)} bytes")
        pos, last = 4, size - 1
        while pos < last:
            kind = doc[pos]
            name_end = doc.index(b"\x00", pos + 1)
            value_start = name_end + 1
            end = _value_end(doc, kind, value_start)
            if end > last:
                raise MalformedBSONError("element runs past the end of its document")
            yield doc[pos + 1 : name_end].decode(), kind, pos, value_start, end
            pos = end
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, MalformedBSONError):
            raise
        raise MalformedBSONError(f"malformed BSON: {exc}") from exc


def elements(doc: bytes) -> list[Element]:
    return [Element(name, kind, doc[start:end], vs - start) for name, kind, start, vs, end in scan(doc)]


def names(doc: bytes) -> list[str]:
    return [name for name, *_ in scan(doc)]


def get(doc: bytes, name: str) -> Element | None:
    """The first element called ``name``; only that element is copied."""
    for found, kind, start, value_start, end in scan(doc):
        if found == name:
            return Element(found, kind, doc[start:end], value_start - start)
    return None


def build(raws: Iterable[bytes]) -> bytes:
    """A document made of the given element bytes, in order."""
    body = b"".join(raws)
    return _INT32.pack(len(body) + 5) + body + b"\x00"


EMPTY = build([])


def encode_element(name: str, value: Any) -> bytes:
    """The bytes of one element ``name: value`` (a ``RawBSONDocument`` value is copied as it is)."""
    return bson.encode({name: value})[4:-1]


def element(name: str, value: Any) -> Element:
    raw = encode_element(name, value)
    return Element(name, raw[0], raw, len(name.encode()) + 2)


def with_element(name: str, raw_value_doc: bytes, kind: int = DOCUMENT) -> bytes:
    """The bytes of an element holding an already-encoded (sub-)document."""
    return bytes([kind]) + name.encode() + b"\x00" + raw_value_doc


def lookup(doc: bytes, parts: Sequence[str]) -> list[Any]:
    """The values at a dotted path, MongoDB style: through arrays of documents, or into an array by position."""
    found = get(doc, parts[0])
    if found is None:
        return []
    if len(parts) == 1:
        return [found.decode()]
    if found.kind == DOCUMENT:
        return lookup(found.value, parts[1:])
    if found.kind != ARRAY:
        return []
    if parts[1].isdigit():
        return lookup(found.value, parts[1:])
    values: list[Any] = []
    for item in elements(found.value):
        if item.kind == DOCUMENT:
            values += lookup(item.value, parts[1:])
    return values


def get_path(doc: bytes, parts: Sequence[str]) -> Element | None:
    """The one element at a dotted path (array positions allowed, no fan-out over arrays)."""
    found = get(doc, parts[0])
    if found is None or len(parts) == 1:
        return found
    return get_path(found.value, parts[1:]) if found.kind in (DOCUMENT, ARRAY) else None


def set_path(doc: bytes, parts: Sequence[str], value: Any, *, in_array: bool = False) -> bytes:
    """``doc`` with the value at a dotted path replaced (or added last), creating sub-documents on the way."""
    items = elements(doc)
    name, rest = parts[0], parts[1:]
    if in_array:
        if not name.isdigit():
            raise WriteFailedError(PATH_NOT_VIABLE, f"Cannot create field '{name}' in an array")
        while len(items) < int(name):  # MongoDB pads an array with nulls up to the position set
            items.append(element(str(len(items)), None))
    index = next((i for i, item in enumerate(items) if item.name == name), None)
    if not rest:
        new = encode_element(name, value)
    elif index is None:
        new = with_element(name, set_path(EMPTY, rest, value))
    else:
        current = items[index]
        if current.kind not in (DOCUMENT, ARRAY):
            raise WriteFailedError(PATH_NOT_VIABLE, f"Cannot create field '{rest[0]}' in element {{{name}: ...}}")
        sub = set_path(current.value, rest, value, in_array=current.kind == ARRAY)
        new = current.raw[: current.value_offset] + sub
    raws = [item.raw for item in items]
    if index is None:
        raws.append(new)
    else:
        raws[index] = new
    return build(raws)


def unset_path(doc: bytes, parts: Sequence[str], *, in_array: bool = False) -> bytes | None:
    """``doc`` without the value at a dotted path (an array position becomes null); ``None`` when absent."""
    items = elements(doc)
    index = next((i for i, item in enumerate(items) if item.name == parts[0]), None)
    if index is None:
        return None
    current = items[index]
    raws = [item.raw for item in items]
    if len(parts) == 1:
        if in_array:
            raws[index] = encode_element(current.name, None)
        else:
            del raws[index]
        return build(raws)
    if current.kind not in (DOCUMENT, ARRAY):
        return None
    sub = unset_path(current.value, parts[1:], in_array=current.kind == ARRAY)
    if sub is None:
        return None
    raws[index] = current.raw[: current.value_offset] + sub
    return build(raws)


def split_documents(data: bytes) -> list[bytes]:
    """The documents of a kind-1 OP_MSG section (or any run of concatenated documents), as exact bytes."""
    docs, pos = [], 0
    while pos < len(data):
        (size,) = _INT32.unpack_from(data, pos)
        if size < 5 or pos + size > len(data):
            raise MalformedBSONError("document sequence cut short")
        docs.append(data[pos : pos + size])
        pos += size
    return docs
