"""HPACK (RFC 7541) for h2, leaner than the hpack package's own: after h2 itself,
header compression was where an HTTP/2 request's time went (about a fifth of it,
much of that in per-field calls and debug logging).

- ``LeanEncoder`` keeps no state: its first block sets the client's dynamic table to
  size 0 and nothing is ever added to it, so a response header is a dict look-up and a
  join (static-table names, no Huffman coding: a few bytes more per response).
- ``LeanDecoder`` decodes all of RFC 7541 (dynamic table, Huffman, size updates) in
  one loop with the same limits and errors as hpack's, which it is checked against
  (tests/test_h2_hpack.py).

Both replace the objects h2 makes for a connection (session.py): h2 still drives them
and turns their errors into COMPRESSION_ERROR / ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

from hpack import Decoder, Encoder
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC = HeaderTable.STATIC_TABLE
STATIC_LENGTH = len(STATIC)
# An integer longer than this many bits is refused: no real header needs it, and an
# unbounded one costs quadratic time to build.
INTEGER_SHIFT_MAX = 28
# A header block up to this long is kept for the next one to be compared with.
CACHED_BLOCK_BYTES = 1024

# Encoder ----------------------------------------------------------------------------

_SIZE_ZERO = b"\x20"  # dynamic table size update: 0
_LENGTHS = [bytes((n,)) for n in range(127)]  # a string's length, no Huffman, < 127
# ":status" with a value in the static table: one byte (indexed field).
_STATUS_INDEXED = {
    value: bytes((0x80 | index,))
    for index, (name, value) in enumerate(STATIC, 1)
    if name == b":status"
}


def _integer(value: int, prefix_max: int, flags: int) -> bytes:
    if value < prefix_max:
        return bytes((flags | value,))
    out = bytearray((flags | prefix_max,))
    value -= prefix_max
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


# A field's start, "literal without indexing", by name: the name's static index where
# it has one (4-bit prefix), else the name as a literal.
_NAME_PREFIXES: dict[bytes, bytes] = {}
for _index, (_name, _) in enumerate(STATIC, 1):
    _NAME_PREFIXES.setdefault(_name, _integer(_index, 0x0F, 0x00))
_NAME_PREFIXES_STATIC = len(_NAME_PREFIXES)
_NAME_PREFIXES_MAX = _NAME_PREFIXES_STATIC + 512  # (the apps' names, once each)


def _name_prefix(name: bytes) -> bytes:
    prefix = b"\x00" + _integer(len(name), 0x7F, 0x00) + name
    if len(_NAME_PREFIXES) < _NAME_PREFIXES_MAX:
        _NAME_PREFIXES[name] = prefix
    return prefix


class LeanEncoder(Encoder):
    """Literal fields without indexing, after one dynamic table size update to 0:
    valid for any table size the client allows, and nothing to keep in step."""

    def __init__(self) -> None:
        super().__init__()
        self.first_block = True

    def encode(self, headers, huffman: bool = True) -> bytes:
        parts = []
        append = parts.append
        if self.first_block:
            self.first_block = False
            append(_SIZE_ZERO)
        prefixes = _NAME_PREFIXES
        lengths = _LENGTHS
        for name, value in headers:
            if name == b":status":
                indexed = _STATUS_INDEXED.get(value)
                if indexed is not None:
                    append(indexed)
                    continue
            prefix = prefixes.get(name)
            append(prefix if prefix is not None else _name_prefix(name))
            size = len(value)
            append(lengths[size] if size < 127 else _integer(size, 0x7F, 0x00))
            append(value)
        return b"".join(parts)


# Decoder ----------------------------------------------------------------------------

_HUFFMAN_CACHE: dict[bytes, bytes] = {}
_HUFFMAN_CACHE_MAX = 1024
_HUFFMAN_CACHED_LENGTH = 128  # (longer strings are decoded every time)


def _huffman(encoded: bytes) -> bytes:
    decoded = _HUFFMAN_CACHE.get(encoded)
    if decoded is None:
        decoded = decode_huffman(encoded)
        if len(encoded) <= _HUFFMAN_CACHED_LENGTH:
            if len(_HUFFMAN_CACHE) >= _HUFFMAN_CACHE_MAX:
                _HUFFMAN_CACHE.clear()
            _HUFFMAN_CACHE[encoded] = decoded
    return decoded


def _read_integer(data: bytes, position: int, value: int) -> tuple[int, int]:
    """The rest of an integer whose prefix was all ones (``value``), from ``position``."""
    shift = 0
    while True:
        if position >= len(data):
            raise HPACKDecodingError("Header block ends inside an integer")
        byte = data[position]
        position += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > INTEGER_SHIFT_MAX:
            raise HPACKDecodingError("Integer too long in header block")


def _read_string(data: bytes, position: int) -> tuple[bytes, int]:
    if position >= len(data):
        raise HPACKDecodingError("Header block ends before a string")
    first = data[position]
    length = first & 0x7F
    position += 1
    if length == 0x7F:
        length, position = _read_integer(data, position, length)
    end = position + length
    if end > len(data):
        raise HPACKDecodingError("Header block ends inside a string")
    string = data[position:end]
    return (_huffman(string) if first & 0x80 else string), end


class LeanDecoder(Decoder):
    """hpack's Decoder (its table, limits and attributes, which h2 sets), with one
    loop for ``decode(raw=True)``, the only way h2 calls it.

    A client repeating a request (the same header block, all of it from the tables)
    gets the last answer again, if the block changed nothing and the dynamic table is
    as it was: the same newest entry, count and size limit (any insertion, eviction or
    resize changes one of them), and the same header list limit."""

    last_block = b""
    last_headers: list = []
    last_table: tuple = (None, -1, -1, -1)  # (matches no table)

    def decode(self, data, raw: bool = False):
        if not raw:
            return super().decode(data, raw)
        if type(data) is not bytes:
            data = bytes(data)
        table = self.header_table
        dynamic = table.dynamic_entries
        if data == self.last_block:
            newest, count, size, limit = self.last_table
            if (
                (dynamic[0] if dynamic else None) is newest
                and len(dynamic) == count
                and table.maxsize == size
                and self.max_header_list_size == limit
            ):
                return list(self.last_headers)
        changed = False
        limit = self.max_header_list_size
        headers: list[tuple[bytes, bytes]] = []
        append = headers.append
        listed = 0
        position = 0
        end = len(data)
        while position < end:
            byte = data[position]
            position += 1
            if byte & 0x80:  # indexed field
                index = byte & 0x7F
                if index == 0x7F:
                    index, position = _read_integer(data, position, index)
                header = _entry(index, dynamic)
            elif byte & 0x40 or not byte & 0x20:  # literal, indexed or not
                indexing = byte & 0x40
                mask = 0x3F if indexing else 0x0F
                index = byte & mask
                if index == mask:
                    index, position = _read_integer(data, position, index)
                if index:
                    name = _entry(index, dynamic)[0]
                else:
                    name, position = _read_string(data, position)
                value, position = _read_string(data, position)
                header = (name, value)
                if indexing:
                    table.add(name, value)
                    changed = True
            else:  # dynamic table size update
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size = byte & 0x1F
                if size == 0x1F:
                    size, position = _read_integer(data, position, size)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                table.maxsize = size
                changed = True
                continue
            listed += len(header[0]) + len(header[1]) + 32
            if listed > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
            append(header)
        self._assert_valid_table_size()
        if not changed and end <= CACHED_BLOCK_BYTES:
            self.last_block = data
            self.last_headers = headers
            self.last_table = (
                dynamic[0] if dynamic else None,
                len(dynamic),
                table.maxsize,
                limit,
            )
            return list(headers)
        return headers


def _entry(index: int, dynamic) -> tuple[bytes, bytes]:
    if 0 < index <= STATIC_LENGTH:
        return STATIC[index - 1]
    index -= STATIC_LENGTH + 1
    if 0 <= index < len(dynamic):
        return dynamic[index]
    raise InvalidTableIndexError(f"Invalid table index {index + STATIC_LENGTH + 1}")
