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
from hyperframe.frame import GoAwayFrame

from ..connection import WriteFlow
from ..http.cycle import BODY_ENDED, COMPLETE, STREAMING
from ..http.eager import eager_starter
from ..http.parser import INTERNED_METHODS, ParseError
from ..http.scope import is_trusted, request_scope, scope_template
from .guard import CONTROL_CAPACITY, CONTROL_RATE, RESET_CAPACITY, RESET_RATE, Budget
from .request import StreamError, split_request
from .stream import STATUS_VALUES, H2Exchange, H2Stream

if TYPE_CHECKING:
    from ..state import ShardState
    from .support import Http2

logger = logging.getLogger("shardserve.error")

TRAILERS_EXTENSION = {"http.response.trailers": {}}
# A draining connection sends its GOAWAY (NO_ERROR, the last stream taken) when no
# stream is being answered, or after DRAIN_GOAWAY_SECONDS if it never is idle.  Not
# at once: clients built on h2 (httpx) fail every response still in flight once
# they have a GOAWAY, and RFC 9113's two-step GOAWAY (a first one naming stream
# 2^31-1, then a PING) fails them the same way.  After the GOAWAY the connection
# lingers until the client closes it, or for LINGER_SECONDS (closing at once could
# reset it before the client has read the GOAWAY); new streams are refused.
DRAIN_GOAWAY_SECONDS = 2.0
LINGER_SECONDS = 1.0
_INTERNED = {name.encode("ascii"): name for name in INTERNED_METHODS.values()}


class H2Connection(WriteFlow, asyncio.Protocol):
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
        self.h2 = settings.new_connection()
        self.transport = None
        self.streams: dict[int, H2Stream] = {}
        self.blocked: dict[int, H2Stream] = {}  # streams whose body waits for a window
        self.starting: list[H2Exchange] = []  # parsed, started once the data is handled
        self.closed = False
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
        self.settings.initiate(self.h2)
        self.flush()
        if state.draining:
            self.drain(close_idle=True)

    def data_received(self, data: bytes) -> None:
        self.counters.bytes_in += len(data)
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
            self.settings.header_block_pending(self)
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
        else:
            body_limit = state.limit_request_body
            if body_limit is not None:
                for name, value in headers:
                    if name == b"content-length" and value.isdigit() and int(value) > body_limit:
                        status = 413
        if not status:
            try:
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
        """The client sent GOAWAY: finish what it asked, then close."""
        self.draining = self.refusing = True
        if not self.streams:
            self.close()

    # Sending ---------------------------------------------------------------------------

    def send_head(self, stream: H2Stream, headers: list, end: bool) -> None:
        if stream.ended:
            return
        self.h2.send_headers(stream.stream_id, headers, end_stream=end)
        if end:
            stream.ended = True
        if not self.feeding:
            self.flush()

    def send_data(self, stream: H2Stream, data: bytes, end: bool) -> None:
        """Send what the client's windows allow; hold the rest (the app's next send
        waits for it) until WINDOW_UPDATE lets it out."""
        if stream.ended:
            return
        if not self._send_window(stream, data, end):
            stream.blocked_since = self.state.now
            self.blocked[stream.stream_id] = stream
        if not self.feeding:
            self.flush()

    def _send_window(self, stream: H2Stream, data: bytes, end: bool) -> bool:
        """True if all of ``data`` went (and the end, if ``end``)."""
        h2 = self.h2
        stream_id = stream.stream_id
        size = len(data)
        sent = 0
        if size:
            self.sent_since_update = True
            frame_size = h2.max_outbound_frame_size
            while sent < size:
                window = min(h2.local_flow_control_window(stream_id), frame_size)
                if window <= 0:
                    stream.pending = data[sent:] if sent else data
                    stream.pending_end = end
                    return False
                chunk = data[sent : sent + window] if sent or window < size else data
                sent += len(chunk)
                h2.send_data(stream_id, chunk, end_stream=end and sent == size)
        elif end:
            h2.end_stream(stream_id)
        stream.pending = None
        if end:
            stream.ended = True
        return True

    def _send_blocked(self) -> None:
        for stream_id, stream in tuple(self.blocked.items()):
            data, end = stream.pending, stream.pending_end
            if data is None or self._send_window(stream, data, end):
                del self.blocked[stream_id]
                stream.blocked_since = None
                stream.wake_writer()
                exchange = stream.exchange
                if stream.ended and (exchange is None or exchange.state == COMPLETE):
                    self._finish(stream)

    def send_canned(self, stream: H2Stream, status: int) -> None:
        """The server's own answer on one stream (plain text, the reason phrase)."""
        headers, body = self.settings.canned(self.state, status)
        self.send_head(stream, headers, False)
        self.send_data(stream, body, True)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` bytes of body were consumed: let the client send as much again."""
        if self.closed:
            return
        self.h2.acknowledge_received_data(size, stream_id)
        if not self.feeding:
            self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)
            self.counters.bytes_out += len(data)

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
                    self.h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)
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
        self.h2.reset_stream(stream_id, code)
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

    # Ending the connection -------------------------------------------------------------

    def calm(self, what: str) -> None:
        """Too much of something: GOAWAY with ENHANCE_YOUR_CALM, then close."""
        if self.closed:
            return
        logger.warning("HTTP/2 client %s sent too many %s: closing", _peer(self), what)
        self.counters.h2_floods += 1
        self.h2.close_connection(
            error_code=ErrorCodes.ENHANCE_YOUR_CALM,
            last_stream_id=self.h2.highest_inbound_stream_id,
        )
        self.flush()
        self.close()

    def _fail(self, counter: str, exc: Exception) -> None:
        """h2 found the client in error and has queued its GOAWAY: send it, close."""
        self.feeding = False
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        logger.debug("HTTP/2 connection error: %s", exc)
        self.flush()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def check_timeouts(self, now: float) -> None:
        state = self.state
        if self.streams:
            limit = state.timeout_send
            if self.write_blocked_since is not None and now - self.write_blocked_since >= limit:
                self._timed_out("the client read nothing")
                return
            body_limit = state.timeout_request_body
            for stream in tuple(self.streams.values()):
                since = stream.blocked_since
                if since is not None and now - since >= limit:
                    self._timed_out("the client kept a window shut")
                    return
                since = stream.body_since
                if body_limit and since is not None and now - since >= body_limit:
                    self.counters.timeouts += 1
                    stream.body_since = None
                    self._reset(stream.stream_id, ErrorCodes.CANCEL)
                    self.flush()
                    stream.on_reset()  # (its app gets http.disconnect)
        elif now - self.idle_since >= state.timeout_keep_alive:
            self.drain(close_idle=True)
        if self.draining:
            if not self.refusing:
                if now - self.drain_since >= DRAIN_GOAWAY_SECONDS:
                    self._goaway()  # (never idle: the streams in flight still finish)
            elif not self.streams and now - self.drain_since >= LINGER_SECONDS:
                self.close()
        if self.closed:
            return
        if self.settings.header_block_pending(self):
            since = self.header_block_since
            if since is None:
                self.header_block_since = now
            elif now - since >= state.timeout_request_header:
                self.counters.timeouts += 1
                self.close()  # (a header block that does not end: CONTINUATION trickle)
        else:
            self.header_block_since = None

    def _timed_out(self, why: str) -> None:
        logger.debug("HTTP/2 connection closed: %s for --timeout-send", why)
        self.counters.timeouts += 1
        self.transport.abort()
        self.closed = True

    def drain(self, close_idle: bool) -> None:
        """End gracefully: the streams taken finish, the client opens new ones
        elsewhere.  GOAWAY goes once no stream is being answered (see
        DRAIN_GOAWAY_SECONDS); ``close_idle`` makes no difference."""
        if self.closed or self.draining:
            return
        self.draining = True
        self.drain_since = self.state.now
        if not self.streams:
            self._goaway()

    def _goaway(self) -> None:
        """Write a NO_ERROR GOAWAY naming the last stream taken, ourselves: h2's would
        end its state machine, and with it the streams still being answered."""
        if self.refusing or self.closed:
            return
        self.refusing = True
        self.drain_since = self.state.now  # (from now on: how long it lingers)
        self.flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id or 0
        frame.error_code = ErrorCodes.NO_ERROR
        data = frame.serialize()
        self.transport.write(data)
        self.counters.bytes_out += len(data)

    def abort(self) -> None:
        for stream in tuple(self.streams.values()):
            exchange = stream.exchange
            if exchange is not None and exchange.task is not None:
                exchange.task.cancel()
        self.closed = True
        self.transport.abort()


def _peer(conn: H2Connection) -> str:
    client = conn.scope_template["client"] if conn.transport is not None else None
    return f"{client[0]}:{client[1]}" if client else "?"


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
