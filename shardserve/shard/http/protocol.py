"""The HTTP/1.1 connection: one implementation for every parser back-end.

A parser back-end (see ``parser.py``) turns bytes into ``on_request`` / ``on_body`` /
``on_request_end`` calls on this object; this object builds the ASGI scope, runs one
``RequestCycle`` at a time (pipelined requests wait their turn), applies flow control
both ways and enforces keep-alive and header-read timeouts.

The per-request methods here (data_received, on_request, on_request_end,
response_done) are the references: where ``_conn.c`` is built, its twins take their
places and run the common case in C (``install_compiled_connection``, at the end).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from ..connection import WriteFlow
from ..ws.handshake import handshake_problem, is_websocket_upgrade, requested_subprotocols
from . import compiled
from .cycle import (
    BODY_ENDED,
    COMPLETE,
    READ_HIGH_WATER,
    STREAMING,
    RequestCycle,
    install_compiled_send,
)
from .eager import eager_starter
from .parser import ParseError
from .response import canned_response
from .scope import (
    account,
    check_declared_length,
    is_trusted,
    request_scope,
    scope_template,
    split_other_target,
)

if TYPE_CHECKING:
    from ..state import ShardState

logger = logging.getLogger("shardserve.error")

# Timer kinds: what the connection is waiting for, if anything is the client's turn.
NO_TIMER = 0
IDLE = 1  # between requests (keep-alive)
READING_HEAD = 2  # part of a request head has arrived
READING_BODY = 3  # the app waits for request body that has not come
LINGERING = 4  # answered and half-closed: discarding what the client still sends

# Pipelined requests a connection may queue before it stops reading.
MAX_PIPELINE = 16
# After a response that ends the connection while the client may still be sending
# (an early answer to an upload, a rejection), the connection reads and discards for
# up to this long and this much before it closes: closing with unread input resets
# the connection, and a client still sending could lose the answer to the reset.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024

# stdlib asyncio's socket transport reads with recv(256 KiB): CPython allocates that
# much per read and shrinks it.  Until glibc's dynamic mmap threshold has risen past
# it, each such read is an mmap/munmap pair (+13 us per read measured here); 64 KiB
# always comes from the heap.  Set once per connection; uvloop is unaffected.
_SelectorSocketTransport = getattr(asyncio.selector_events, "_SelectorSocketTransport", None)
ASYNCIO_READ_SIZE = 64 * 1024


class HttpConnection(WriteFlow, asyncio.Protocol):
    """One TCP connection speaking HTTP/1.1: a ``Connection`` of its shard."""

    __slots__ = (
        "state",
        "counters",
        "loop",
        "transport",
        "parser",
        "scheme",
        "trusted",
        "scope_template",
        "cycle",
        "parsing",
        "pipeline",
        "closed",
        "draining",
        "read_paused",
        "write_paused",
        "drain_waiter",
        "timer",
        "timer_since",
        "rejection",
        "body_limit",
        "body_received",
        "start",
        "close_starter",
        "ready",
        "feeding",
    )

    def __init__(self, state: ShardState, scheme: str = "http") -> None:
        self.state = state
        self.counters = state.counters
        self.loop = state.loop
        self.scheme = scheme
        self.transport = None
        self.parser = None
        self.cycle: RequestCycle | None = None  # the exchange being answered
        self.parsing: RequestCycle | None = None  # the request whose body is arriving
        self.pipeline: deque[RequestCycle] = deque()
        self.closed = False
        self.draining = False
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter = None
        self.timer = IDLE
        self.timer_since = state.now
        self.rejection = b""
        self.body_limit = state.limit_request_body  # None: no limit
        self.body_received = 0  # of the body being parsed, counted only with a limit
        self.start, self.close_starter = eager_starter(self.loop)
        self.ready: RequestCycle | None = None  # parsed, to be started once feeding ends
        self.feeding = False

    # asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if type(transport) is _SelectorSocketTransport:
            transport.max_size = ASYNCIO_READ_SIZE
        state = self.state
        http2 = state.http2
        if http2 is not None:  # (once per connection: which protocol it speaks)
            if self.scheme == "https":
                if http2.negotiated(transport):
                    self.counters.connections += 1
                    http2.take_over(state, transport, self.scheme)
                    return
                parser = state.parser_class(self, state.limits)
            else:
                parser = http2.sniffer(self, state.parser_class(self, state.limits))
        else:
            parser = state.parser_class(self, state.limits)
        self.parser = parser
        state.connections.add(self)
        self.counters.connections += 1
        self.scope_template = scope_template(state, transport, self.scheme, "1.1")
        self.trusted = is_trusted(state, self.scope_template)
        if state.draining:
            # Accepted just before the listener closed: answer it, then close.
            self.draining = True

    def data_received(self, data: bytes) -> None:
        self.counters.bytes_in += len(data)
        if self.timer == IDLE:
            self.timer = READING_HEAD
            self.timer_since = self.state.now
        self.feeding = True
        try:
            self.parser.feed(data)
        except ParseError as exc:
            self.reject(exc.status, exc.reason)
        # Start the app only now, with the whole packet parsed: a GET is complete,
        # so the app's first step usually runs straight through to its response.
        while self.ready is not None:
            cycle = self.ready
            self.ready = None
            cycle.task = self.start(cycle.run())
        self.feeding = False

    def eof_received(self) -> bool | None:
        # A client that half-closes after its request still gets the answer (not on TLS,
        # which cannot half-close); mid-request, or when idle, the connection ends.
        if self.closed or self.cycle is None or self.parsing is not None:
            return None
        if self.scheme == "https":
            return None
        self.draining = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.timer = NO_TIMER
        self.state.connections.discard(self)
        cycle = self.cycle
        if cycle is not None:
            cycle.wake()
        self.pipeline.clear()
        self.ready = None
        self.close_starter()
        self.wake_writer()
        # Nothing more arrives: drop the parser, so that the connection is freed as
        # soon as its last reference goes, not by a full garbage collection.
        release = getattr(self.parser, "release", None)
        self.parser = _Discard
        if release is not None:
            release()

    # (pause_writing, resume_writing and wait_writable: WriteFlow)

    # Parser callbacks ------------------------------------------------------------

    def on_request(
        self,
        method: str,
        target: bytes,
        http_version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        self.timer = NO_TIMER
        state = self.state
        limit = state.limit_concurrency
        if limit is not None and (len(state.connections) > limit or state.active_requests >= limit):
            raise ParseError(503, "concurrency limit reached")
        if self.body_limit is not None:
            check_declared_length(headers, self.body_limit)
            self.body_received = 0
        if target[0] == 47:  # b"/": origin-form, nearly always
            raw_path, _, query = target.partition(b"?")
        else:
            raw_path, query = split_other_target(method, target)
        scope = request_scope(
            self.scope_template, state, self.trusted, method, raw_path, query, http_version, headers
        )
        cycle = RequestCycle(self, scope, keep_alive)
        self.parsing = cycle
        if self.cycle is None:
            self.cycle = self.ready = cycle
        else:
            pipeline = self.pipeline
            pipeline.append(cycle)
            if len(pipeline) >= MAX_PIPELINE and not self.read_paused:
                self.pause_reading()

    def on_body(self, chunk: bytes) -> None:
        cycle = self.parsing
        if self.body_limit is not None:
            self.body_received += len(chunk)
            if self.body_received > self.body_limit:
                raise ParseError(413, "request body larger than --limit-request-body")
        if cycle.state == COMPLETE:
            return  # answered already (the connection is closing): nobody reads this
        body = cycle.body = cycle.body + chunk if cycle.body else chunk
        if cycle.waiter is not None:
            self.timer = NO_TIMER  # (READING_BODY: the body moves)
            cycle.wake()
        if len(body) > READ_HIGH_WATER and not self.read_paused:
            self.pause_reading()

    def on_request_end(self) -> None:
        cycle = self.parsing
        self.parsing = None
        cycle.request = BODY_ENDED
        if cycle.waiter is not None:
            self.timer = NO_TIMER
            cycle.wake()
        if self.cycle is None:
            self.timer = IDLE
            self.timer_since = self.state.now

    # Flow control ------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def maybe_resume_reading(self) -> None:
        """Read again once the app has taken the buffered body and the queue is short."""
        if self.closed or self.rejection:
            return
        parsing = self.parsing
        if parsing is not None and len(parsing.body) > READ_HIGH_WATER:
            return
        if len(self.pipeline) >= MAX_PIPELINE:
            return
        self.read_paused = False
        self.transport.resume_reading()

    # Response completion ---------------------------------------------------------------

    def response_done(self, cycle: RequestCycle) -> None:
        """Called once per exchange, when its response is complete (or abandoned)."""
        account(self.state, cycle)
        self.after_response(cycle)

    def after_response(self, cycle: RequestCycle) -> None:
        """Close, start the next pipelined request, or wait for the next one (counted
        first: a --limit-max-requests reached may have started draining)."""
        if self.cycle is not cycle:
            return
        if not cycle.keep_alive or self.draining or self.closed:
            if self.parsing is not None:
                self.close_lingering()  # answered before the request body ended
            else:
                self.close()
            return
        self.cycle = None
        if self.pipeline:
            cycle = self.cycle = self.pipeline.popleft()
            if self.feeding:
                self.ready = cycle  # data_received starts it when this call returns
            else:
                cycle.task = self.loop.create_task(cycle.run())
        elif self.rejection:
            self.transport.write(self.rejection)
            self.counters.bytes_out += len(self.rejection)
            self.close_lingering()
            return
        elif self.parsing is None:
            self.timer = IDLE
            self.timer_since = self.state.now
        if self.read_paused:
            self.maybe_resume_reading()

    # Errors, timeouts and shutdown -----------------------------------------------------

    def reject(self, status: int, reason: str) -> None:
        """Answer malformed input with ``status`` and close, after any responses owed."""
        if self.rejection or self.closed:
            return
        state = self.state
        counters = self.counters
        if status == 503:
            counters.overloaded += 1
        elif status != 408:  # (timeouts are counted where they are found)
            counters.parse_errors += 1
        logger.debug("Invalid HTTP request (%d): %s", status, reason)
        self.rejection = state.canned(status)
        self.parser = _Discard
        self.pause_reading()
        cycle = self.cycle
        parsing = self.parsing
        self.parsing = None
        if parsing is not None and self.ready is parsing:
            # Rejected before its app was started (a back-end that reported the head
            # before it found the framing bad): never start it.
            self.ready = None
            if cycle is parsing:
                self.cycle = cycle = None
        if cycle is None:  # nothing owed first
            self.transport.write(self.rejection)
            counters.bytes_out += len(self.rejection)
            self.close_lingering()
        elif cycle is parsing:
            # The running request itself is malformed (or too large): its app gets
            # http.disconnect, and the client the rejection unless a response began.
            if cycle.state < STREAMING:
                self.transport.write(self.rejection)
                counters.bytes_out += len(self.rejection)
                self.close_lingering()
                cycle.answered(status)
            else:
                self.close()
                cycle.wake()
        elif parsing is not None:
            self.pipeline.remove(parsing)  # it can never complete: never answer it

    def check_timeouts(self, now: float) -> None:
        timer = self.timer
        if timer == IDLE:
            if now - self.timer_since >= self.state.timeout_keep_alive:
                self.close()
        elif timer == READING_HEAD:
            if now - self.timer_since >= self.state.timeout_request_header:
                self.counters.timeouts += 1
                self.timer = NO_TIMER
                self.reject(408, "request head not received in time")
        elif timer == READING_BODY:
            limit = self.state.timeout_request_body
            if limit and now - self.timer_since >= limit:
                self.counters.timeouts += 1
                logger.debug("Request body stalled for %g s: closing", limit)
                self.close()
                if self.cycle is not None:
                    self.cycle.wake()  # its app's receive() gets http.disconnect
        elif timer == LINGERING and now - self.timer_since >= LINGER_SECONDS:
            self.timer = NO_TIMER
            self.transport.close()

    def wait_for_body(self) -> None:
        """The app waits for request body: from now on the client has
        --timeout-request-body to send some."""
        self.timer = READING_BODY
        self.timer_since = self.state.now

    def close_when_idle(self) -> None:
        """Close now if idle, else after the response in flight (graceful shutdown)."""
        self.draining = True
        if self.cycle is None:
            self.close()

    def long_lived(self) -> bool:
        return False

    def drain(self, close_idle: bool) -> None:
        """The shard is stopping (close idle connections now) or being replaced (let
        each idle connection's next request be answered with connection: close)."""
        if close_idle:
            self.close_when_idle()
        else:
            self.draining = True

    def abort(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.task is not None:
            cycle.task.cancel()
        self.transport.abort()

    # Switching protocols --------------------------------------------------------------

    def switch_to_http2(self, data: bytes) -> None:
        """The client opened with HTTP/2's connection preface (prior knowledge): an
        H2Connection takes the transport over, with what arrived so far."""
        self.state.connections.discard(self)
        self.closed = True  # (as far as this object is concerned)
        self.timer = NO_TIMER
        self.close_starter()
        self.state.http2.take_over(self.state, self.transport, self.scheme).feed(data)

    def on_upgrade(self, rest: bytes) -> bool:
        """The parser saw a request asking to switch protocols (after its head and
        end).  Take the connection over for WebSocket and return True, or return
        False to carry on with HTTP (the request is then answered as plain HTTP)."""
        cycle = self.ready
        if cycle is None or self.pipeline or not self.state.ws.enabled:
            return False
        scope = cycle.scope
        if scope["http_version"] != "1.1":
            return False  # RFC 9110 7.8: Upgrade in an HTTP/1.0 request is ignored
        headers = scope["headers"]
        if not is_websocket_upgrade(scope["method"], headers):
            return False
        self.ready = self.cycle = None
        self.parser = _Discard
        problem = handshake_problem(headers)
        if problem is not None:
            status, reason = problem
            logger.debug("Invalid WebSocket handshake (%d): %s", status, reason)
            extra = b"sec-websocket-version: 13\r\n" if status == 426 else b""
            response = canned_response(status, extra=self.state.default_headers + extra)
            self.transport.write(response)
            self.counters.parse_errors += 1
            self.counters.bytes_out += len(response)
            self.close()
            return True
        self.state.connections.discard(self)
        self.closed = True  # as far as this object is concerned: the session owns it now
        from ..ws.session import WebSocketSession  # (websockets loads with the first one)

        session = WebSocketSession(self.state, self.transport, websocket_scope(scope))
        session.start(rest)
        return True

    def close(self) -> None:
        """Close after what was written; the app sees a disconnect from now on."""
        if not self.closed:
            self.closed = True
            self.timer = NO_TIMER
            self.transport.close()

    def close_lingering(self) -> None:
        """Close, but let the client finish sending first (bounded): half-close after
        what was written, then read and discard for up to LINGER_SECONDS and
        LINGER_BYTES, so that the answer is not lost to a reset.  TLS cannot
        half-close: it closes at once."""
        if self.closed:
            return
        transport = self.transport
        if not transport.can_write_eof():
            self.close()
            return
        self.closed = True
        self.parser = _Lingering(transport)
        self.timer = LINGERING
        self.timer_since = self.state.now
        transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()


class _DiscardParser:
    """Stands in for the parser once a connection is condemned: input is ignored."""

    @staticmethod
    def feed(data: bytes) -> None:
        return None


_Discard = _DiscardParser()


class _Lingering:
    """Stands in for the parser while a connection lingers: input is counted and
    dropped, and past LINGER_BYTES the connection closes."""

    __slots__ = ("transport", "left")

    def __init__(self, transport) -> None:
        self.transport = transport
        self.left = LINGER_BYTES

    def feed(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.transport.close()


def websocket_scope(http_scope: dict) -> dict:
    """The websocket scope for an upgrade request's (already proxy-adjusted) http scope."""
    scope = dict(http_scope)
    del scope["method"]
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if http_scope["scheme"] == "https" else "ws"
    scope["subprotocols"] = requested_subprotocols(http_scope["headers"])
    scope["extensions"] = {"websocket.http.response": {}}
    return scope


compiled.keep_references(
    HttpConnection, ("data_received", "on_request", "on_request_end", "response_done")
)


def install_compiled_connection() -> None:
    """Put _conn.c's twins in place of the per-request methods, where it is built."""
    module = compiled.load("_conn")
    if module is None:
        return
    from ..state import ShardCounters
    from . import cycle, scope

    twins = module.ConnTwins(
        connection_class=HttpConnection,
        cycle_class=RequestCycle,
        counters_class=ShardCounters,
        parse_error=ParseError,
        request_scope=scope.request_scope,
        account=scope.account,
        perf_counter=cycle.perf_counter,
    )
    compiled.install(HttpConnection, twins)


install_compiled_send(HttpConnection)
install_compiled_connection()
