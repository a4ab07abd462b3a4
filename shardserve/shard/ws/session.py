"""One WebSocket connection: the ASGI websocket protocol over websockets' sans-I/O core.

The HTTP connection hands over its transport once an upgrade request is parsed
(``HttpConnection.on_upgrade``); from then on this object is the transport's
protocol.  websockets' ``ServerProtocol`` parses and serialises frames, answers
pings and runs the closing handshake; this module assembles fragmented messages
(checking UTF-8 as text arrives), queues them for the app with back-pressure, sends
the app's messages, pings on the shard's ticker, and closes.  It imports only pure
Python, so it runs wherever a shard runs.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Any

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..connection import WriteFlow
from ..http.cycle import ClientDisconnected
from ..http.response import render_header, status_line

if TYPE_CHECKING:
    from ..state import ShardState

logger = logging.getLogger("shardserve.error")

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
CLOSE_TIMEOUT = 10.0  # for the client's close frame once we have sent ours
PRE_ACCEPT_BUFFER = 64 * 1024  # bytes a client may send before the app accepts

INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012


class _ServerProtocol(ServerProtocol):
    def recv_frame(self, frame) -> None:
        # RFC 6455 5.4 lets control frames arrive between the fragments of a message;
        # a close frame there ends the connection normally.  websockets answers it
        # with 1002 "incomplete fragmented message" (Autobahn 7.1.5): forget the
        # unfinished message first, so the close is answered like any other.
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None
        super().recv_frame(frame)


class WebSocketSession(WriteFlow, asyncio.Protocol):
    """One WebSocket connection: a ``Connection`` of its shard."""

    def __init__(self, state: ShardState, transport, scope: dict[str, Any]) -> None:
        config = state.ws
        self.state = state
        self.counters = state.counters
        self.loop = state.loop
        self.transport = transport
        self.scope = scope
        self.max_queue = config.max_queue
        self.ping_interval = config.ping_interval
        self.ping_timeout = config.ping_timeout
        self.chosen_subprotocol: str | None = None
        self.protocol = _ServerProtocol(
            extensions=[ServerPerMessageDeflateFactory()] if config.per_message_deflate else None,
            max_size=config.max_size,
            select_subprotocol=lambda _protocol, offered: self._select_subprotocol(offered),
            logger=_quiet,
        )
        headers = Headers()
        for name, value in scope["headers"]:
            headers[name.decode("latin-1")] = value.decode("latin-1")
        self.request = Request(scope["raw_path"].decode("latin-1") or "/", headers)
        # The handshake was parsed by the HTTP connection; the sans-I/O protocol still
        # expects to read it before any frame, so it is given a copy.
        self.protocol.receive_data(self.request.serialize())
        self.protocol.events_received()
        self.accepted = False  # the app sent websocket.accept and the 101 went out
        self.finished = False  # no more messages either way (closed or refused)
        self.close_sent_at: float | None = None
        self.connect_delivered = False
        self.disconnected = False  # websocket.disconnect queued for the app
        self.queue: deque[dict[str, Any]] = deque()
        self.waiter: asyncio.Future | None = None
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future | None = None
        self.pending = bytearray()  # received before the app accepted
        self.message_opcode: Opcode | None = None
        self.message_parts: list[Any] = []
        self.decoder = None
        self.ping_payload: bytes | None = None
        self.ping_sent_at = 0.0
        self.last_ping = state.now  # (the shard's clock: see check_timeouts)
        self.denial: tuple[int, list] | None = None
        self.denial_body: list[bytes] = []
        self.task: asyncio.Task | None = None
        self.closed = False  # the TCP connection is gone

    # Starting -------------------------------------------------------------------------

    def start(self, leftover: bytes) -> None:
        """Take over the transport and run the app."""
        self.transport.set_protocol(self)
        self.state.connections.add(self)
        if leftover:
            self.data_received(leftover)
        self.task = self.loop.create_task(self.run())

    async def run(self) -> None:
        state = self.state
        state.active_requests += 1
        try:
            await state.app(self.scope, self.receive, self.send)
        except BaseException as exc:  # noqa: BLE001 - every failure ends this connection
            if not isinstance(exc, asyncio.CancelledError) and not (
                self.closed and isinstance(exc, OSError)
            ):
                self.counters.app_errors += 1
                logger.error("Exception in ASGI application", exc_info=exc)
            self._end_after_failure()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            if not self.accepted and not self.finished:
                logger.error("ASGI callable returned without sending handshake.")
                self._refuse(500)
            elif self.accepted and self.close_sent_at is None and not self.closed:
                self._close(1000, "")
        finally:
            state.active_requests -= 1

    def _end_after_failure(self) -> None:
        if self.closed:
            return
        if not self.accepted:
            if not self.finished:
                self._refuse(500)
        elif self.close_sent_at is None:
            self._close(INTERNAL_ERROR, "")

    def _select_subprotocol(self, offered) -> str | None:
        chosen = self.chosen_subprotocol
        return chosen if chosen is not None and chosen in offered else None

    # ASGI receive ------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        while not self.queue:
            if self.disconnected or self.closed:
                return self._disconnect_message()
            waiter = self.waiter
            if waiter is None or waiter.done():
                waiter = self.waiter = self.loop.create_future()
            await waiter
        message = self.queue.popleft()
        if self.read_paused and len(self.queue) < self.max_queue and not self.closed:
            self.read_paused = False
            if not self.write_paused:
                self.transport.resume_reading()
        return message

    def _disconnect_message(self) -> dict[str, Any]:
        received = self.protocol.close_rcvd  # the client's close frame, if it sent one
        if received is None:
            return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        return {"type": "websocket.disconnect", "code": received.code, "reason": received.reason}

    def _deliver(self, message: dict[str, Any]) -> None:
        self.queue.append(message)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self.queue) >= self.max_queue and not self.read_paused and not self.closed:
            self.read_paused = True  # the app is behind: let TCP push back on the client
            if not self.write_paused:
                self.transport.pause_reading()

    def _receive_message(self, message: dict[str, Any]) -> None:
        self.counters.ws_messages_in += 1
        self._deliver(message)

    def _deliver_disconnect(self) -> None:
        if not self.disconnected:
            self.disconnected = True
            self._deliver(self._disconnect_message())

    # ASGI send -----------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if not self.accepted:
            if self.finished:
                raise ClientDisconnected("the WebSocket was refused or closed")
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._refuse(403)
            elif kind == "websocket.http.response.start" and self.denial is None:
                self.denial = (message["status"], list(message.get("headers", ())))
            elif kind == "websocket.http.response.body" and self.denial is not None:
                self.denial_body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self._send_denial()
            else:
                raise RuntimeError(f"Unexpected ASGI message {kind!r} before the handshake")
            return
        if self.write_paused and not self.closed:
            await self.wait_writable()
        if self.closed or self.close_sent_at is not None:
            raise ClientDisconnected("the WebSocket is closed")
        protocol = self.protocol
        try:
            if kind == "websocket.send":
                text = message.get("text")
                if text is not None:
                    protocol.send_text(text.encode("utf-8"))
                else:
                    protocol.send_binary(message.get("bytes") or b"")
            elif kind == "websocket.close":
                self._close(message.get("code") or 1000, message.get("reason") or "")
                return
            else:
                raise RuntimeError(f"Unexpected ASGI message {kind!r} after the handshake")
        except InvalidState:
            raise ClientDisconnected("the WebSocket is closing") from None
        counters = self.counters
        counters.ws_messages_out += 1
        transport = self.transport
        for data in protocol.data_to_send():
            transport.write(data)
            counters.bytes_out += len(data)

    def _accept(self, message: dict[str, Any]) -> None:
        self.chosen_subprotocol = message.get("subprotocol")
        response = self.protocol.accept(self.request)
        if response.status_code != 101:  # checked before the app ran; cannot happen
            self._refuse(response.status_code)
            return
        for name, value in message.get("headers", ()):
            response.headers[_text(name)] = _text(value)
        if self.state.server_header and "Server" not in response.headers:
            response.headers["Server"] = "shardserve"
        self.protocol.send_response(response)
        self.accepted = True
        self.counters.ws_connections += 1
        self._log("accepted")
        self._flush()
        if self.pending:
            pending, self.pending = bytes(self.pending), bytearray()
            self.data_received(pending)

    def _log(self, outcome: str) -> None:
        if self.state.access_log:
            scope = self.scope
            query = scope["query_string"]
            path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
            self.state.access_logger.log_websocket(scope["client"], path, outcome)

    def _refuse(self, status: int) -> None:
        """An HTTP answer instead of the handshake (close before accept: 403)."""
        self._log(str(status))
        self.finished = True
        if not self.closed:
            response = self.state.canned(status)
            self.transport.write(response)
            self.counters.bytes_out += len(response)
            self.transport.close()

    def _send_denial(self) -> None:
        status, headers = self.denial
        body = b"".join(self.denial_body)
        lines = [status_line(status), self.state.default_headers]
        for header in headers:
            line, kind, _ = render_header(header)
            if kind == 0:  # framing is ours: Content-Length and Connection below
                lines.append(line)
        lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        lines.append(body)
        self.finished = True
        self._log(str(status))
        if not self.closed:
            response = b"".join(lines)
            self.transport.write(response)
            self.counters.bytes_out += len(response)
            self.transport.close()

    def _close(self, code: int, reason: str) -> None:
        if self.close_sent_at is not None or self.closed:
            return
        self.close_sent_at = self.state.now
        try:
            self.protocol.send_close(code, reason)
        except InvalidState:
            pass
        self._flush()

    # Frames in and out -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.counters.bytes_in += len(data)
        if not self.accepted:
            if self.finished:
                return
            self.pending += data
            if len(self.pending) > PRE_ACCEPT_BUFFER and not self.read_paused:
                self.read_paused = True
                if not self.write_paused:
                    self.transport.pause_reading()
            return
        protocol = self.protocol
        protocol.receive_data(data)
        for frame in protocol.events_received():
            self._on_frame(frame)
        self._flush()

    def _on_frame(self, frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:  # a whole message in one frame: the common case
                if opcode is Opcode.BINARY:
                    self._receive_message({"type": "websocket.receive", "bytes": frame.data})
                    return
                try:
                    text = frame.data.decode()
                except UnicodeDecodeError as exc:
                    self.protocol.fail(1007, f"invalid UTF-8: {exc.reason}")
                    return
                self._receive_message({"type": "websocket.receive", "text": text})
                return
            self.message_opcode = opcode
            self.message_parts = []
            self.decoder = (
                codecs.getincrementaldecoder("utf-8")() if opcode is Opcode.TEXT else None
            )
            self._add_fragment(frame)
        elif opcode is Opcode.CONT:
            self._add_fragment(frame)
        elif opcode is Opcode.PONG:
            if self.ping_payload is not None and frame.data == self.ping_payload:
                self.ping_payload = None
        elif opcode is Opcode.CLOSE:
            self._deliver_disconnect()

    def _add_fragment(self, frame) -> None:
        """A piece of a fragmented message: text is checked as it arrives (fail fast)."""
        if self.decoder is not None:
            try:
                self.message_parts.append(self.decoder.decode(frame.data, frame.fin))
            except UnicodeDecodeError as exc:
                self.message_opcode = None
                self.protocol.fail(1007, f"invalid UTF-8: {exc.reason}")
                return
        else:
            self.message_parts.append(frame.data)
        if frame.fin:
            if self.message_opcode is Opcode.TEXT:
                self._receive_message(
                    {"type": "websocket.receive", "text": "".join(self.message_parts)}
                )
            elif self.message_opcode is Opcode.BINARY:
                self._receive_message(
                    {"type": "websocket.receive", "bytes": b"".join(self.message_parts)}
                )
            self.message_opcode = None
            self.message_parts = []

    def _flush(self) -> None:
        """Write what the protocol produced; its end-of-stream marker closes TCP."""
        writes = self.protocol.data_to_send()
        if writes:
            transport = self.transport
            for data in writes:
                if self.closed:
                    return
                if data:
                    transport.write(data)
                    self.counters.bytes_out += len(data)
                else:
                    transport.close()
        if self.close_sent_at is None and self.protocol.state is not State.OPEN:
            self.close_sent_at = self.state.now  # closing: the close timeout runs

    # asyncio.Protocol ------------------------------------------------------------------

    def eof_received(self) -> bool | None:
        if self.accepted:
            self.protocol.receive_eof()
            for frame in self.protocol.events_received():
                self._on_frame(frame)
            self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.accepted and not self.closed:
            self.counters.ws_closed += 1
        self.closed = True
        self.finished = True
        self.state.connections.discard(self)
        self._deliver_disconnect()
        self.wake_writer()

    # Write flow (pause_writing, resume_writing, wait_writable) is WriteFlow's; its
    # hooks add the WebSocket's twist.  Reading stops for either of two reasons, and
    # resumes when neither holds: ``read_paused`` (the app is behind: --ws-max-queue
    # messages wait, or a client sends before the accept) and ``write_paused`` (the
    # client does not read what we write: the pongs and close frames the protocol
    # answers with would otherwise pile up without bound in the write buffer).

    def writing_paused(self) -> None:
        if not self.read_paused and not self.closed:
            self.transport.pause_reading()

    def writing_resumed(self) -> None:
        if not self.read_paused and not self.closed:
            self.transport.resume_reading()

    # The shard's ticker and shutdown -------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        # ``now`` and every time stamped here (close_sent_at, last_ping, ping_sent_at)
        # are the shard's coarse clock, ShardState.now, as for HTTP's timeouts.
        if self.close_sent_at is not None:
            if now - self.close_sent_at > CLOSE_TIMEOUT and not self.closed:
                self.transport.abort()  # the client never finished the closing handshake
            return
        if not self.accepted or self.ping_interval is None:
            return
        if self.ping_payload is not None:
            if self.ping_timeout is not None and now - self.ping_sent_at > self.ping_timeout:
                logger.debug("WebSocket ping not answered in %.0f s: closing", self.ping_timeout)
                self.protocol.fail(INTERNAL_ERROR, "keepalive ping timeout")
                self.close_sent_at = now
                self._deliver_disconnect()
                self._flush()
            return
        if now - self.last_ping >= self.ping_interval:
            self.last_ping = self.ping_sent_at = now
            self.ping_payload = os.urandom(4)
            try:
                self.protocol.send_ping(self.ping_payload)
            except InvalidState:
                return
            self._flush()

    def long_lived(self) -> bool:
        return True

    def drain(self, close_idle: bool) -> None:
        """The shard is stopping or being replaced: close with 1012 (service restart)."""
        if self.closed:
            return
        if self.accepted:
            self._close(SERVICE_RESTART, "")
        elif not self.finished:
            self._refuse(503)

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if not self.closed:
            self.transport.abort()


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


class _QuietLogger(logging.LoggerAdapter):
    """websockets logs every connection at INFO; shardserve's access log is enough."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


_quiet = _QuietLogger(logging.getLogger("shardserve.websockets"), {})
