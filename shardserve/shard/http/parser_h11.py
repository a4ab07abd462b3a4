"""Request-parser back-end on h11: pure Python, the reference for correctness.

h11 is used only to parse requests; responses are written by the shared protocol.
Because h11 waits for our side of each exchange before parsing the next request,
each request gets a fresh ``h11.Connection`` fed with the bytes left over from the
previous one.

h11 is laxer than the other back-ends where framing and routing are decided: it
unfolds obs-fold, accepts any Host value, frames HTTP/1.0 by Transfer-Encoding,
accepts any CONNECT target, and answers 501 to every Transfer-Encoding but chunked.
So each request also goes through ``framing.check_request`` (the checks every
back-end shares), and a 501 from h11 is re-decided by the same checks.
"""

from __future__ import annotations

import re

import h11

from .framing import check_request
from .parser import (
    REQUEST_LINE_EXTRA,
    Limits,
    ParseError,
    RequestSink,
    check_version,
    decode_method,
    keep_alive_requested,
)

_LISTED_LENGTH = re.compile(rb"\ncontent-length:[^\n]*,")
# Where h11 ends a head (it accepts bare LF line endings), and obs-fold within one.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_OBS_FOLD = re.compile(rb"\n[ \t]")
_LINE_END = re.compile(rb"\r?\n")
_Request = h11.Request
_Data = h11.Data
_EndOfMessage = h11.EndOfMessage
_NEED_DATA = h11.NEED_DATA
_PAUSED = h11.PAUSED


class H11Parser:
    __slots__ = ("sink", "limits", "conn", "head", "last_host")

    def __init__(self, sink: RequestSink, limits: Limits) -> None:
        self.sink = sink
        self.limits = limits
        self.conn = self._new_connection()
        # The bytes of the request head being received: h11 merges repeated identical
        # Content-Length fields and unfolds obs-fold, which the other back-ends reject,
        # so we look ourselves.
        self.head = b""
        self.last_host = b""  # the last Host value validated on this connection

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
                if exc.error_status_hint == 501:
                    # h11 refuses any Transfer-Encoding but "chunked" with 501, before
                    # its other checks: decide as the other back-ends do.
                    self._recheck_refused_head()
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
        # (+1: the last byte held may be the line's CR, not counted whole)
        if (
            b"\n" not in pending
            and len(pending) > self.limits.request_line + REQUEST_LINE_EXTRA + 1
        ):
            raise ParseError(414, "request line too long")

    def _raw_head(self) -> bytes:
        """The head of the request h11 just parsed, as received, up to its blank line.
        (h11 also ends a head at LF LF, which the other back-ends refuse; such a head
        may run on here, and the checks on it then refuse more, never less.)"""
        head = self.head
        self.head = b""
        return head.partition(b"\r\n\r\n")[0]

    def _on_request(self, event: h11.Request) -> None:
        target = event.target
        headers = list(event.headers)
        http_version = event.http_version.decode("ascii")
        method = decode_method(event.method)
        self._check(method, target, http_version, headers, self._raw_head())
        self.sink.on_request(
            method,
            target,
            http_version,
            headers,
            keep_alive_requested(http_version, headers),
        )

    def _check(
        self,
        method: str,
        target: bytes,
        http_version: str,
        headers: list[tuple[bytes, bytes]],
        head: bytes,
    ) -> None:
        """The limits, then what h11 lets through and the other back-ends do not."""
        limits = self.limits
        longest_line = limits.request_line + REQUEST_LINE_EXTRA
        if len(target) > limits.request_line or (
            len(head) > longest_line and len(head.partition(b"\r\n")[0]) > longest_line
        ):
            raise ParseError(414, "request line too long")
        if len(headers) > limits.fields:
            raise ParseError(431, "too many request header fields")
        for name, value in headers:
            if len(name) + len(value) > limits.field_size:
                raise ParseError(431, "request header field too large")
        check_version(http_version)
        if _OBS_FOLD.search(head):
            raise ParseError(400, "obs-fold in request head")  # h11 would unfold it
        head = head.lower()
        if head.count(b"\ncontent-length:") > 1 or _LISTED_LENGTH.search(head):
            # h11 merges identical Content-Length lines and list values ("5, 5").
            raise ParseError(400, "duplicate Content-Length")
        self.last_host = check_request(method, target, http_version, headers, self.last_host)

    def _recheck_refused_head(self) -> None:
        """h11 refused a head for its Transfer-Encoding (501) before building the
        request: split the head it had accepted up to there and check it as any
        other.  Raises the status every back-end answers; returns if that is 501."""
        head = self.head
        self.head = b""
        match = _HEAD_END.search(head)  # where h11 ended it, bare LF or not
        if match:
            head = head[: match.start()]
        lines = _LINE_END.split(head)
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            return
        method, target, version = parts
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip(b" \t")))
        http_version = version[5:].decode("ascii", "replace")
        self._check(decode_method(method), target, http_version, headers, head)
