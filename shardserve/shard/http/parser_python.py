"""Request-parser back-end in pure Python: strict, incremental and fast.

For shards that cannot load C extensions (subinterpreters, PyPy, free-threaded
builds), where h11 would otherwise cost several times the CPU per request.

How it stays fast: a request head that arrives whole (nearly always) is found with
one ``find`` and never copied; its bytes are checked for forbidden characters with
one ``translate`` and its line structure with two ``count`` calls, so the per-line
loop only splits names from values.  Field names are validated and lower-cased once
per process through a bounded cache.  Bodies are passed on as slices of what
arrived, never buffered.

How it stays strict (RFC 9112): CRLF line endings only, no obs-fold, no whitespace
before a colon, token names, no CTLs or bare CR, exactly one Host on HTTP/1.1,
unambiguous framing, hex chunk sizes of at most 16 digits, and bounded request lines
(414), heads and fields (431).  The checks that decide framing and routing (Host,
Transfer-Encoding, CONNECT's target) are ``framing.py``'s, shared with the other
back-ends.  Intentional differences from h11 are listed in docs/http-parser.md.

``feed`` here is the reference: where ``_conn.c`` is built, its twin takes the read
that holds one whole head without a body (the usual keep-alive GET) in C, splitting it
with the same ``split_fast`` (``install_compiled_feed``).
"""

from __future__ import annotations

import re

from . import compiled
from .framing import TOKEN as _TOKEN
from .framing import check_host, check_transfer_encoding
from .head import HEAD_BYTES, NAMES, field_name, split_fast, split_head
from .parser import REQUEST_LINE_EXTRA, Limits, ParseError, RequestSink

# Parser states.
HEAD = 0  # waiting for (the rest of) a request head
BODY = 1  # Content-Length body: ``remaining`` bytes to go
CHUNK_SIZE = 2  # waiting for a chunk-size line
CHUNK_DATA = 3  # ``remaining`` bytes of chunk data to go
CHUNK_END = 4  # the CRLF after chunk data
TRAILERS = 5  # the trailer section after the last chunk
SWITCHED = 6  # the sink took the connection over: ignore input

_hex_size = re.compile(rb"[0-9A-Fa-f]+").fullmatch
# chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_chunk_ext = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
).fullmatch

# Longest chunk-size line (size, extensions) accepted.
MAX_CHUNK_LINE = 4096
# Most hex digits of a chunk size, leading zeros aside: 2**64 - 1.
MAX_CHUNK_DIGITS = 16
# Most decimal digits of a Content-Length, leading zeros aside: under 2**63.
MAX_LENGTH_DIGITS = 18


class PythonParser:
    __slots__ = (
        "sink",
        "limits",
        "state",
        "buf",
        "scanned",
        "line_seen",
        "remaining",
        "upgrade",
        "last_host",
        "on_body",
        "on_request_end",
    )

    def __init__(self, sink: RequestSink, limits: Limits) -> None:
        self.sink = sink
        self.limits = limits
        self.state = HEAD
        # Bytes received but not yet parsed: bytes when they arrived in one piece,
        # a bytearray while pieces accumulate (appending to bytes would be quadratic).
        self.buf: bytes | bytearray = b""
        self.scanned = 0  # how far ``buf`` was already searched for a terminator
        self.line_seen = False  # the request line of the head arriving is complete
        self.remaining = 0
        self.upgrade = False  # the request being received asks to switch protocols
        self.last_host = b""  # the last Host value validated on this connection
        self.on_body = sink.on_body
        self.on_request_end = sink.on_request_end

    def feed(self, data: bytes) -> None:
        buf = self.buf
        if buf:
            if type(buf) is bytes:
                buf = bytearray(buf)
            buf += data
        else:
            buf = data
        # Parse from ``pos`` on; what is left is copied once, at the end, so that a
        # read holding many pipelined requests or chunks is not copied per item.
        pos = 0
        size = len(buf)
        state = self.state
        while pos < size:
            if state == HEAD:
                if buf[pos] == 13:
                    pos = _skip_empty_lines(buf, pos)
                    if pos < size and buf[pos] == 13:  # a CR whose LF has not arrived
                        break
                    continue
                end = buf.find(b"\r\n\r\n", pos + self.scanned)
                if end < 0:
                    self._head_incomplete(buf, pos)
                    break
                self.scanned = 0
                self.line_seen = False
                state = self._head(bytes(buf[pos:end]))
                pos = end + 4
                if state == HEAD:  # no body: the request is complete
                    self.on_request_end()
                    if self.upgrade:
                        state = self._switch(buf, pos)
            elif state == BODY:
                remaining = self.remaining
                if size - pos < remaining:
                    self.remaining = remaining - (size - pos)
                    self.on_body(bytes(buf[pos:]))
                    pos = size
                    break
                pos += remaining
                self.on_body(bytes(buf[pos - remaining : pos]))
                state = self._end(buf, pos)
            elif state == CHUNK_DATA:
                remaining = self.remaining
                if size - pos <= remaining:
                    self.remaining = remaining - (size - pos)
                    self.on_body(bytes(buf[pos:]))
                    pos = size
                    if not self.remaining:
                        state = CHUNK_END
                    break
                pos += remaining
                self.on_body(bytes(buf[pos - remaining : pos]))
                state = CHUNK_END
            elif state == CHUNK_END:
                if buf[pos] != 13 or (size - pos > 1 and buf[pos + 1] != 10):
                    raise ParseError(400, "chunk data not followed by CRLF")
                if size - pos < 2:
                    break
                pos += 2
                state = CHUNK_SIZE
            elif state == CHUNK_SIZE:
                end = buf.find(b"\r\n", pos + self.scanned)
                if end < 0:
                    if size - pos > MAX_CHUNK_LINE:
                        raise ParseError(400, "chunk-size line too long")
                    if buf.find(b"\n", pos + self.scanned) >= 0:
                        raise ParseError(400, "bare LF in chunk-size line")
                    self.scanned = max(size - pos - 1, 0)
                    break
                self.scanned = 0
                chunk_size = _chunk_size(bytes(buf[pos:end]))
                pos = end + 2
                if chunk_size:
                    self.remaining = chunk_size
                    state = CHUNK_DATA
                else:
                    state = TRAILERS
            elif state == TRAILERS:
                if buf[pos] == 13:  # no (more) trailer fields
                    if size - pos < 2:
                        break
                    if buf[pos + 1] != 10:
                        raise ParseError(400, "bare CR in trailer section")
                    pos += 2
                    state = self._end(buf, pos)
                    continue
                end = buf.find(b"\r\n\r\n", pos + self.scanned)
                if end < 0:
                    if size - pos > self.limits.head:
                        raise ParseError(431, "trailer section too large")
                    start = pos + self.scanned
                    if buf.find(b"\n\n", start) >= 0 or buf.find(b"\n\r\n", start) >= 0:
                        raise ParseError(400, "bare LF in trailer section")
                    self.scanned = max(size - pos - 3, 0)
                    break
                self.scanned = 0
                self._trailers(bytes(buf[pos:end]))
                pos = end + 4
                state = self._end(buf, pos)
            else:  # SWITCHED: the rest went to the sink
                pos = size
        self.state = state
        if pos:  # else keep it whole: no copy while a head arrives in pieces
            buf = buf[pos:] if pos < size else b""
        self.buf = buf

    # Request heads ------------------------------------------------------------------

    def _head_incomplete(self, buf: bytes | bytearray, pos: int) -> None:
        """Bound what a head still arriving may make us hold, and fail early.  Only
        bytes after ``scanned`` are searched, so a head in many pieces is not re-read."""
        limits = self.limits
        start = pos + self.scanned
        if not self.line_seen:
            # The first LF ends the request line: a bare one is refused however the
            # head was cut (so whole and in pieces agree).
            lf = buf.find(b"\n", start)
            if lf >= 0:
                if lf == pos or buf[lf - 1] != 13:
                    raise ParseError(400, "bare LF in request line")
                self.line_seen = True
            elif len(buf) - pos > limits.request_line + REQUEST_LINE_EXTRA + 1:
                # (+1: the last byte held may be the line's CR, not counted whole)
                raise ParseError(414, "request line too long")
        if len(buf) - pos > limits.head:
            raise ParseError(431, "request header fields too large")
        if buf.find(b"\n\n", start) >= 0 or buf.find(b"\n\r\n", start) >= 0:
            raise ParseError(400, "bare LF in request head")
        self.scanned = max(len(buf) - pos - 3, 0)

    def _head(self, head: bytes) -> int:
        """Parse a complete head (without its final CRLF CRLF), pass the request on
        and return the state its body puts the parser in."""
        limits = self.limits
        fields = split_fast(head, limits.request_line, limits.field_size, limits.fields)
        if fields is None:  # (a head the compiled splitter leaves to the reference)
            fields = split_head(head, limits.request_line, limits.field_size, limits.fields)
        (method, target, http_version, headers, host, content_length, transfer_encoding,
         connection, upgrade) = fields  # fmt: skip

        if host is None:
            if http_version == "1.1":
                raise ParseError(400, "missing Host header")
        elif host != self.last_host:
            check_host(host)
            self.last_host = host

        # Framing is decided before the request is passed on: a request that will be
        # rejected must never reach the app.
        state = HEAD
        if transfer_encoding is not None:
            check_transfer_encoding(http_version, transfer_encoding, content_length)
            state = CHUNK_SIZE
        elif content_length is not None:
            digits = content_length.lstrip(b"0")  # (leading zeros are allowed: 1*DIGIT)
            if not content_length.isdigit() or len(digits) > MAX_LENGTH_DIGITS:
                raise ParseError(400, "invalid Content-Length")
            length = int(content_length)
            if length:
                self.remaining = length
                state = BODY

        if connection is None:
            keep_alive = http_version == "1.1"
        else:
            keep_alive = _keep_alive(http_version, connection)
        self.upgrade = upgrade or method == "CONNECT"
        self.sink.on_request(method, target, http_version, headers, keep_alive)
        return state

    def _end(self, buf: bytes | bytearray, pos: int) -> int:
        """The request is complete: tell the sink, and go on in the state returned."""
        self.on_request_end()
        return self._switch(buf, pos) if self.upgrade else HEAD

    def _switch(self, buf: bytes | bytearray, pos: int) -> int:
        """Offer the connection (and the bytes from ``pos`` on) to the sink, as the
        request that just ended asked to switch protocols."""
        self.upgrade = False
        return SWITCHED if self.sink.on_upgrade(bytes(buf[pos:])) else HEAD

    def _trailers(self, section: bytes) -> None:
        """Validate trailer fields (RFC 9112 7.1.2) and drop them: not passed on."""
        if section.translate(None, HEAD_BYTES):
            raise ParseError(400, "control character in trailer section")
        lines = section.split(b"\r\n")
        count = len(lines)
        if section.count(b"\r") != count - 1 or section.count(b"\n") != count - 1:
            raise ParseError(400, "bare CR or LF in trailer section")
        if count > self.limits.fields:
            raise ParseError(431, "too many trailer fields")
        for line in lines:
            raw_name, colon, _ = line.partition(b":")
            if not colon:
                raise ParseError(400, "trailer line without a colon")
            if raw_name not in NAMES:
                field_name(raw_name)
            if len(line) > self.limits.field_size:
                raise ParseError(431, "trailer field too large")


def _skip_empty_lines(buf: bytes | bytearray, pos: int) -> int:
    """Empty lines before a request line are ignored (RFC 9112 2.2).  Returns where
    the request line starts, or the position of a final CR still missing its LF."""
    size = len(buf)
    while pos < size and buf[pos] == 13:
        if pos + 1 == size:
            return pos
        if buf[pos + 1] != 10:
            raise ParseError(400, "bare CR before the request line")
        pos += 2
    return pos


def _keep_alive(http_version: str, connection: bytes) -> bool:
    tokens = {token.strip(b" \t").lower() for token in connection.split(b",")}
    if b"close" in tokens:
        return False
    return http_version == "1.1" or b"keep-alive" in tokens


def _chunk_size(line: bytes) -> int:
    size, semicolon, _ = line.partition(b";")
    if semicolon:
        # BWS may sit between the size and the extensions.
        size = size.rstrip(b" \t")
        if _chunk_ext(line[len(size) :]) is None:
            raise ParseError(400, "invalid chunk extension")
    if _hex_size(size) is None:
        raise ParseError(400, "invalid chunk size")
    if len(size.lstrip(b"0")) > MAX_CHUNK_DIGITS:
        raise ParseError(400, "chunk size too large")
    return int(size, 16)


compiled.keep_references(PythonParser, ("feed",))


def install_compiled_feed() -> None:
    """Put _conn.c's twin in place of feed, where it is built."""
    module = compiled.load("_conn")
    if module is not None:
        compiled.install(
            PythonParser, module.PythonTwins(parser_class=PythonParser, globals=globals())
        )


install_compiled_feed()
