"""What every request-parser back-end shares: its contract, its errors and its limits.

A back-end is a small push parser.  The connection protocol feeds it bytes with
``feed(data)``; it calls back into the protocol (the *sink*):

- ``sink.on_request(method, target, http_version, headers, keep_alive)`` once a
  request head is complete (``headers`` is a list of (lower-cased name, value) bytes
  pairs, ``method`` and ``http_version`` are str, ``target`` is the raw bytes);
- ``sink.on_body(chunk)`` for each piece of the request body;
- ``sink.on_request_end()`` when the request is complete;
- ``sink.on_upgrade(rest) -> bool`` after a request that asks to switch protocols
  (Upgrade, CONNECT), with the bytes that followed it: True means the sink took
  the connection over and the parser stops; False, parse on as HTTP.

Malformed input raises ``ParseError`` carrying the status to answer with; nothing
else escapes ``feed``.  Back-ends differ only in how they parse, never in what the
protocol does with the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ParseError(Exception):
    """Input that is not acceptable HTTP/1.1: answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# A request line may exceed --limit-request-line (which bounds the target) by this
# much: method, spaces and version.
REQUEST_LINE_EXTRA = 16


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on a request head, so that no client can make a shard buffer without end."""

    request_line: int = 8190
    fields: int = 100
    field_size: int = 8190

    @property
    def head(self) -> int:
        """Most bytes a complete head may take."""
        return self.request_line + REQUEST_LINE_EXTRA + self.fields * (self.field_size + 4)


class RequestSink(Protocol):
    def on_request(
        self,
        method: str,
        target: bytes,
        http_version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None: ...

    def on_body(self, chunk: bytes) -> None: ...

    def on_request_end(self) -> None: ...

    def on_upgrade(self, rest: bytes) -> bool: ...


class RequestParser(Protocol):
    def __init__(self, sink: RequestSink, limits: Limits) -> None: ...

    def feed(self, data: bytes) -> None: ...


# Interned method names: the common ones are looked up, not decoded, per request.
INTERNED_METHODS = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
}


def decode_method(raw: bytes) -> str:
    method = INTERNED_METHODS.get(raw)
    return method if method is not None else raw.decode("ascii")


def keep_alive_requested(http_version: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """HTTP/1.1 keeps the connection unless asked to close; HTTP/1.0 only if asked."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    if http_version == "1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens and b"close" not in tokens


def check_version(http_version: str) -> None:
    """HTTP/1.0 and 1.1 only: another major version is 505, another 1.x malformed (400)."""
    if http_version != "1.1" and http_version != "1.0":
        if http_version.startswith("1."):
            raise ParseError(400, f"invalid HTTP version {http_version}")
        raise ParseError(505, f"HTTP/{http_version} is not supported")


BACKENDS = ("httptools", "python", "h11")


def resolve_backend(name: str) -> str:
    """Turn ``--http`` into a back-end that can load here: httptools where its C
    extension loads, else shardserve's own pure-Python parser."""
    if name != "auto":
        return name
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "python"
    return "httptools"


def parser_class(name: str) -> type[RequestParser]:
    backend = resolve_backend(name)
    if backend == "httptools":
        from .parser_httptools import HttptoolsParser

        return HttptoolsParser
    if backend == "python":
        from .parser_python import PythonParser

        return PythonParser
    if backend == "h11":
        from .parser_h11 import H11Parser

        return H11Parser
    raise ValueError(f"unknown HTTP back-end {name!r}")
