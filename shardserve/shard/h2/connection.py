"""One HTTP/2 connection: h2 fed with what arrives, its events turned into streams,
and every limit a hostile client could push against enforced here.

Each stream runs an ``H2Exchange`` (the ``RequestCycle`` every protocol shares).
What this class adds is HTTP/2's: windows both ways, stream limits, GOAWAY on drain,
and budgets (``guard.py``) that end an abusive connection with ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, H2Error

from ..connection import WriteFlow
from ..http.cycle import BODY_ENDED, COMPLETE, STREAMING
from ..http.eager import eager_starter
from ..http.parser import INTERNED_METHODS, ParseError
from ..http.scope import check_declared_length, is_trusted, request_scope, scope_template
from .ending import ConnectionEnding
from .guard import CONTROL_CAPACITY, CONTROL_RATE, RESET_CAPACITY, RESET_RATE, Budget
from .output import StreamOutput
from .request import StreamError, split_request
from .session import header_block_pending, initiate, new_h2
from .stream import STATUS_VALUES, H2Exchange, H2Stream

if TYPE_CHECKING:
    from ..state import ShardState
    from .support import Http2

logger = logging.getLogger("shardserve.error")

TRAILERS_EXTENSION = {"http.response.trailers": {}}
_INTERNED = {name.encode("ascii"): name for name in INTERNED_METHODS.values()}


class H2Connection(StreamOutput, ConnectionEnding, WriteFlow, asyncio.Protocol):
    """One connection speaking HTTP/2: a ``Connection`` of its shard."""

    __slots__ = (
        "state",
        "counters",
        "loop",
        "settings",
        "h2",
        "transport",
        "scheme",
        "scope_template",
        "trusted",
        "streams",
        "blocked",
        "starting",
        "closed",
        "closed_at",
        "draining",
        "drain_since",
        "refusing",
        "read_paused",
        "write_paused",
        "drain_waiter",
        "feeding",
        "idle_since",
        "write_blocked_since",
        "resets",
        "control",
        "sent_since_update",
        "unflushed",
        "header_block_since",
        "start",
        "close_starter",
    )

    def __init__(self, state: ShardState, settings: Http2, scheme: str) -> None:
        self.state = state
        self.counters = state.counters
        self.loop = state.loop
        self.settings = settings
        self.scheme = scheme
        self.h2 = new_h2(settings)
        self.transport = None
        self.streams: dict[int, H2Stream] = {}
        self.blocked: dict[int, H2Stream] = {}  # streams whose body waits for a window
        self.starting: list[H2Exchange] = []  # parsed, started once the data is handled
        self.closed = False
        self.closed_at = 0.0
        self.draining = False
        self.drain_since = 0.0
        self.refusing = False  # the GOAWAY is out: new streams are refused
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter = None
        self.feeding = False
        self.idle_since = state.now
        self.write_blocked_since: float | None = None
        self.resets = Budget(RESET_CAPACITY, RESET_RATE, state.now)
        self.control = Budget(CONTROL_CAPACITY, CONTROL_RATE, state.now)
        self.sent_since_update = False
        self.unflushed = 0  # body bytes queued in h2 since the last flush
        self.header_block_since: float | None = None
        self.start, self.close_starter = eager_starter(self.loop)

    # asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        state = self.state
        state.connections.add(self)
        self.counters.h2_connections += 1
        self.scope_template = scope_template(state, transport, self.scheme, "2")
        self.scope_template["extensions"] = TRAILERS_EXTENSION
        self.trusted = is_trusted(state, self.scope_template)
        initiate(self.h2, self.settings)
        self.flush()
        if state.draining:
            self.drain(close_idle=True)

    def data_received(self, data: bytes) -> None:
        self.counters.bytes_in += len(data)
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """What arrived, counted already (also the preface and what came with it,
        from ``HttpConnection.switch_to_http2``)."""
        self.feeding = True
        try:
            events = self.h2.receive_data(data)
        except DenialOfServiceError as exc:  # (h2 has queued its GOAWAY)
            self._fail("h2_floods", exc)
            return
        except H2Error as exc:
            self._fail("h2_protocol", exc)
            return
        try:
            for event in events:
                handler = _HANDLERS.get(type(event))
                if handler is not None:
                    handler(self, event)
                elif not self.control.spend(self.state.now):
                    self.calm("control frames")
                if self.closed:
                    return
            header_block_pending(self)
            # The apps start once every frame is handled (their requests are then
            # complete as far as this packet goes), and what they answer at once
            # leaves in one write.
            starting = self.starting
            while starting and not self.closed:
                exchange = starting.pop(0)
                exchange.task = self.start(exchange.run())
        except H2Error as exc:
            self._fail("h2_protocol", exc)
            return
        finally:
            self.feeding = False
        self.flush()

    def eof_received(self) -> bool | None:
        return None  # (close: a client that half-closes has nothing more to ask)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        for stream in tuple(self.streams.values()):
            stream.on_reset()
        self.blocked.clear()
        self.starting.clear()
        self.close_starter()
        self.wake_writer()

    # The transport's write flow (WriteFlow): every stream's send waits with it.

    def writing_paused(self) -> None:
        # Nothing is read while the client does not read: replies to its PINGs and
        # SETTINGS cannot pile up.
        self.write_blocked_since = self.state.now
        if not self.closed and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def writing_resumed(self) -> None:
        self.write_blocked_since = None
        if not self.closed and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        for stream in tuple(self.streams.values()):
            stream.wake_writer()

    # Events ----------------------------------------------------------------------------

    def _request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        state = self.state
        settings = self.settings
        if self.refusing:
            # Opened after our GOAWAY: ignored (RFC 9113 6.8; the client knows from the
            # GOAWAY that it was not processed), from the reset budget.
            if not self.resets.spend(state.now):
                self.calm("streams after GOAWAY")
            return
        if len(self.streams) >= settings.max_concurrent_streams:
            self.counters.h2_refused += 1
            self._refuse(stream_id)
            return
        try:
            method, target, headers = split_request(event.headers, _INTERNED)
        except StreamError as exc:
            logger.debug("Malformed HTTP/2 request: %s", exc)
            self.counters.h2_protocol += 1
            self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        stream = H2Stream(self, stream_id)
        raw_path, _, query = target.partition(b"?")
        status = 0
        limit = state.limit_concurrency
        if method == "CONNECT":
            status = 501
        elif limit is not None and state.active_requests >= limit:
            status = 503
            self.counters.overloaded += 1
        elif raw_path[:1] != b"/" and not (raw_path == b"*" and method == "OPTIONS"):
            status = 400
        if not status:
            try:
                if state.limit_request_body is not None:
                    check_declared_length(headers, state.limit_request_body)
                scope = request_scope(
                    self.scope_template, state, self.trusted, method, raw_path, query, "2", headers
                )
            except ParseError as exc:
                status = exc.status
        if status:
            if status != 503:
                self.counters.parse_errors += 1
            self.streams[stream_id] = stream
            self.send_canned(stream, status)
            if stream.pending is None:
                self._finish(stream)
            return
        exchange = H2Exchange(stream, scope, True)
        stream.exchange = exchange
        self.streams[stream_id] = stream
        if event.stream_ended is not None:
            exchange.request = BODY_ENDED
        self.starting.append(exchange)

    def _data(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        flow_controlled = event.flow_controlled_length
        if stream is None or stream.exchange is None or stream.exchange.state == COMPLETE:
            # Answered or refused already: give the connection's window back.
            if flow_controlled:
                self.acknowledge(event.stream_id, flow_controlled)
            return
        data = event.data
        if not data and event.stream_ended is None and not self.control.spend(self.state.now):
            self.calm("empty DATA frames")
            return
        limit = self.state.limit_request_body
        if limit is not None:
            stream.received += len(data)
            if stream.received > limit:
                self._body_too_large(stream)
                self.acknowledge(event.stream_id, flow_controlled)
                return
        stream.on_body(data, flow_controlled)

    def _ended(self, event: StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and stream.exchange is not None:
            stream.on_end()

    def _stream_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        exchange = stream.exchange
        unanswered = exchange is not None and exchange.state != COMPLETE
        if unanswered and not self.resets.spend(self.state.now):
            self.calm("streams reset before their answer (rapid reset)")
            return
        self.blocked.pop(event.stream_id, None)
        stream.on_reset()
        if exchange is None:
            self._finish(stream)

    def _window_updated(self, event: WindowUpdated) -> None:
        # A client's windows open as it reads what we send: free then.  Unasked-for
        # updates cost from the control budget.
        if self.sent_since_update:
            self.sent_since_update = False
        elif not self.control.spend(self.state.now):
            self.calm("WINDOW_UPDATE frames")
            return
        if self.blocked:
            self._send_blocked()

    def _settings_changed(self, event: RemoteSettingsChanged) -> None:
        if not self.control.spend(self.state.now):
            self.calm("SETTINGS frames")
            return
        if self.blocked:
            self._send_blocked()  # (a larger initial window opens every stream's)

    def _spend_control(self, event) -> None:
        if not self.control.spend(self.state.now):
            self.calm(f"{type(event).__name__} frames")

    def _terminated(self, event: ConnectionTerminated) -> None:
        """The client sent GOAWAY.  RFC 9113 lets the streams it names still be
        answered, but h2 sends nothing after a GOAWAY: they end as if reset (their
        apps get http.disconnect), and the connection closes."""
        self.draining = self.refusing = True
        for stream in tuple(self.streams.values()):
            stream.on_reset()
        self.close()

    # Streams ending --------------------------------------------------------------------

    def response_done(self, stream: H2Stream) -> None:
        """The exchange on ``stream`` is complete (or abandoned)."""
        if stream.pending is None:
            self._finish(stream)
        # else: _send_blocked finishes it once its body is out

    def _finish(self, stream: H2Stream) -> None:
        stream_id = stream.stream_id
        if self.streams.pop(stream_id, None) is None:
            return
        self.blocked.pop(stream_id, None)
        if not self.closed:
            if not stream.ended:
                # Abandoned mid-response (the app failed or fell short of its length).
                self._reset(stream_id, ErrorCodes.INTERNAL_ERROR)
            elif not stream.closed:
                h2_stream = self.h2.streams.get(stream_id)
                if h2_stream is not None and h2_stream.open:
                    # Answered before the request's body ended: no more of it, please.
                    self._reset(stream_id, ErrorCodes.NO_ERROR)
            if not self.feeding:
                self.flush()
        if not self.streams:
            self.idle_since = self.state.now
            if self.draining:
                self._goaway()

    def _refuse(self, stream_id: int) -> None:
        self._reset(stream_id, ErrorCodes.REFUSED_STREAM)

    def _reset(self, stream_id: int, code: int) -> None:
        """Reset a stream ourselves: from the same budget as the client's resets."""
        try:
            self.h2.reset_stream(stream_id, code)
        except H2Error:
            pass  # the client reset or closed it first (in the same packet, say)
        if code != ErrorCodes.NO_ERROR and not self.resets.spend(self.state.now):
            self.calm("streams refused or malformed")

    def _body_too_large(self, stream: H2Stream) -> None:
        """--limit-request-body: 413 if no response began, else a reset; either way
        the app gets http.disconnect."""
        exchange = stream.exchange
        self.counters.parse_errors += 1
        if exchange.state < STREAMING:
            self.send_canned(stream, 413)
            exchange.answered(413)
        else:
            self._reset(stream.stream_id, ErrorCodes.CANCEL)
            stream.on_reset()


_HANDLERS = {
    RequestReceived: H2Connection._request,
    DataReceived: H2Connection._data,
    StreamEnded: H2Connection._ended,
    StreamReset: H2Connection._stream_reset,
    WindowUpdated: H2Connection._window_updated,
    RemoteSettingsChanged: H2Connection._settings_changed,
    PingReceived: H2Connection._spend_control,
    PingAckReceived: H2Connection._spend_control,
    PriorityUpdated: H2Connection._spend_control,
    UnknownFrameReceived: H2Connection._spend_control,
    ConnectionTerminated: H2Connection._terminated,
}

__all__ = ["H2Connection", "STATUS_VALUES"]
