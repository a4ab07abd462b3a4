"""FastSend's socket path (``_send.c``'s send_now): on a LeanSocketTransport it sends
a response itself, as LeanSocketTransport.write would, and gives the transport what
the socket would not take.  Real sockets, the real HttpConnection, on LeanEventLoop.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from shardserve.config import Config
from shardserve.shard.http import cycle as cycle_module
from shardserve.shard.http.protocol import HttpConnection
from shardserve.shard.loop import LeanSocketTransport, new_event_loop
from shardserve.shard.state import ShardState

try:
    from shardserve.shard.http._send import FastSend
except ImportError:  # pragma: no cover - CI builds it
    FastSend = None

pytestmark = pytest.mark.skipif(
    FastSend is None or not isinstance(cycle_module.RequestCycle.__dict__["send"], FastSend),
    reason="the compiled sender is not built or not installed",
)

BODY = b"x" * 3000
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


class CountingWrites:
    """Counts the calls to LeanSocketTransport.write (the class stays the same, so the
    compiled sender still recognises its transports)."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        original = LeanSocketTransport.write

        def write(transport, data):
            self.calls += 1
            original(transport, data)

        monkeypatch.setattr(LeanSocketTransport, "write", write)


def serve_one(pipelined: int, client_buffer: int | None) -> tuple[bytes, int]:
    """Pipeline ``pipelined`` GETs on one connection and read every response."""
    loop = new_event_loop("asyncio")
    server, client = socket.socketpair()
    errors: list = []
    loop.set_exception_handler(lambda loop, context: errors.append(context["message"]))
    try:
        if client_buffer is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_buffer)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, client_buffer)
        state = ShardState(Config(app="tests:app", http="python"), app, loop)
        server.setblocking(False)
        transport, _ = loop.run_until_complete(
            asyncio.wait_for(loop.connect_accepted_socket(lambda: HttpConnection(state), server), 5)
        )
        assert type(transport) is LeanSocketTransport
        client.settimeout(5)
        client.sendall(REQUEST * pipelined)
        received = bytearray()

        def complete() -> bool:
            # (every head is as long as the first: the same status, headers and date)
            head = received.find(b"\r\n\r\n") + 4
            return head > 3 and len(received) >= pipelined * (head + len(BODY))

        async def read_all() -> None:
            client.setblocking(False)
            while not complete():
                chunk = await loop.sock_recv(client, 65536)
                if not chunk:
                    break
                received.extend(chunk)

        loop.run_until_complete(asyncio.wait_for(read_all(), 10))
        response = bytes(received)
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))
        assert errors == []
        return response, transport.get_write_buffer_size()
    finally:
        client.close()
        server.close()
        loop.close()


def split(response: bytes) -> list[bytes]:
    bodies = []
    rest = response
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head[:60]
        assert f"content-length: {len(BODY)}".encode() in head.lower()
        bodies.append(rest[: len(BODY)])
        rest = rest[len(BODY) :]
    return bodies


def test_a_response_is_sent_without_the_transports_write(monkeypatch):
    writes = CountingWrites(monkeypatch)
    response, _ = serve_one(pipelined=3, client_buffer=None)
    assert split(response) == [BODY] * 3
    assert writes.calls == 0  # (all three went out through send_now)


def test_what_the_socket_does_not_take_goes_to_the_transport_in_order(monkeypatch):
    writes = CountingWrites(monkeypatch)
    # 200 responses of ~3 kB into ~8 kB of socket buffers, the client not reading
    # until all are written: send_now fills the socket, then the transport buffers.
    response, buffered = serve_one(pipelined=200, client_buffer=4096)
    assert split(response) == [BODY] * 200
    assert writes.calls > 0
    assert buffered == 0
