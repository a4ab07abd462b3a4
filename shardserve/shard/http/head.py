"""Splitting a complete request head into what the pure-Python parser acts on.

``split_head`` is the reference: every check of RFC 9112's head syntax that
parser_python.py makes, in its order, raising ``ParseError``.  ``split_fast`` is the
compiled twin (``_head.c``) where it loads: it returns exactly what ``split_head``
returns for the heads it takes (a request line with a common method, an origin-form
target and HTTP/1.x; each Host, Content-Length, Transfer-Encoding and Connection at
most once), and None for anything else, errors included, which the reference then
parses, so every error and every rare form has one implementation.  It loads in
own-GIL subinterpreters (multi-phase initialisation, no global state), where
httptools cannot.  Without it ``split_fast`` is the reference itself.
``SHARDSERVE_PURE_PYTHON=1`` leaves it out (CI runs the HTTP tests
both ways); tests/test_head_split.py holds the two to each other.
"""

from __future__ import annotations

import re

from . import compiled
from .framing import check_connect_target
from .framing import token as _token
from .parser import INTERNED_METHODS, REQUEST_LINE_EXTRA, ParseError

# Every byte a request head may contain anywhere: HTAB, LF, CR, SP, VCHAR, obs-text.
# Which of them may appear where is checked per part.
HEAD_BYTES = bytes([9, 10, 13, *range(0x20, 0x7F), *range(0x80, 0x100)])

_version = re.compile(rb"HTTP/([0-9])\.([0-9])").fullmatch
_absolute = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*:").match

# Field-name kinds the parser acts on.
_OTHER = 0
_CONTENT_LENGTH = 1
_TRANSFER_ENCODING = 2
_HOST = 3
_CONNECTION = 4
_UPGRADE = 5
_KINDS = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"host": _HOST,
    b"connection": _CONNECTION,
    b"upgrade": _UPGRADE,
}

# Raw field name -> (lower-cased name, kind), for names already seen to be valid tokens.
# Bounded, so that clients inventing names cannot grow it.
NAMES: dict[bytes, tuple[bytes, int]] = {}
_NAMES_MAX = 1024

# (method, target, http_version, headers, host, content_length, transfer_encoding,
#  connection, upgrade)
Fields = tuple[
    str, bytes, str, list[tuple[bytes, bytes]], bytes | None, bytes | None, bytes | None,
    bytes | None, bool,
]  # fmt: skip


def field_name(raw: bytes) -> tuple[bytes, int]:
    """A field name's lower-cased form and kind; ParseError if it is not a token."""
    if _token(raw) is None:
        raise ParseError(400, "invalid header field name (whitespace, obs-fold or a non-token)")
    name = raw.lower()
    entry = (name, _KINDS.get(name, _OTHER))
    if len(NAMES) < _NAMES_MAX:
        NAMES[raw] = entry
    return entry


def split_head(head: bytes, request_line: int, field_size: int, fields: int) -> Fields:
    """The reference: ``head`` without its final CRLF CRLF, checked and split.
    Repeated Transfer-Encoding and Connection fields come joined with ","."""
    if head.translate(None, HEAD_BYTES):
        raise ParseError(400, "control character in request head")
    lines = head.split(b"\r\n")
    count = len(lines) - 1
    if head.count(b"\r") != count or head.count(b"\n") != count:
        raise ParseError(400, "bare CR or LF in request head")
    if count > fields:
        raise ParseError(431, "too many request header fields")

    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ParseError(400, "malformed request line")
    raw_method, target, raw_version = parts
    method = INTERNED_METHODS.get(raw_method)
    if method is None:
        if _token(raw_method) is None:
            raise ParseError(400, "invalid method")
        method = raw_method.decode("ascii")
    if raw_version == b"HTTP/1.1":
        http_version = "1.1"
    elif raw_version == b"HTTP/1.0":
        http_version = "1.0"
    else:
        http_version = _other_version(raw_version)
    if len(head) > request_line and (
        len(target) > request_line or len(lines[0]) > request_line + REQUEST_LINE_EXTRA
    ):
        raise ParseError(414, "request line too long")
    if not target or b"\t" in target or not target.isascii():
        raise ParseError(400, "invalid request target")
    if target[0] != 47:  # not origin-form ("/...")
        _check_other_target(method, target)
    elif method == "CONNECT":
        check_connect_target(target)  # (refuses it)

    if len(head) > field_size:
        for index in range(1, count + 1):
            if len(lines[index]) > field_size:
                raise ParseError(431, "request header field too large")

    headers = []
    append = headers.append
    content_length = None
    transfer_encoding = None
    host = None
    connection = None
    upgrade = False
    names = NAMES
    for line in lines[1:]:
        raw_name, colon, value = line.partition(b":")
        if not colon:
            raise ParseError(400, "header line without a colon (or obs-fold)")
        name, kind = names.get(raw_name) or field_name(raw_name)
        value = value.strip(b" \t")
        append((name, value))
        if kind:
            if kind == _HOST:
                if host is not None:
                    raise ParseError(400, "more than one Host header")
                host = value
            elif kind == _CONTENT_LENGTH:
                if content_length is not None:
                    raise ParseError(400, "duplicate Content-Length")
                content_length = value
            elif kind == _TRANSFER_ENCODING:
                transfer_encoding = (
                    value if transfer_encoding is None else transfer_encoding + b"," + value
                )
            elif kind == _CONNECTION:
                connection = value if connection is None else connection + b"," + value
            else:
                upgrade = True

    return (method, target, http_version, headers, host, content_length, transfer_encoding,
            connection, upgrade)  # fmt: skip


def _other_version(raw: bytes) -> str:
    match = _version(raw)
    if match is None:
        raise ParseError(400, "malformed HTTP version")
    major, minor = match.group(1), match.group(2)
    if major != b"1":
        raise ParseError(505, f"HTTP/{major.decode()}.{minor.decode()} is not supported")
    raise ParseError(400, f"invalid HTTP version 1.{minor.decode()}")


def _check_other_target(method: str, target: bytes) -> None:
    """absolute-form for any method, authority-form for CONNECT only, asterisk-form
    for OPTIONS only (RFC 9112 3.2)."""
    if method == "CONNECT":
        check_connect_target(target)
    elif target == b"*":
        if method != "OPTIONS":
            raise ParseError(400, "asterisk-form target outside OPTIONS")
    elif _absolute(target) is None:
        raise ParseError(400, "invalid request target")


_module = compiled.load("_head")
_compiled = None if _module is None else _module.split_head
ACCELERATED = _compiled is not None
# The compiled splitter (a tuple, or None: ask the reference), or without it the
# reference itself, so that a head is never split twice.
split_fast = _compiled if _compiled is not None else split_head
