"""The one connection interface of a shard: ``shard/connection.py``.

Every member of ``ShardState.connections`` (an HTTP connection, or the WebSocket
session it hands over to) is a ``Connection``, and all of them time out by the
shard's one clock, ``ShardState.now``.  These tests run a real ``Shard`` (its own
event loop, real sockets) in a thread of the test process, so that they can watch
its state: the members added to ``connections``, and the clock.
"""

from __future__ import annotations

import base64
import inspect
import socket
import struct
import threading
import time

import pytest
from websockets.frames import Close, Frame, Opcode

from serving import BACKENDS
from shardserve.config import Config
from shardserve.shard.connection import Connection, WriteFlow
from shardserve.shard.http.protocol import HttpConnection
from shardserve.shard.server import Shard
from shardserve.shard.state import ShardState
from shardserve.shard.ws import session as ws_session
from shardserve.shard.ws.session import WebSocketSession

KEY = base64.b64encode(b"0123456789abcdef").decode()
# How far the shard's clock moves per tick of the sped-up clock (real: 0.25 s).
FAST_TICK = 4.0

EVENTS: list[tuple] = []  # what the app saw, in order


async def app(scope, receive, send) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            EVENTS.append(("disconnect", message["code"]))
            return
        if message.get("text") == "close":
            await send({"type": "websocket.close", "code": 1000})
        else:
            await send({"type": "websocket.send", "text": message.get("text")})


class RecordingSet(set):
    """Stands in for ``ShardState.connections``: notes every member added."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[tuple[type, bool]] = []

    def add(self, conn) -> None:
        self.added.append((type(conn), isinstance(conn, Connection)))
        super().add(conn)


class ShardThread:
    """A real shard on 127.0.0.1, serving ``app`` from a thread of this process."""

    def __init__(self, fast_clock: bool = False, **settings) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        config = Config(app="tests:app", lifespan="off", access_log=False, **settings)
        self.shard = Shard(config, [self.listener], app=app)
        self.shard.on_ready = self._on_ready
        self.fast_clock = fast_clock
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.shard.run()
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__/__exit__
            self.failure = exc
        finally:
            self.ready.set()

    def _on_ready(self, shard: Shard) -> None:
        state = shard.state
        state.connections = self.connections = RecordingSet()
        if self.fast_clock:
            # The shard's clock runs FAST_TICK seconds per 0.25 s tick: timeouts that
            # follow it fire many times sooner than they would by the real clock.
            ahead = [0.0]

            class FastClockState(ShardState):
                __slots__ = ()

                def tick(self) -> None:
                    super().tick()
                    ahead[0] += FAST_TICK - 0.25
                    self.now += ahead[0]

            state.__class__ = FastClockState  # (ShardState is slotted: no per-object tick)
        self.ready.set()

    def __enter__(self) -> ShardThread:
        self.thread.start()
        assert self.ready.wait(10), "the shard did not start"
        assert self.failure is None, self.failure
        return self

    def __exit__(self, *exc) -> None:
        self.shard.force_stop()
        self.thread.join(10)
        self.listener.close()
        assert not self.thread.is_alive(), "the shard did not stop"
        assert self.failure is None, self.failure

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)


def websocket(shard: ShardThread) -> RawClient:
    sock = shard.connect()
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode("latin-1")
    )
    client = RawClient(sock)
    head = client.read_head()
    assert head.startswith(b"HTTP/1.1 101"), head
    return client


class RawClient:
    """Reads the server's frames and never answers a ping or a close."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _need(self, count: int, deadline: float) -> None:
        while len(self.buffer) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk

    def _take(self, count: int, deadline: float) -> bytes:
        self._need(count, deadline)
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_head(self) -> bytes:
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in self.buffer:
            self._need(len(self.buffer) + 1, deadline)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def read_frame(self, deadline: float) -> tuple[Opcode, bytes]:
        first, second = self._take(2, deadline)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._take(2, deadline))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._take(8, deadline))
        return Opcode(first & 0x0F), self._take(length, deadline)

    def read_until_closed(self, deadline: float) -> list:
        """The frames the server sends until it drops the connection (then "eof")."""
        seen: list = []
        while True:
            try:
                seen.append(self.read_frame(deadline))
            except (EOFError, ConnectionResetError):
                seen.append("eof")
                return seen
            except TimeoutError:
                seen.append("still open at the deadline")
                return seen

    def send_text(self, text: str) -> None:
        self.sock.sendall(Frame(Opcode.TEXT, text.encode()).serialize(mask=True))


# The interface ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [HttpConnection, WebSocketSession])
def test_both_kinds_declare_the_connection_interface(cls):
    assert issubclass(cls, Connection)
    for name in ("check_timeouts", "drain", "abort", "long_lived"):
        ours = inspect.signature(getattr(Connection, name))
        theirs = inspect.signature(getattr(cls, name))
        assert list(theirs.parameters) == list(ours.parameters), (cls, name)
    # One write flow, not two copies of it.
    for name in ("pause_writing", "resume_writing", "wait_writable", "wake_writer"):
        assert getattr(cls, name) is getattr(WriteFlow, name), (cls, name)


def test_http_connection_keeps_its_slots():
    """WriteFlow gives the per-connection object no instance dict."""
    assert HttpConnection.__dictoffset__ == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_member_of_connections_is_a_connection(backend):
    with ShardThread(http=backend) as shard:
        with shard.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert RawClient(sock).read_head().startswith(b"HTTP/1.1 200")
        client = websocket(shard)
        try:
            client.send_text("hello")
            assert client.read_frame(time.monotonic() + 5) == (Opcode.TEXT, b"hello")
        finally:
            client.sock.close()
        added = shard.connections.added
    kinds = [kind for kind, _ in added]
    # The plain request, the upgrade request, and the session it handed over to.
    assert kinds == [HttpConnection, HttpConnection, WebSocketSession], kinds
    assert all(ok for _, ok in added), added


# One clock -----------------------------------------------------------------------------


def test_ping_timeout_fires_by_the_shards_clock():
    """Ping every 8 s, 8 s to answer: by the real clock, ~16 s before the server gives
    up; by the shard's (sped-up) clock, a few ticks."""
    EVENTS.clear()
    with ShardThread(fast_clock=True, ws_ping_interval=8.0, ws_ping_timeout=8.0) as shard:
        client = websocket(shard)
        started = time.monotonic()
        try:
            seen = client.read_until_closed(deadline=started + 8)
        finally:
            client.sock.close()
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 5
        while not EVENTS and time.monotonic() < deadline:
            time.sleep(0.02)
    assert not any(isinstance(s, str) and s != "eof" for s in seen)
    assert seen[0][0] is Opcode.PING, seen
    assert seen[-2][0] is Opcode.CLOSE and Close.parse(seen[-2][1]).code == 1011, seen
    assert seen[-1] == "eof", seen
    assert elapsed < 6.0, f"closed after {elapsed:.1f} s"
    assert EVENTS == [("disconnect", 1006)]


def test_close_timeout_fires_by_the_shards_clock():
    """The app closes and the client never answers: after CLOSE_TIMEOUT (10 s) of the
    shard's clock the connection is dropped; a few ticks of the sped-up clock."""
    EVENTS.clear()
    assert ws_session.CLOSE_TIMEOUT >= 10
    with ShardThread(fast_clock=True, ws_ping_interval=None) as shard:
        client = websocket(shard)
        try:
            client.send_text("close")
            started = time.monotonic()
            seen = client.read_until_closed(deadline=started + 8)
        finally:
            client.sock.close()
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 5
        while not EVENTS and time.monotonic() < deadline:
            time.sleep(0.02)
    assert seen[0][0] is Opcode.CLOSE and Close.parse(seen[0][1]).code == 1000, seen
    assert seen[1:] == ["eof"], seen
    assert elapsed < 6.0, f"dropped after {elapsed:.1f} s"
    assert EVENTS == [("disconnect", 1006)]
