"""Request-parser back-end on httptools (llhttp): the fast C path.

llhttp already enforces RFC 9112 framing (Content-Length with Transfer-Encoding,
duplicate or invalid Content-Length, invalid chunk sizes, bad tokens); this adapter
adds the size limits llhttp lacks and turns its events into the sink's calls.
"""

from __future__ import annotations

import httptools

from .parser import Limits, ParseError, RequestSink, check_version, decode_method

_HttpParserCallbackError = httptools.HttpParserCallbackError
_HttpParserError = httptools.HttpParserError
_HttpParserUpgrade = httptools.HttpParserUpgrade


class HttptoolsParser:
    __slots__ = (
        "sink",
        "limits",
        "parser",
        "url",
        "headers",
        "host",
        "in_head",
        "head_bytes",
        "_on_body",
    )

    def __init__(self, sink: RequestSink, limits: Limits) -> None:
        self.sink = sink
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host = False
        self.in_head = False
        self.head_bytes = 0
        self._on_body = sink.on_body

    def feed(self, data: bytes) -> None:
        if self.in_head:
            # A head arriving in pieces: bound what llhttp may buffer for it.
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.head:
                raise ParseError(431, "request header fields too large")
        try:
            self.parser.feed_data(data)
        except _HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ParseError):
                raise cause from None
            raise
        except _HttpParserUpgrade as exc:
            # Upgrade and CONNECT stop llhttp after the head; without a protocol to
            # switch to, the request was served as plain HTTP: parse on afresh.
            offset = exc.args[0] if exc.args else len(data)
            self.parser = httptools.HttpRequestParser(self)
            rest = data[offset:]
            if rest:
                self.feed(rest)
        except _HttpParserError as exc:
            raise ParseError(400, str(exc) or "malformed request") from None

    # llhttp callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.host = False
        self.in_head = True
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        url = self.url + url if self.url else url
        if len(url) > self.limits.request_line:
            raise ParseError(414, "request target too long")
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a trailer field: not passed on
        headers = self.headers
        if len(headers) >= self.limits.fields:
            raise ParseError(431, "too many request header fields")
        if len(name) + len(value) > self.limits.field_size:
            raise ParseError(431, "request header field too large")
        name = name.lower()
        if name == b"host":
            self.host = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        http_version = parser.get_http_version()
        check_version(http_version)
        if http_version == "1.1" and not self.host:
            raise ParseError(400, "missing Host header")
        self.sink.on_request(
            decode_method(parser.get_method()),
            self.url,
            http_version,
            self.headers,
            parser.should_keep_alive(),
        )

    def on_body(self, body: bytes) -> None:
        self._on_body(body)

    def on_message_complete(self) -> None:
        self.sink.on_request_end()
