"""WebSockets: the ASGI websocket protocol, checked with real clients on both back-ends.

Every test starts real servers serving ``apps.wsapps:app`` (see its docstring for
the routes) and talks to them with the ``websockets`` client (run with
``asyncio.run``) or, for malformed handshakes and frame-level tricks, over a raw
socket (``RawWebSocket``: it does the opening handshake, writes masked frames built
by ``websockets.frames.Frame`` and parses the server's frames itself).  What the app
saw is reported by the app: ``WSEVENT ...`` lines it prints to the server's output.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import ssl
import struct
import time

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
)
from websockets.frames import Close, Frame, Opcode

from apps.wsapps import stamped
from serving import RssMonitor, connect, exchange, parse_responses

APP = "apps.wsapps:app"
KEY = base64.b64encode(b"0123456789abcdef").decode()
MIB = 1024 * 1024
# How much the server's RSS may grow above its idle size during a back-pressure test.
RSS_BOUND_KIB = 60 * 1024


# Helpers ----------------------------------------------------------------------------------


def run(coro, timeout: float = 15.0):
    """Run a client coroutine to completion, failing (not hanging) after ``timeout``."""

    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def ws_url(server, path: str) -> str:
    scheme = "wss" if server.scheme == "https" else "ws"
    return f"{scheme}://{server.host}:{server.port}{path}"


def client(server, path: str, **kwargs):
    """A websockets client connection (an async context manager) to ``path``."""
    kwargs.setdefault("open_timeout", 5)
    kwargs.setdefault("close_timeout", 5)
    kwargs.setdefault("max_size", None)
    return ws_connect(ws_url(server, path), proxy=None, **kwargs)


def handshake(path: str, key: str | None = KEY, version: str = "13", extra: str = "") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


def read_response(sock: socket.socket, timeout: float = 5.0):
    """One complete HTTP response (with Content-Length) off ``sock``."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            response = parse_responses(head + sep)[0]
            length = int(response.header("content-length") or 0)
            if len(rest) >= length:
                response.body = rest[:length]
                return response
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    raise AssertionError(f"no complete response: {data!r}")


class RawWebSocket:
    """A WebSocket client on a plain socket: the handshake, then frames by hand."""

    def __init__(self, server, path: str, timeout: float = 5.0) -> None:
        self.sock = connect(server, timeout)
        try:
            self._handshake(path, timeout)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(self, path: str, timeout: float) -> None:
        self.sock.sendall(handshake(path))
        self.buffer = bytearray()
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            assert time.monotonic() < deadline, "no handshake response"
            chunk = self.sock.recv(65536)
            assert chunk, f"closed during the handshake: {bytes(self.buffer)!r}"
            self.buffer += chunk
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.head = head.decode("latin-1")
        self.buffer = bytearray(rest)
        assert self.head.startswith("HTTP/1.1 101"), self.head
        assert "permessage-deflate" not in self.head.lower()  # not offered

    def send(self, opcode: Opcode, data: bytes, fin: bool = True) -> None:
        self.sock.sendall(Frame(opcode, data, fin=fin).serialize(mask=True))

    def _need(self, count: int) -> None:
        while len(self.buffer) < count:
            chunk = self.sock.recv(max(65536, count - len(self.buffer)))
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buffer += chunk

    def _take(self, count: int) -> bytes:
        self._need(count)
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def read_frame(self, timeout: float = 5.0) -> tuple[Opcode, bytes, bool]:
        """(opcode, payload, fin) of the server's next frame; EOFError when it closed."""
        self.sock.settimeout(timeout)
        first, second = self._take(2)
        assert not second & 0x80, "the server masked a frame"
        assert not first & 0x70, "RSV bits set without an extension"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._take(8))
        return Opcode(first & 0x0F), self._take(length), bool(first & 0x80)

    def read_data_frame(self, timeout: float = 5.0) -> tuple[Opcode, bytes, bool]:
        """The next frame that is not a ping (pings are answered)."""
        for _ in range(100):
            opcode, payload, fin = self.read_frame(timeout)
            if opcode is not Opcode.PING:
                return opcode, payload, fin
            self.send(Opcode.PONG, payload)
        raise AssertionError("only pings")

    def expect_close(self, timeout: float = 5.0) -> Close:
        opcode, payload, _ = self.read_data_frame(timeout)
        assert opcode is Opcode.CLOSE, (opcode, payload[:100])
        return Close.parse(payload)

    def close(self) -> None:
        self.sock.close()


def wait_event(server, pattern: str, timeout: float = 5.0) -> str:
    return server.wait_for(r"WSEVENT " + pattern, timeout).string


# 1. Messages, scope, negotiation ----------------------------------------------------------


def test_echo_text_bytes_large_and_fragmented(serve, backend):
    server = serve(APP, "--http", backend)
    big_text = ("0123456789 abcdé€ " * (MIB // 16))[:MIB]
    big_bytes = os.urandom(MIB)

    async def main():
        async with client(server, "/echo") as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01\xffbytes")
            assert await ws.recv() == b"\x00\x01\xffbytes"
            await ws.send("héllo wörld €")
            assert await ws.recv() == "héllo wörld €"
            await ws.send("")
            assert await ws.recv() == ""
            await ws.send(big_text)
            assert await ws.recv() == big_text
            await ws.send(big_bytes)
            assert await ws.recv() == big_bytes
            await ws.send(["frag", "ment", "ed ", "€"])  # one message in four frames
            assert await ws.recv() == "fragmented €"
            await ws.send([b"ab", b"", b"cd"])
            assert await ws.recv() == b"abcd"
            await ws.send([big_bytes[: MIB // 2], big_bytes[MIB // 2 :]])
            assert await ws.recv() == big_bytes

    run(main())


def test_frames_on_a_raw_socket(serve, backend):
    """Control frames between fragments, UTF-8 split across fragments, invalid UTF-8."""
    server = serve(APP, "--http", backend)
    ws = RawWebSocket(server, "/echo")
    try:
        ws.send(Opcode.TEXT, b"ab", fin=False)
        ws.send(Opcode.PING, b"between")
        ws.send(Opcode.CONT, b"c\xc3", fin=False)  # "é" split over two fragments
        ws.send(Opcode.CONT, b"\xa9d", fin=True)
        assert ws.read_frame() == (Opcode.PONG, b"between", True)
        assert ws.read_data_frame() == (Opcode.TEXT, "abcéd".encode(), True)
        ws.send(Opcode.BINARY, b"\x01", fin=False)
        ws.send(Opcode.CONT, b"\x02", fin=True)
        assert ws.read_data_frame() == (Opcode.BINARY, b"\x01\x02", True)
        ws.send(Opcode.CLOSE, Close(1000, "done").serialize())
        close = ws.expect_close()
        assert (close.code, close.reason) == (1000, "done")
    finally:
        ws.close()

    ws = RawWebSocket(server, "/echo")
    try:
        ws.send(Opcode.TEXT, b"ok \xff\xfe")
        assert ws.expect_close().code == 1007
    finally:
        ws.close()

    ws = RawWebSocket(server, "/echo")
    try:
        ws.send(Opcode.TEXT, b"caf\xc3", fin=False)  # a truncated sequence at the end
        ws.send(Opcode.CONT, b"", fin=True)
        assert ws.expect_close().code == 1007
    finally:
        ws.close()


def test_scope(serve, backend):
    server = serve(APP, "--http", backend)

    async def main():
        async with client(
            server,
            "/scope/a%20b?x=1&y=a%20b",
            subprotocols=["alpha", "beta"],
            additional_headers={"X-Custom": "yes"},
        ) as ws:
            scope = json.loads(await ws.recv())
            assert ws.subprotocol is None  # offered, not chosen
        async with client(server, "/scope") as ws:
            again = json.loads(await ws.recv())
        return scope, again

    scope, again = run(main())
    assert scope["type"] == "websocket"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/scope/a b"
    assert scope["raw_path"] == "/scope/a%20b"
    assert scope["query_string"] == "x=1&y=a%20b"
    assert scope["root_path"] == ""
    assert scope["client"][0] == "127.0.0.1"
    assert isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["subprotocols"] == ["alpha", "beta"]
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert "method" not in scope
    headers = scope["headers"]
    assert ["host", f"127.0.0.1:{server.port}"] in headers
    assert ["x-custom", "yes"] in headers
    assert ["upgrade", "websocket"] in headers
    assert ["sec-websocket-protocol", "alpha, beta"] in headers
    assert all(name == name.lower() for name, _ in headers)
    assert scope["state"] == {"greeting": "hello"}
    # The first connection added "touched" to its state: a copy, not the lifespan's.
    assert again["state"] == {"greeting": "hello"}
    assert again["subprotocols"] == []
    assert again["query_string"] == ""


def test_scope_with_root_path(serve, backend):
    server = serve(APP, "--http", backend, "--root-path", "/api")

    async def main():
        async with client(server, "/scope/x%20y?q=1") as ws:
            return json.loads(await ws.recv())

    scope = run(main())
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/scope/x y"
    assert scope["raw_path"] == "/api/scope/x%20y"
    assert scope["query_string"] == "q=1"


def test_subprotocol_negotiation(serve, backend):
    server = serve(APP, "--http", backend)

    async def attempt(path, offered):
        async with client(server, path, subprotocols=offered) as ws:
            seen = json.loads(await ws.recv())["subprotocols"]
            return ws.subprotocol, ws.response.headers.get("sec-websocket-protocol"), seen

    # Offered and chosen.
    assert run(attempt("/accept?subprotocol=beta", ["alpha", "beta"])) == (
        "beta",
        "beta",
        ["alpha", "beta"],
    )
    # Offered and not chosen.
    assert run(attempt("/accept", ["alpha", "beta"])) == (None, None, ["alpha", "beta"])
    # Chosen but not offered at all, or not among the offers: none.
    assert run(attempt("/accept?subprotocol=beta", None)) == (None, None, [])
    assert run(attempt("/accept?subprotocol=gamma", ["alpha"])) == (None, None, ["alpha"])


def test_accept_headers_reach_the_client(serve, backend):
    server = serve(APP, "--http", backend)

    async def main():
        path = "/accept?header=x-extra:hello&header=set-cookie:a%3Db"
        async with client(server, path) as ws:
            await ws.recv()
            await ws.send("still works")
            assert await ws.recv() == "still works"
            return ws.response

    response = run(main())
    assert response.status_code == 101
    assert response.headers["x-extra"] == "hello"
    assert response.headers["set-cookie"] == "a=b"
    assert response.headers["upgrade"].lower() == "websocket"
    assert response.headers["server"] == "shardserve"


def test_permessage_deflate_negotiated_by_default(serve, backend):
    server = serve(APP, "--http", backend)
    text = "compress me " * 10000

    async def main():
        async with client(server, "/echo") as ws:  # the client offers permessage-deflate
            await ws.send(text)
            assert await ws.recv() == text
            return ws.response.headers.get("sec-websocket-extensions")

    extensions = run(main())
    assert extensions is not None
    assert extensions.startswith("permessage-deflate")


def test_no_permessage_deflate(serve, backend):
    # --ws websockets names the (only) implementation explicitly.
    server = serve(APP, "--http", backend, "--ws", "websockets", "--no-ws-per-message-deflate")
    text = "compress me " * 10000

    async def main():
        async with client(server, "/echo") as ws:
            await ws.send(text)
            assert await ws.recv() == text
            return ws.response.headers.get("sec-websocket-extensions")

    assert run(main()) is None


# 2. Closing -------------------------------------------------------------------------------


def test_close_from_app(serve, backend):
    server = serve(APP, "--http", backend)

    async def closed_by(path):
        async with client(server, path) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            return ws.close_code, ws.close_reason, type(info.value)

    assert run(closed_by("/close?code=4001&reason=bye%20now")) == (
        4001,
        "bye now",
        ConnectionClosedError,
    )
    assert run(closed_by("/close?code=1000&reason=fine")) == (1000, "fine", ConnectionClosedOK)


def test_close_from_client_reaches_the_app(serve, backend):
    server = serve(APP, "--http", backend)

    async def main():
        async with client(server, "/record?id=c1") as ws:
            await ws.send("one")
            assert await ws.recv() == "got 1"
            await ws.send(b"two")
            assert await ws.recv() == "got 2"
            await ws.close(4002, "client bye")
            assert ws.close_code == 4002  # the server echoed the client's close

    run(main())
    wait_event(server, r"c1 disconnect code=4002 reason='client bye' messages=2$")

    # A close frame without a code: the app sees 1005.
    ws = RawWebSocket(server, "/record?id=c2")
    try:
        ws.send(Opcode.TEXT, b"x")
        assert ws.read_data_frame() == (Opcode.TEXT, b"got 1", True)
        ws.send(Opcode.CLOSE, b"")
        opcode, payload, _ = ws.read_data_frame()
        assert opcode is Opcode.CLOSE
        assert payload == b""  # answered in kind
    finally:
        ws.close()
    wait_event(server, r"c2 disconnect code=1005 reason='' messages=1$")


def test_tcp_drop_gives_1006(serve, backend):
    server = serve(APP, "--http", backend)
    ws = RawWebSocket(server, "/record?id=fin")
    ws.send(Opcode.BINARY, b"abc")
    assert ws.read_data_frame() == (Opcode.TEXT, b"got 1", True)
    ws.close()  # FIN, no close frame
    wait_event(server, r"fin disconnect code=1006 reason='' messages=1$")

    ws = RawWebSocket(server, "/record?id=rst")
    ws.send(Opcode.TEXT, b"abc")
    assert ws.read_data_frame() == (Opcode.TEXT, b"got 1", True)
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close()  # RST
    wait_event(server, r"rst disconnect code=1006 reason='' messages=1$")


# 3. How the app ends the handshake or the connection --------------------------------------


def test_refusals_before_accept(serve, backend):
    server = serve(APP, "--http", backend)

    async def refused(path):
        with pytest.raises(InvalidStatus) as info:
            async with client(server, path):
                pass
        return info.value.response

    response = run(refused("/reject"))
    assert response.status_code == 403
    response = run(refused("/deny"))
    assert response.status_code == 401
    assert response.headers["x-denied"] == "yes"
    assert response.headers["content-type"] == "text/plain"
    assert response.body == b"go away"
    assert "Traceback" not in server.output

    response = run(refused("/return-before"))
    assert response.status_code == 500
    server.wait_for("ASGI callable returned without sending handshake")

    response = run(refused("/raise-before"))
    assert response.status_code == 500
    server.wait_for("RuntimeError: boom before accept")

    # Each refusal ends its connection; the server still serves.
    async def echo():
        async with client(server, "/echo") as ws:
            await ws.send("alive")
            return await ws.recv()

    assert run(echo()) == "alive"


def test_denial_response_on_a_raw_socket(serve, backend):
    """The denial is a complete HTTP response, framed by the server, then the close."""
    server = serve(APP, "--http", backend)
    data = exchange(server, handshake("/deny"))
    (response,) = parse_responses(data)
    assert response.status == 401
    assert response.header("x-denied") == "yes"
    assert response.header("content-length") == "7"
    assert response.body == b"go away"

    (response,) = parse_responses(exchange(server, handshake("/reject")))
    assert response.status == 403


def test_app_ending_after_accept(serve, backend):
    server = serve(APP, "--http", backend)

    async def closed_by(path):
        async with client(server, path) as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code

    assert run(closed_by("/raise-after")) == 1011
    server.wait_for("RuntimeError: boom after accept")
    assert run(closed_by("/return-after")) == 1000


def test_send_after_close_raises_in_the_app(serve, backend):
    server = serve(APP, "--http", backend)

    async def main():
        async with client(server, "/send-after-close?id=s1") as ws:
            await ws.close(1000)

    run(main())
    wait_event(server, r"s1 send-after-close ClientDisconnected oserror=True$")

    ws = RawWebSocket(server, "/send-after-close?id=s2")
    ws.close()  # the TCP connection just drops
    wait_event(server, r"s2 send-after-close ClientDisconnected oserror=True$")
    assert "Traceback" not in server.output


# 4. Message size limit --------------------------------------------------------------------


def test_max_size(serve, backend):
    server = serve(APP, "--http", backend, "--ws-max-size", "1000")

    async def outcome(message, compression="deflate"):
        async with client(server, "/echo", compression=compression) as ws:
            await ws.send(message)
            try:
                return await ws.recv()
            except ConnectionClosed:
                return ws.close_code

    small = os.urandom(900)
    assert run(outcome(small)) == small
    exact = os.urandom(1000)
    assert run(outcome(exact, compression=None)) == exact
    assert run(outcome(os.urandom(2000))) == 1009
    assert run(outcome(os.urandom(2000), compression=None)) == 1009
    # Compresses to a few bytes, but is 2000 once inflated.
    assert run(outcome("x" * 2000)) == 1009
    # Each fragment fits, the message does not.
    assert run(outcome([b"a" * 600, b"b" * 600], compression=None)) == 1009


# 5. Pings ---------------------------------------------------------------------------------


def test_pings_answered_keep_the_connection(serve, backend):
    server = serve(APP, "--http", backend, "--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5")

    async def main():
        async with client(server, "/echo", ping_interval=None) as ws:
            waiter = await ws.ping(b"are you there")
            latency = await asyncio.wait_for(waiter, 5)
            assert latency >= 0
            # The server pings every 0.5 s; the client answers, so it stays open.
            await asyncio.sleep(2.5)
            await ws.send("still open")
            assert await ws.recv() == "still open"

    run(main())


def test_unanswered_pings_close_the_connection(serve, backend):
    server = serve(APP, "--http", backend, "--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5")
    ws = RawWebSocket(server, "/record?id=p1")
    started = time.monotonic()
    seen = []
    try:
        for _ in range(20):
            try:
                opcode, payload, _ = ws.read_frame(timeout=max(0.1, started + 5 - time.monotonic()))
            except (EOFError, ConnectionResetError):
                seen.append("eof")
                break
            seen.append(opcode)
            if opcode is Opcode.CLOSE:
                assert Close.parse(payload).code == 1011
                break
        elapsed = time.monotonic() - started
    finally:
        ws.close()
    assert seen[0] is Opcode.PING, seen
    assert seen[-1] in (Opcode.CLOSE, "eof"), seen
    assert set(seen[1:-1]) <= {Opcode.PING}, seen
    assert elapsed < 3.0, f"closed after {elapsed:.1f} s"
    wait_event(server, r"p1 disconnect code=1006 reason='' messages=0$")


# 6. Shutdown ------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_shutdown_closes_with_1012(serve, backend, signum):
    server = serve(APP, "--http", backend)

    async def main():
        async with client(server, "/echo") as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            server.signal(signum)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code, time.monotonic() - started

    code, elapsed = run(main())
    assert code == 1012
    assert elapsed < 3
    assert server.wait_exit(5) == 0


# 7. Plain HTTP and bad handshakes ---------------------------------------------------------


def test_ws_none_serves_upgrades_as_http(serve, backend):
    server = serve(APP, "--http", backend, "--ws", "none")
    with connect(server) as sock:
        sock.sendall(handshake("/chat"))
        response = read_response(sock)
    assert response.status == 200
    assert response.body == b"http GET /chat upgrade=websocket"

    async def main():
        with pytest.raises(InvalidStatus) as info:
            async with client(server, "/echo"):
                pass
        return info.value.response.status_code

    assert run(main()) == 200


def test_bad_handshakes(serve, backend):
    server = serve(APP, "--http", backend)

    def answer(raw: bytes):
        (response,) = parse_responses(exchange(server, raw))
        return response

    assert answer(handshake("/echo", key=None)).status == 400
    assert answer(handshake("/echo", key="not base64!!")).status == 400
    assert answer(handshake("/echo", key=base64.b64encode(b"short").decode())).status == 400
    response = answer(handshake("/echo", version="8"))
    assert response.status == 426
    assert response.header("sec-websocket-version") == "13"
    # Still serving.
    ws = RawWebSocket(server, "/echo")
    try:
        ws.send(Opcode.TEXT, b"ok")
        assert ws.read_data_frame() == (Opcode.TEXT, b"ok", True)
    finally:
        ws.close()


# 8. Back-pressure -------------------------------------------------------------------------


def test_fast_client_slow_app_keeps_memory_flat(serve, backend):
    """2000 x 64 KiB (128 MiB) sent as fast as the server takes them, to an app that
    sleeps 2 ms per message (~5 s in all).  Without read back-pressure the server
    would hold most of the 128 MiB; with it, at most --ws-max-queue messages."""
    server = serve(APP, "--http", backend, "--no-access-log")
    count, size = 2000, 64 * 1024
    messages = [stamped(i, size) for i in range(count)]

    async def transfer(n):
        async with client(server, "/slow-reader?delay=0.002", compression=None) as ws:
            for message in messages[:n]:
                await ws.send(message)
            await ws.send("done")
            return json.loads(await ws.recv())

    assert run(transfer(20)) == {"count": 20, "bytes": 20 * size, "in_order": True}  # warm-up
    with RssMonitor(server, RSS_BOUND_KIB) as monitor:
        result = run(transfer(count), timeout=25)
    assert result == {"count": count, "bytes": count * size, "in_order": True}
    monitor.check(f"{count * size // MIB} MiB went to a slow app")


def test_max_queue_of_one_delivers_everything_in_order(serve, backend):
    """--ws-max-queue 1: reading stops and resumes around nearly every message."""
    server = serve(APP, "--http", backend, "--ws-max-queue", "1")
    count, size = 300, 4096

    async def main():
        async with client(server, "/slow-reader?delay=0.001", compression=None) as ws:
            for index in range(count):
                await ws.send(stamped(index, size))
            await ws.send("done")
            return json.loads(await ws.recv())

    assert run(main()) == {"count": count, "bytes": count * size, "in_order": True}


def test_fast_app_stalled_client_keeps_memory_flat(serve, backend):
    """The app sends 2000 x 64 KiB (128 MiB) to a raw-socket client that reads nothing
    for 3 s: the app's send() must wait (its progress stops well short), RSS stays
    flat; then the client reads every message, in order."""
    server = serve(APP, "--http", backend, "--no-access-log")
    count, size = 2000, 64 * 1024

    def progress(ident):
        response = httpx.get(f"{server.url}/progress?id={ident}", timeout=5)
        return response.json()["sent"]

    warm = RawWebSocket(server, "/flood?id=warm&count=20&size=65536")  # warm-up
    try:
        for index in range(20):
            assert warm.read_data_frame() == (Opcode.BINARY, stamped(index, size), True)
        assert warm.expect_close().code == 1000
    finally:
        warm.close()
    assert progress("warm") == 20

    with RssMonitor(server, RSS_BOUND_KIB) as monitor:
        ws = RawWebSocket(server, f"/flood?id=big&count={count}&size={size}")
        try:
            time.sleep(1.5)
            stalled_at = progress("big")
            time.sleep(1.5)
            assert progress("big") == stalled_at, "send() returned while nobody read"
            assert 0 < stalled_at < count // 2, stalled_at
            deadline = time.monotonic() + 20
            for index in range(count):
                assert time.monotonic() < deadline
                opcode, payload, fin = ws.read_data_frame()
                assert (opcode, fin, len(payload)) == (Opcode.BINARY, True, size), index
                assert payload == stamped(index, size), index
            assert ws.expect_close().code == 1000
        finally:
            ws.close()
    assert progress("big") == count
    monitor.check(f"{count * size // MIB} MiB went to a stalled client (stalled at {stalled_at})")


def test_pings_from_a_client_that_never_reads_keep_memory_bounded(serve, backend):
    """A client sends pings and never reads the pongs (issue 14: 1M pings grew a shard
    by 205 MiB, the pongs piling up in the write buffer).  Once the write buffer is
    above its high-water mark the server stops reading that client, so the pings
    back up in the kernel and the client blocks: up to 400k pings (52 MB) are sent,
    RSS stays within 20 MiB of idle, and the connection still works afterwards."""
    server = serve(APP, "--http", backend, "--no-access-log")
    ws = RawWebSocket(server, "/echo")
    ping = Frame(Opcode.PING, b"p" * 125).serialize(mask=True)
    batch = memoryview(ping * 512)
    sent = 0  # bytes
    try:
        with RssMonitor(server, RSS_BOUND_KIB) as monitor:
            ws.sock.settimeout(2.0)
            deadline = time.monotonic() + 30
            while sent < 400_000 * len(ping) and time.monotonic() < deadline:
                try:
                    sent += ws.sock.send(batch[sent % len(batch) :])
                except TimeoutError:
                    break  # the server stopped reading: the kernel buffers are full
            time.sleep(0.5)
        growth = monitor.peak - monitor.idle
        assert monitor.samples >= 10
        pings, partial = divmod(sent, len(ping))
        assert growth < 20 * 1024, f"RSS grew by {growth} KiB after {pings} unread pings"
        # Reading again, the client gets a pong for every ping, then its echo.
        pongs = 0
        deadline = time.monotonic() + 60
        while pongs < pings:
            assert time.monotonic() < deadline, f"{pongs} pongs of {pings}"
            opcode, payload, _ = ws.read_frame()
            assert (opcode, payload) == (Opcode.PONG, b"p" * 125)
            pongs += 1
        if partial:  # the last ping, cut short when the client blocked
            ws.sock.sendall(ping[partial:])
            assert ws.read_frame() == (Opcode.PONG, b"p" * 125, True)
        ws.send(Opcode.TEXT, b"still here")
        assert ws.read_frame() == (Opcode.TEXT, b"still here", True)
    finally:
        ws.close()


# 9. Several shards ------------------------------------------------------------------------


def test_two_shards_serve_websockets(serve, backend):
    server = serve(APP, "--http", backend, "--shards", "2")
    shard_pids = {int(pid) for pid in re.findall(r"Started shard \d+ \[(\d+)\]", server.output)}
    assert len(shard_pids) == 2, server.output

    async def main():
        pids = set()
        connections = []
        try:
            for index in range(40):
                ws = await client(server, "/pid")
                connections.append(ws)
                pids.add(int((await ws.recv()).split()[1]))
                await ws.send(f"echo {index}")
                assert await ws.recv() == f"echo {index}"
                if len(pids) == 2 and index >= 7:
                    break
            # Every connection is still open and echoing.
            for index, ws in enumerate(connections):
                await ws.send(b"again %d" % index)
                assert await ws.recv() == b"again %d" % index
        finally:
            for ws in connections:
                await ws.close()
        return pids

    assert run(main(), timeout=20) == shard_pids


# 10. TLS ----------------------------------------------------------------------------------


def test_wss(serve, backend, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    keyfile, certfile = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    server = serve(
        APP, "--http", backend, "--ssl-keyfile", str(keyfile), "--ssl-certfile", str(certfile)
    )
    assert server.scheme == "https"
    big = os.urandom(MIB)

    async def main():
        async with client(server, "/scope?tls=1", ssl=context) as ws:
            scope = json.loads(await ws.recv())
            await ws.send("secure")
            assert await ws.recv() == "secure"
            await ws.send(big)
            assert await ws.recv() == big
        return scope

    scope = run(main())
    assert scope["scheme"] == "wss"
    assert scope["query_string"] == "tls=1"


def test_websockets_and_h2_load_with_a_shards_first_connection_that_needs_them(serve):
    """A shard that never sees a WebSocket (or HTTP/2) never imports the library: about
    3 MB (1.6 MB) less in every subinterpreter shard.  The one-shard server hosts its
    shard in the coordinator's own process, so this sees the shard's modules."""
    import httpx
    from websockets.sync.client import connect as ws_connect

    server = serve("apps.modules:app")
    loaded = httpx.get(server.url + "/", timeout=5).json()
    assert loaded == {"websockets": False, "h2": False, "hpack": False, "email": False}, loaded
    with ws_connect(f"ws://127.0.0.1:{server.port}/", open_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
    assert httpx.get(server.url + "/", timeout=5).json()["websockets"] is True
    with httpx.Client(http1=False, http2=True) as client:
        assert client.get(server.url + "/", timeout=5).json()["h2"] is True
