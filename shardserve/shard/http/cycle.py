"""One request/response exchange: the ASGI ``receive`` and ``send`` of an http scope.

``RequestCycle`` is the exchange for every protocol: its ``conn`` is the HTTP/1.1
connection, or an HTTP/2 stream (``../h2/stream.py``) with the same interface.  What
differs is how a response is framed: ``_start``, ``_write_body`` and ``_send_error``
here write HTTP/1.1; ``H2Exchange`` overrides those three (and trailers).

The response head is held back until the first body message (as the ASGI spec asks),
so that a typical response leaves in one write, and an app that fails between
``http.response.start`` and its body still gets a clean 500.

This is the hot path: each request runs ``RequestCycle()``, ``run``, two ``send``
calls and usually one ``receive``; keep them free of work that could be done once.

``send`` here is the reference.  Where ``_send.c`` is built, ``RequestCycle.send`` is
its FastSend (``install_compiled_send``, called by protocol.py): the common response
(a start with a Content-Length, then one body that completes it) is written in C and
``await send(...)`` ends at once; every other message, and every subclass
(``H2Exchange``), goes to this ``send``.
"""

from __future__ import annotations

import logging
from asyncio import CancelledError
from time import perf_counter
from typing import TYPE_CHECKING, Any

from . import compiled
from .response import (
    CONNECTION,
    CONTENT_LENGTH,
    CONTINUE_100,
    NO_BODY_STATUSES,
    STATUS_LINES,
    TRANSFER_ENCODING,
    _rendered,
    render_header,
    status_line,
)

if TYPE_CHECKING:
    from .protocol import HttpConnection

logger = logging.getLogger("shardserve.error")

# Request states: how much of the request the app has been given.
BODY_MORE = 0  # more body to come from the client
BODY_ENDED = 1  # the request is complete; the final http.request not yet delivered
BODY_DELIVERED = 2  # the app has had the whole request

# Response states.
NOT_STARTED = 0
HEAD_PENDING = 1  # http.response.start received, head not yet written
STREAMING = 2  # head written, more body to come
COMPLETE = 3

# Unread request body a connection may buffer before it stops reading the socket.
READ_HIGH_WATER = 64 * 1024


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the client has gone away (ASGI http spec 2.4)."""


_CHUNKED = b"transfer-encoding: chunked\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_DISCONNECT = "http.disconnect"


class RequestCycle:
    __slots__ = (
        "conn",
        "scope",
        "keep_alive",
        "task",
        "started",  # perf_counter() when the request head was parsed
        # request side
        "request",
        "body",
        "waiter",
        "expect_checked",
        # response side
        "state",
        "status",
        "head",  # the response head's parts, until written with the first body
        "no_body",
        "chunked",
        "remaining",
    )

    def __init__(self, conn: HttpConnection, scope: dict, keep_alive: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.started = perf_counter()
        self.request = BODY_MORE
        self.body = b""
        self.waiter = None
        self.state = NOT_STARTED
        self.expect_checked = False

    # Running the app ---------------------------------------------------------

    async def run(self) -> None:
        shard_state = self.conn.state
        shard_state.active_requests += 1
        try:
            result = await shard_state.app(self.scope, self.receive, self.send)
        except BaseException as exc:  # noqa: BLE001 - every failure ends this exchange
            self._app_failed(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            if self.state != COMPLETE:
                if self.state == NOT_STARTED:
                    logger.error("ASGI callable returned without starting a response.")
                else:
                    logger.error("ASGI callable returned without completing the response.")
                self._abort()
            elif result is not None:
                logger.error("ASGI callable returned a value other than None: %r", result)
        finally:
            shard_state.active_requests -= 1

    def _app_failed(self, exc: BaseException) -> None:
        if isinstance(exc, CancelledError):
            pass  # cancelled at the end of a graceful-shutdown timeout
        elif self.conn.closed and isinstance(exc, OSError):
            pass  # the client left; nothing went wrong in the app
        else:
            self.conn.counters.app_errors += 1
            logger.error("Exception in ASGI application", exc_info=exc)
        if self.state != COMPLETE:
            self._abort()
        else:
            # The response went out whole, but the app is broken: do not trust the
            # connection with another request (close now, or after the one in flight).
            self.conn.close_when_idle()

    def _abort(self) -> None:
        """End the exchange after a failure: a 500 if nothing was written, else a close."""
        conn = self.conn
        self.keep_alive = False
        if self.state < STREAMING:  # nothing written yet
            if conn.closed:
                self.status = 0  # no response: the client left first
            else:
                self.status = 500
                self._send_error(500)
        self.state = COMPLETE
        self.wake()
        conn.response_done(self)

    def _send_error(self, status: int) -> None:
        """The server's own response, when the app's never began."""
        conn = self.conn
        response = conn.state.canned(status)
        conn.transport.write(response)
        conn.counters.bytes_out += len(response)

    # receive -------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        while True:
            if self.state == COMPLETE or conn.closed:
                return {"type": _DISCONNECT}
            body = self.body
            if body or self.request == BODY_ENDED:
                self.body = b""
                more_body = self.request == BODY_MORE
                if not more_body:
                    self.request = BODY_DELIVERED
                if conn.read_paused:
                    conn.maybe_resume_reading()
                return {"type": "http.request", "body": body, "more_body": more_body}
            await self._wait()

    async def _wait(self) -> None:
        """Nothing to hand the app yet: wait for body, the request's end, or a disconnect."""
        conn = self.conn
        if self.request == BODY_MORE:
            if not self.expect_checked:
                self.expect_checked = True
                self._send_continue_if_expected()
            if conn.read_paused:
                conn.maybe_resume_reading()
            conn.wait_for_body()
        waiter = self.waiter
        if waiter is None or waiter.done():
            waiter = self.waiter = conn.loop.create_future()
        await waiter

    def _send_continue_if_expected(self) -> None:
        # HTTP/1.0 clients cannot take a 1xx response: their expectation is ignored.
        if self.state != NOT_STARTED or self.scope["http_version"] != "1.1":
            return
        for name, value in self.scope["headers"]:
            if name == b"expect" and value.lower() == b"100-continue":
                self.conn.transport.write(CONTINUE_100)
                self.conn.counters.bytes_out += len(CONTINUE_100)
                return

    def wake(self) -> None:
        """Release a ``receive()`` waiting for body, the request's end or a disconnect."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # send ----------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.write_paused:
            await conn.wait_writable()
        if conn.closed:
            raise ClientDisconnected("client disconnected")
        message_type = message["type"]
        state = self.state
        if message_type == "http.response.body":
            if state in (HEAD_PENDING, STREAMING):
                self._write_body(message.get("body", b""), message.get("more_body", False))
                return
        elif message_type == "http.response.start" and state == NOT_STARTED:
            self._start(message)
            return
        elif message_type == "http.response.trailers" and self._trailers_due():
            self._write_trailers(message.get("headers", ()), message.get("more_trailers", False))
            return
        raise RuntimeError(
            f"Unexpected ASGI message {message_type!r} "
            + (
                "before the response started"
                if state == NOT_STARTED
                else "after the response completed"
                if state == COMPLETE
                else "after the response started"
            )
        )

    reference_send = send  # (RequestCycle.send is FastSend's where _send.c is built)

    def _trailers_due(self) -> bool:
        """Whether an http.response.trailers message may come now (HTTP/1.1: never;
        the extension is not offered)."""
        return False

    def _write_trailers(self, headers, more_trailers: bool) -> None:
        raise NotImplementedError

    def _start(self, message: dict) -> None:
        status = message["status"]
        headers = message.get("headers", ())
        shard_state = self.conn.state
        content_length = None
        app_chunked = close = False
        defaults = shard_state.default_headers
        # (type check: 200.0 == 200 would find a status line, and the class index.)
        line = STATUS_LINES.get(status) if type(status) is int else None
        lines = [line or status_line(status), defaults]
        append = lines.append
        for header in headers:
            try:
                line, kind, argument = _rendered_get(header) or render_header(header)
            except TypeError:  # unhashable, e.g. a [name, value] list
                line, kind, argument = render_header(header)
            append(line)
            if kind:
                if kind == CONTENT_LENGTH:
                    content_length = argument
                elif kind == TRANSFER_ENCODING:
                    app_chunked = argument
                elif kind == CONNECTION:
                    close = argument
                else:  # SERVER or DATE: the app's own replaces the default
                    defaults = lines[1] = shard_state.defaults_without(kind, defaults)

        scope = self.scope
        keep_alive = self.keep_alive and not close and not self.conn.draining
        no_body = chunked = False
        remaining = None
        if status in NO_BODY_STATUSES or scope["method"] == "HEAD":
            no_body = True
        elif content_length is not None:
            remaining = content_length
        elif scope["http_version"] == "1.1":
            chunked = True
            if not app_chunked:
                append(_CHUNKED)
        else:
            keep_alive = False  # HTTP/1.0: the body ends when the connection does
        if not keep_alive:
            if not close:
                append(_CLOSE)
        elif scope["http_version"] == "1.0":
            append(_KEEP_ALIVE)
        append(b"\r\n")
        self.no_body = no_body
        self.chunked = chunked
        self.remaining = remaining
        self.keep_alive = keep_alive
        self.status = status
        self.head = lines
        self.state = HEAD_PENDING

    def _write_body(self, body: bytes, more_body: bool) -> None:
        if self.no_body:
            data = b""
        elif self.chunked:
            if body:
                data = b"%x\r\n%s\r\n" % (len(body), body)
                if not more_body:
                    data += _LAST_CHUNK
            else:
                data = b"" if more_body else _LAST_CHUNK
        else:
            remaining = self.remaining
            if remaining is not None:
                remaining -= len(body)
                if remaining < 0:
                    raise RuntimeError("Response content longer than Content-Length")
                self.remaining = remaining
            data = body
        conn = self.conn
        transport = conn.transport
        if self.state == HEAD_PENDING:
            self.state = STREAMING
            head = self.head
            self.head = None
            if self.request == BODY_MORE and self.keep_alive:
                self._close_after(head)
            if len(data) < 65536:
                head.append(data)
                data = b"".join(head)
                transport.write(data)
            else:
                head = b"".join(head)
                transport.write(head)
                transport.write(data)
                conn.counters.bytes_out += len(head)
            conn.counters.bytes_out += len(data)
        elif data:
            transport.write(data)
            conn.counters.bytes_out += len(data)
        if not more_body:
            self._complete()

    def _complete(self) -> None:
        """The response has been written whole (or as much of it as the app sent)."""
        self.state = COMPLETE
        if self.waiter is not None:
            self.wake()
        if self.remaining:
            self.keep_alive = False
            self.conn.response_done(self)
            raise RuntimeError("Response content shorter than Content-Length")
        self.conn.response_done(self)

    def _close_after(self, head: list[bytes]) -> None:
        """The response begins before the request body has all arrived: whatever the
        app does with the rest, the connection ends after this response (a client
        could otherwise hold it, and us, by never sending the body it declared)."""
        self.keep_alive = False
        if head[-2] is _KEEP_ALIVE:
            head[-2] = _CLOSE
        else:
            head.insert(-1, _CLOSE)

    def answered(self, status: int) -> None:
        """The server answered this exchange itself (a rejection of its body): the
        app's response is no longer wanted, and it gets http.disconnect."""
        self.status = status
        self.state = COMPLETE
        self.keep_alive = False
        self.wake()
        self.conn.response_done(self)


_rendered_get = _rendered.get


def install_compiled_send(connection_class: type) -> None:
    """Make ``RequestCycle.send`` _send.c's FastSend, where it is built (protocol.py
    calls this once HttpConnection, the connection class it takes, is defined)."""
    module = compiled.load("_send")
    if module is not None:
        from ..loop import LeanSocketTransport
        from ..state import ShardCounters

        RequestCycle.send = module.FastSend(
            RequestCycle.reference_send,
            RequestCycle,
            connection_class,
            ShardCounters,
            STATUS_LINES,
            _rendered,
            _CLOSE,
            LeanSocketTransport,
        )
