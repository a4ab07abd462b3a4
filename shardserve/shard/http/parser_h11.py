"""Request-parser back-end on h11: pure Python, the reference for correctness.

h11 is used only to parse requests; responses are written by the shared protocol.
Because h11 waits for our side of each exchange before parsing the next request,
each request gets a fresh ``h11.Connection`` fed with the bytes left over from the
previous one.
"""

from __future__ import annotations

import re

import h11

from .parser import (
    Limits,
    ParseError,
    RequestSink,
    check_framing,
    check_version,
    decode_method,
    keep_alive_requested,
)

_LISTED_LENGTH = re.compile(rb"\ncontent-length:[^\n]*,")
_Request = h11.Request
_Data = h11.Data
_EndOfMessage = h11.EndOfMessage
_NEED_DATA = h11.NEED_DATA
_PAUSED = h11.PAUSED


class H11Parser:
    __slots__ = ("sink", "limits", "conn", "head")

    def __init__(self, sink: RequestSink, limits: Limits) -> None:
        self.sink = sink
        self.limits = limits
        self.conn = self._new_connection()
        # The bytes of the request head being received: h11 merges repeated identical
        # Content-Length fields, which the other back-ends reject, so we look ourselves.
        self.head = b""

    def _new_connection(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.head)

    def feed(self, data: bytes) -> None:
        conn = self.conn
        if conn.their_state is h11.IDLE:
            self.head += data
        conn.receive_data(data)
        sink = self.sink
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ParseError(exc.error_status_hint, str(exc)) from None
            if event is _NEED_DATA:
                if conn.their_state is h11.IDLE:
                    self._check_request_line(conn.trailing_data[0])
                return
            event_type = type(event)
            if event_type is _Data:
                sink.on_body(event.data)
            elif event_type is _Request:
                self._on_request(event)
            elif event_type is _EndOfMessage:
                sink.on_request_end()
                leftover = conn.trailing_data[0]
                if conn.their_state is h11.MIGHT_SWITCH_PROTOCOL and sink.on_upgrade(leftover):
                    return
                conn = self.conn = self._new_connection()
                self.head = leftover
                if leftover:
                    conn.receive_data(leftover)
            elif event is _PAUSED:
                return
            else:  # ConnectionClosed
                return

    def _check_request_line(self, pending: bytes) -> None:
        if b"\n" not in pending and len(pending) > self.limits.request_line:
            raise ParseError(414, "request target too long")

    def _on_request(self, event: h11.Request) -> None:
        limits = self.limits
        target = event.target
        if len(target) > limits.request_line:
            raise ParseError(414, "request target too long")
        headers = list(event.headers)
        if len(headers) > limits.fields:
            raise ParseError(431, "too many request header fields")
        for name, value in headers:
            if len(name) + len(value) > limits.field_size:
                raise ParseError(431, "request header field too large")
        http_version = event.http_version.decode("ascii")
        check_version(http_version)
        check_framing(http_version, headers)
        head = self.head.partition(b"\r\n\r\n")[0].lower()
        self.head = b""
        if head.count(b"\ncontent-length:") > 1 or _LISTED_LENGTH.search(head):
            # h11 merges identical Content-Length lines and list values ("5, 5").
            raise ParseError(400, "duplicate Content-Length")
        self.sink.on_request(
            decode_method(event.method),
            target,
            http_version,
            headers,
            keep_alive_requested(http_version, headers),
        )
