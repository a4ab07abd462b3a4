"""One HTTP/2 stream, as its ``RequestCycle`` sees it, and the HTTP/2 framing of a
response.

``H2Stream`` has the interface a ``RequestCycle`` asks of its ``conn`` (the same as
``HttpConnection``'s): request body arriving and its end, read and write flow
control, completion.  Body is acknowledged to the client (WINDOW_UPDATE) only as the
app takes it, so a slow app holds at most one stream window per stream.
``H2Exchange`` is the ``RequestCycle`` with HTTP/2 framing: headers as a list of
pairs, no chunking or connection headers, trailers (ASGI ``http.response.trailers``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..connection import DrainWaiter
from ..http.cycle import BODY_ENDED, COMPLETE, HEAD_PENDING, STREAMING, RequestCycle
from ..http.response import (
    CONTENT_LENGTH,
    DATE,
    NO_BODY_STATUSES,
    SERVER,
    render_header,
    status_line,
)
from ..http.scope import account
from .request import CONNECTION_SPECIFIC

if TYPE_CHECKING:
    from .connection import H2Connection

STATUS_VALUES = {status: b"%d" % status for status in range(100, 600)}


class H2Stream(DrainWaiter):
    """The connection a RequestCycle sees, for one stream of an H2Connection."""

    __slots__ = (
        "connection",
        "stream_id",
        "state",
        "counters",
        "loop",
        "exchange",
        "closed",  # reset, or the connection is gone: the app sees a disconnect
        "ended",  # END_STREAM (or a reset) sent: nothing more goes out
        "read_paused",  # body received that the app has not taken (not yet acknowledged)
        "unacked",
        "received",  # request body bytes, counted only with --limit-request-body
        "pending",  # response body the client's window has not let out yet
        "pending_end",
        "drain_waiter",
        "body_since",  # when the app began waiting for body (--timeout-request-body)
        "blocked_since",  # when ``pending`` began waiting for a window (--timeout-send)
    )

    draining = False  # (HTTP/2 ends a connection with GOAWAY, not with a response header)

    def __init__(self, connection: H2Connection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.state = connection.state
        self.counters = connection.counters
        self.loop = connection.loop
        self.exchange: H2Exchange | None = None
        self.closed = False
        self.ended = False
        self.read_paused = False
        self.unacked = 0
        self.received = 0
        self.pending: bytes | None = None
        self.pending_end = False
        self.drain_waiter = None
        self.body_since: float | None = None
        self.blocked_since: float | None = None

    # What the RequestCycle asks -----------------------------------------------------

    @property
    def write_paused(self) -> bool:
        return self.pending is not None or self.connection.write_paused

    async def wait_writable(self) -> None:
        """Wait until this stream's window lets its pending body out and the
        connection's transport drains (or the stream is gone)."""
        while (self.pending is not None or self.connection.write_paused) and not self.closed:
            await super().wait_writable()

    def maybe_resume_reading(self) -> None:
        """The app took the body received so far: open the client's windows by as much."""
        unacked = self.unacked
        self.read_paused = False
        if unacked:
            self.unacked = 0
            self.connection.acknowledge(self.stream_id, unacked)

    def wait_for_body(self) -> None:
        self.body_since = self.state.now

    def response_done(self, exchange: RequestCycle) -> None:
        account(self.state, exchange)
        self.counters.h2_requests += 1
        self.connection.response_done(self)

    def close_when_idle(self) -> None:
        """(The app failed after its response: other streams are not its business.)"""

    # What the connection tells it --------------------------------------------------------

    def on_body(self, data: bytes, flow_controlled: int) -> None:
        exchange = self.exchange
        self.unacked += flow_controlled
        if exchange.state == COMPLETE:
            self.maybe_resume_reading()  # answered already: nobody reads this
            return
        self.read_paused = True
        exchange.body = exchange.body + data if exchange.body else data
        if exchange.waiter is not None:
            self.body_since = None
            exchange.wake()

    def on_end(self) -> None:
        exchange = self.exchange
        exchange.request = BODY_ENDED
        if exchange.waiter is not None:
            self.body_since = None
            exchange.wake()

    def on_reset(self) -> None:
        """The client reset the stream, or the connection is gone."""
        self.closed = True
        self.ended = True
        self.pending = None
        self.body_since = self.blocked_since = None
        if self.exchange is not None:
            self.exchange.wake()
        self.wake_writer()


class H2Exchange(RequestCycle):
    """A RequestCycle whose response goes out as HTTP/2 frames on its stream."""

    __slots__ = ("trailers", "body_done", "trailer_headers")

    conn: H2Stream

    def _start(self, message: dict) -> None:
        status = message["status"]
        value = STATUS_VALUES.get(status) if type(status) is int else None
        if value is None:
            status_line(status)  # (raises for what is not a status)
            value = b"%d" % int(status)
        defaults = self.conn.state.h2_default_headers
        app_headers = []
        content_length = None
        for header in message.get("headers", ()):
            try:
                pair, kind, argument = _h2_rendered_get(header) or h2_header(header)
            except TypeError:  # unhashable, e.g. a [name, value] list
                pair, kind, argument = h2_header(header)
            if pair is not None:
                app_headers.append(pair)
            if kind:
                if kind == CONTENT_LENGTH:
                    content_length = argument
                elif kind in (SERVER, DATE):  # the app's own replaces the default
                    dropped = b"server" if kind == SERVER else b"date"
                    defaults = [pair for pair in defaults if pair[0] != dropped]
        no_body = status in NO_BODY_STATUSES or self.scope["method"] == "HEAD"
        self.no_body = no_body
        self.remaining = None if no_body else content_length
        self.trailers = bool(message.get("trailers", False))
        self.body_done = False
        self.trailer_headers = None
        self.status = status
        self.head = [(b":status", value), *defaults, *app_headers]
        self.state = HEAD_PENDING

    def _write_body(self, body: bytes, more_body: bool) -> None:
        if self.no_body:
            body = b""
        elif self.remaining is not None:
            remaining = self.remaining - len(body)
            if remaining < 0:
                raise RuntimeError("Response content longer than Content-Length")
            self.remaining = remaining
        # The stream ends with the last body unless trailers follow, or the body fell
        # short of its Content-Length (then the stream is reset instead).
        end = not more_body and not self.trailers and not self.remaining
        stream = self.conn
        if self.state == HEAD_PENDING:
            self.state = STREAMING
            head = self.head
            self.head = None
            stream.connection.send_head(stream, head, end and not body)
            if body:
                stream.connection.send_data(stream, body, end)
        elif body or end:
            stream.connection.send_data(stream, body, end)
        if not more_body:
            if self.trailers:
                self.body_done = True
            else:
                self._complete()

    def _send_error(self, status: int) -> None:
        self.conn.connection.send_canned(self.conn, status)

    def _trailers_due(self) -> bool:
        return self.trailers and self.body_done and self.state == STREAMING

    def _write_trailers(self, headers, more_trailers: bool) -> None:
        collected = self.trailer_headers or []
        for header in headers:
            pair = h2_header(header)[0]
            if pair is not None:
                collected.append(pair)
        if more_trailers:
            self.trailer_headers = collected
            return
        self.trailer_headers = None
        if self.remaining:
            self._complete()  # (raises: shorter than Content-Length, and the stream resets)
        stream = self.conn
        stream.connection.send_head(stream, collected, True)
        self._complete()


# Checked and lower-cased response headers, by the app's (name, value) pair, as
# response.py renders HTTP/1.1's: (pair or None to drop it, kind, argument).
_h2_rendered: dict[tuple[bytes, bytes], tuple[tuple[bytes, bytes] | None, int, object]] = {}
_h2_rendered_get = _h2_rendered.get
_RENDERED_MAX = 1024


def h2_header(header) -> tuple[tuple[bytes, bytes] | None, int, object]:
    """Check one (name, value) response header (as HTTP/1.1 does) and give its HTTP/2
    form: the name lower-cased; connection-specific headers dropped (None)."""
    line, kind, argument = render_header(header)
    name, _, value = line[:-2].partition(b": ")
    name = name.lower()
    pair = None if name in CONNECTION_SPECIFIC else (name, value)
    entry = (pair, kind, argument)
    if type(header) is tuple and len(value) <= 256:
        if len(_h2_rendered) >= _RENDERED_MAX:
            _h2_rendered.clear()
        _h2_rendered[header] = entry
    return entry
