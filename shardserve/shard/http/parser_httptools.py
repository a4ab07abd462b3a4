"""Request-parser back-end on httptools (llhttp): the fast C path.

llhttp already enforces much of RFC 9112 framing (Content-Length with
Transfer-Encoding, duplicate or invalid Content-Length, invalid chunk sizes, bad
tokens, obs-fold); this adapter adds the size limits llhttp lacks, the framing and
routing checks shared by every back-end (``framing.py``: the Host value, one Host,
Transfer-Encoding, CONNECT's target), and turns llhttp's events into the sink's calls.
The Host checks ride on ``on_header``, which compares each name with "host" anyway;
the others run once per head, in ``on_headers_complete``.

The callbacks here are the references: where ``_conn.c`` is built, its ParserTwins
take their places and run the common case in C (``install_compiled_callbacks``).
"""

from __future__ import annotations

import httptools

from . import compiled
from .framing import check_connect_target, check_host, check_transfer_encoding
from .parser import INTERNED_METHODS, Limits, ParseError, RequestSink, check_version, decode_method

_HttpParserCallbackError = httptools.HttpParserCallbackError
_HttpParserError = httptools.HttpParserError
# llhttp's error for HTTP/2's connection preface ("PRI * HTTP/2.0").
_H2_PREFACE = "Pause on PRI/Upgrade"
_HttpParserUpgrade = httptools.HttpParserUpgrade
# What feed_data raises when llhttp stops (feed_failed says what each means).
_LLHTTP_STOPPED = (_HttpParserError, _HttpParserUpgrade)


class HttptoolsParser:
    __slots__ = (
        "sink",
        "limits",
        "field_size",
        "parser",
        "url",
        "headers",
        "host",
        "last_host",
        "transfer_encoding",
        "in_head",
        "in_message",
        "head_bytes",
        "chunk",
        "_on_request_end",
        # llhttp calls this directly: the sink's own method, no hop through here.
        "on_body",
    )

    def __init__(self, sink: RequestSink, limits: Limits) -> None:
        self.sink = sink
        self.limits = limits
        self.field_size = limits.field_size
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host = False  # the head being parsed has a Host field
        self.last_host = b""  # the last Host value validated on this connection
        self.transfer_encoding = None  # its Transfer-Encoding fields, joined with ","
        self.in_head = False
        self.in_message = False  # a head is complete, its body not yet
        self.head_bytes = 0
        self.chunk = None
        self._on_request_end = sink.on_request_end
        self.on_body = sink.on_body
        self.parser = httptools.HttpRequestParser(self)

    def release(self) -> None:
        """The connection is gone: break llhttp's references back to this object."""
        self.parser = None

    def feed(self, data: bytes) -> None:
        if self.in_head:
            # A head arriving in pieces: bound what llhttp may buffer for it.  What
            # arrived before this piece counts: this one may end the head and carry
            # the next request, and a target too long is 414 first (as elsewhere).
            if self.head_bytes > self.limits.head:
                raise ParseError(431, "request header fields too large")
            self.head_bytes += len(data)
            self.chunk = None
        else:
            # Unless a body is still arriving, this chunk starts with a request line.
            self.chunk = None if self.in_message else data
        try:
            self.parser.feed_data(data)
            return
        except _LLHTTP_STOPPED as exc:
            stopped = exc
        # (Not inside the except clause: an error raised in feed_failed would carry
        # the upgrade as its context, and a ParseError in the rest would escape
        # unrecognised.)
        try:
            self.feed_failed(data, stopped)
        finally:
            del stopped  # (no cycle through this frame's traceback)

    def feed_failed(self, data: bytes, exc: Exception) -> None:
        """llhttp stopped on ``data``: a callback raised, the request is malformed, or it
        asked to switch protocols (_conn.c's feed twin calls this too)."""
        if isinstance(exc, _HttpParserCallbackError):
            cause = exc.__context__
            if isinstance(cause, ParseError):
                raise cause from None
            raise exc
        if isinstance(exc, _HttpParserUpgrade):
            offset = exc.args[0] if exc.args else len(data)
        elif str(exc) == _H2_PREFACE:  # (HTTP/2 off, or not in cleartext: as elsewhere)
            raise ParseError(505, "HTTP/2 is not served here") from None
        else:
            raise ParseError(400, str(exc) or "malformed request") from None
        # Upgrade and CONNECT stop llhttp after the head.  The sink switches protocols
        # (WebSocket) or the request is served as plain HTTP and parsing goes on afresh.
        rest = data[offset:]
        if self.sink.on_upgrade(rest):
            return
        self.parser = httptools.HttpRequestParser(self)
        self.in_head = self.in_message = False
        if rest:
            self.feed(rest)

    # llhttp callbacks ---------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if self.in_head:  # the target arrived in pieces
            url = self.url + url
        else:
            self.in_head = True
            self.head_bytes = 0
        if len(url) > self.limits.request_line:
            raise ParseError(414, "request target too long")
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > self.field_size or not self.in_head:
            if not self.in_head:
                return  # a trailer field: not passed on
            raise ParseError(431, "request header field too large")
        name = name.lower()
        # llhttp drops the whitespace before a value but keeps what follows it.
        value = value.rstrip(b" \t")
        if name == b"host":
            if self.host:
                raise ParseError(400, "more than one Host header")
            self.host = True
            if value != self.last_host:
                check_host(value)
                self.last_host = value
        elif name == b"transfer-encoding":
            # llhttp frames "gzip, chunked", or chunked on HTTP/1.0, as plain chunked.
            te = self.transfer_encoding
            self.transfer_encoding = value if te is None else te + b"," + value
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers = self.headers
        if len(headers) > self.limits.fields:
            raise ParseError(431, "too many request header fields")
        parser = self.parser
        method = parser.get_method()
        url = self.url
        chunk = self.chunk
        http_version = None
        if chunk is not None:
            # The first head of a chunk that began with it: the request line llhttp just
            # parsed is at its start, so read the version there (get_http_version() costs
            # a str.format per request).  Leading empty lines, which llhttp skips, only
            # shift the bytes so that neither pattern matches.
            self.chunk = None
            end = len(method) + len(url) + 1
            if chunk.startswith(b" HTTP/1.1\r\n", end):
                http_version = "1.1"
            elif chunk.startswith(b" HTTP/1.0\r\n", end):
                http_version = "1.0"
        if http_version is None:
            http_version = parser.get_http_version()
        if http_version != "1.1":
            check_version(http_version)
        elif not self.host:
            raise ParseError(400, "missing Host header")
        if method == b"CONNECT":
            check_connect_target(url)
        te = self.transfer_encoding
        if te is not None:
            self.transfer_encoding = None
            # (llhttp itself refuses Transfer-Encoding with Content-Length.)
            check_transfer_encoding(http_version, te)
        self.url = b""
        self.headers = []
        self.host = False
        self.in_head = False
        self.in_message = True
        self.sink.on_request(
            INTERNED_METHODS.get(method) or decode_method(method),
            url,
            http_version,
            headers,
            parser.should_keep_alive(),
        )

    def on_message_complete(self) -> None:
        self.in_message = False
        self._on_request_end()


compiled.keep_references(
    HttptoolsParser, ("feed", "on_url", "on_header", "on_headers_complete", "on_message_complete")
)


def install_compiled_callbacks() -> None:
    """Put _conn.c's twins in place of feed and the llhttp callbacks, where it is built."""
    module = compiled.load("_conn")
    if module is not None:
        twins = module.ParserTwins(
            parser_class=HttptoolsParser, globals=globals(), interned_methods=INTERNED_METHODS
        )
        compiled.install(HttptoolsParser, twins)


install_compiled_callbacks()
