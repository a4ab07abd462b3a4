"""One request/response exchange: the ASGI ``receive`` and ``send`` of an http scope.

The response head is held back until the first body message (as the ASGI spec asks),
so that a typical response leaves in one write, and an app that fails between
``http.response.start`` and its body still gets a clean 500.
"""

from __future__ import annotations

import logging
from asyncio import CancelledError
from typing import TYPE_CHECKING, Any

from .response import (
    CONNECTION,
    CONTENT_LENGTH,
    CONTINUE_100,
    DATE,
    NO_BODY_STATUSES,
    SERVER,
    SPECIAL_HEADERS,
    TRANSFER_ENCODING,
    status_line,
)

if TYPE_CHECKING:
    from .protocol import HttpConnection

logger = logging.getLogger("shardserve.error")

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


class RequestCycle:
    __slots__ = (
        "conn",
        "scope",
        "keep_alive",
        "task",
        # request side
        "body",
        "body_done",
        "final_delivered",
        "waiter",
        "continue_checked",
        "discarded",
        # response side
        "state",
        "status",
        "head",
        "no_body",
        "chunked",
        "remaining",
        "written",
    )

    def __init__(self, conn: HttpConnection, scope: dict, keep_alive: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.task = None
        self.body = b""
        self.body_done = False
        self.final_delivered = False
        self.waiter = None
        self.continue_checked = False
        self.discarded = 0
        self.state = NOT_STARTED
        self.status = 0
        self.head = b""
        self.no_body = False
        self.chunked = False
        self.remaining = None
        self.written = False

    # Running the app ---------------------------------------------------------

    async def run(self) -> None:
        conn = self.conn
        shard = conn.shard
        shard.active_requests += 1
        try:
            result = await shard.app(self.scope, self.receive, self.send)
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
            shard.active_requests -= 1

    def _app_failed(self, exc: BaseException) -> None:
        if isinstance(exc, CancelledError):
            pass  # cancelled at the end of a graceful-shutdown timeout
        elif self.conn.closed and isinstance(exc, OSError):
            pass  # the client left; nothing went wrong in the app
        else:
            logger.error("Exception in ASGI application", exc_info=exc)
        if self.state != COMPLETE:
            self._abort()

    def _abort(self) -> None:
        """End the exchange after a failure: a 500 if nothing was written, else a close."""
        conn = self.conn
        self.keep_alive = False
        if not self.written and not conn.closed:
            self.status = 500
            self.written = True
            conn.transport.write(conn.shard.canned(500))
        self.state = COMPLETE
        self._wake()
        conn.response_done(self)

    # receive -------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        if self.state == COMPLETE or conn.closed:
            return {"type": "http.disconnect"}
        if not self.body and (not self.body_done or self.final_delivered):
            if not self.continue_checked:
                self._send_continue_if_expected()
            if conn.read_paused:
                conn.maybe_resume_reading()
            waiter = self.waiter
            if waiter is None or waiter.done():
                waiter = self.waiter = conn.loop.create_future()
            await waiter
            if self.state == COMPLETE or conn.closed:
                return {"type": "http.disconnect"}
            if not self.body and (not self.body_done or self.final_delivered):
                return await self.receive()
        body = self.body
        self.body = b""
        more_body = not self.body_done
        if not more_body:
            self.final_delivered = True
        if conn.read_paused:
            conn.maybe_resume_reading()
        return {"type": "http.request", "body": body, "more_body": more_body}

    def _send_continue_if_expected(self) -> None:
        self.continue_checked = True
        if self.state != NOT_STARTED or self.body_done:
            return
        for name, value in self.scope["headers"]:
            if name == b"expect" and value.lower() == b"100-continue":
                self.conn.transport.write(CONTINUE_100)
                return

    # Called by the connection as the request body arrives.

    def feed_body(self, chunk: bytes) -> None:
        if self.state == COMPLETE:
            self.discarded += len(chunk)
            return
        self.body = self.body + chunk if self.body else chunk
        if self.waiter is not None:
            self._wake()

    def end_body(self) -> None:
        self.body_done = True
        if self.waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def disconnected(self) -> None:
        self._wake()

    # send ----------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.write_paused:
            await conn.drain()
        if conn.closed:
            raise ClientDisconnected("client disconnected")
        message_type = message["type"]
        state = self.state
        if message_type == "http.response.body" and (state == HEAD_PENDING or state == STREAMING):
            self._write_body(message.get("body", b""), message.get("more_body", False))
        elif message_type == "http.response.start" and state == NOT_STARTED:
            self._start(message["status"], message.get("headers", ()))
        else:
            raise RuntimeError(
                f"Unexpected ASGI message {message_type!r} "
                + ("before the response started" if state == NOT_STARTED else
                   "after the response completed" if state == COMPLETE else
                   "after the response started")
            )

    def _start(self, status: int, headers) -> None:
        conn = self.conn
        shard = conn.shard
        content_length = None
        app_chunked = False
        close = False
        defaults = shard.default_headers
        lines = []
        append = lines.append
        for name, value in headers:
            kind = SPECIAL_HEADERS.get(name.lower())
            if kind is not None:
                if kind == CONTENT_LENGTH:
                    try:
                        content_length = int(value)
                    except ValueError:
                        raise RuntimeError(f"invalid Content-Length {value!r}") from None
                    if content_length < 0:
                        raise RuntimeError(f"invalid Content-Length {value!r}")
                elif kind == TRANSFER_ENCODING:
                    app_chunked = b"chunked" in value.lower()
                elif kind == CONNECTION:
                    close = b"close" in value.lower()
                elif kind == SERVER or kind == DATE:
                    defaults = shard.defaults_without(kind, defaults)
            append(b"%s: %s\r\n" % (name, value))
        block = b"".join(lines)
        count = len(lines)
        if block.count(b"\n") != count or block.count(b"\r") != count:
            raise RuntimeError("invalid response header: CR or LF in a header name or value")

        scope = self.scope
        no_body = status in NO_BODY_STATUSES or scope["method"] == "HEAD"
        keep_alive = self.keep_alive and not close and not conn.draining
        framing = b""
        if content_length is not None and not no_body:
            self.remaining = content_length
        elif not no_body:
            if scope["http_version"] == "1.1":
                self.chunked = True
                if not app_chunked:
                    framing = _CHUNKED
            else:
                keep_alive = False  # HTTP/1.0: the body ends when the connection does
        if not keep_alive:
            if not close:
                framing += _CLOSE
        elif scope["http_version"] == "1.0":
            framing += _KEEP_ALIVE
        self.keep_alive = keep_alive
        self.no_body = no_body
        self.status = status
        self.head = b"".join((status_line(status), defaults, block, framing, b"\r\n"))
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
        elif self.remaining is not None:
            size = len(body)
            if size > self.remaining:
                raise RuntimeError("Response content longer than Content-Length")
            self.remaining -= size
            data = body
        else:
            data = body
        transport = self.conn.transport
        if self.state == HEAD_PENDING:
            self.state = STREAMING
            self.written = True
            head = self.head
            self.head = b""
            if len(data) < 65536:
                transport.write(head + data)
            else:
                transport.write(head)
                transport.write(data)
        elif data:
            transport.write(data)
        if not more_body:
            short = self.remaining
            self.state = COMPLETE
            if short:
                self.keep_alive = False
            self._wake()
            self.conn.response_done(self)
            if short:
                raise RuntimeError("Response content shorter than Content-Length")

