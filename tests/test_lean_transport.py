"""LeanEventLoop and LeanSocketTransport (shardserve/shard/loop.py) on real loopback sockets:
what a protocol and the peer observe must stay CPython's (ordering across the partial-send
fallback, flow control, write's errors, reading, pausing, EOF, protocol switches), while
the loop calls the read method directly.  Every test runs on new_event_loop("asyncio").
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct

import pytest

from shardserve.shard.loop import (
    LeanEventLoop,
    LeanSocketTransport,
    compiled_read_ready,
    new_event_loop,
)

pytestmark = pytest.mark.timeout(30)
WAIT = 5.0  # seconds any single wait may take


def run(main) -> None:
    """Run ``main()`` on a fresh new_event_loop("asyncio"); the loop must report no errors."""
    errors = []
    with asyncio.Runner(loop_factory=lambda: new_event_loop("asyncio")) as runner:
        assert type(runner.get_loop()) is LeanEventLoop
        runner.get_loop().set_exception_handler(lambda loop, context: errors.append(context))
        runner.run(asyncio.wait_for(main(), 4 * WAIT))
    assert errors == []


class Record(asyncio.BaseProtocol):
    def __init__(self):
        self.data = bytearray()
        self.events = []
        self.arrived = asyncio.Event()
        self.lost = asyncio.get_running_loop().create_future()

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.lost.set_result(exc)

    def got(self, data):
        self.data += data
        self.arrived.set()

    async def received(self, n: int) -> bytes:
        while len(self.data) < n:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), WAIT)
        return bytes(self.data)


class Plain(Record, asyncio.Protocol):
    def data_received(self, data):
        self.got(data)


class Buffered(Record, asyncio.BufferedProtocol):
    def __init__(self):
        super().__init__()
        self.buffer = bytearray(2)  # small: one message takes several get_buffer calls
        self.gets = 0

    def get_buffer(self, sizehint):
        self.gets += 1
        return self.buffer

    def buffer_updated(self, nbytes):
        self.got(self.buffer[:nbytes])


def reader_callback(transport):
    """The callback the loop's selector calls when the transport's socket is readable,
    and its arguments."""
    handle = transport._loop._selector.get_key(transport._sock_fd).data[0]
    return handle._callback, handle._args


def plain_reader(transport):
    """The read callback for a plain protocol: _transport.c's where it is built."""
    if compiled_read_ready is not None:
        return compiled_read_ready, (transport,)
    return transport._read_ready__data_received, ()


def buffered_reader(transport):
    return transport._read_ready__get_buffer, ()


def loopback(rcvbuf=None):
    """(accepted socket, non-blocking peer socket) of a new loopback TCP connection."""
    peer = socket.socket()
    if rcvbuf:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer.connect(listener.getsockname())
        sock, _ = listener.accept()
    peer.setblocking(False)
    return sock, peer


@contextlib.asynccontextmanager
async def connected(protocol, *, sndbuf=None, rcvbuf=None):
    """(transport, peer): ``protocol`` on the accepted end of a loopback connection."""
    sock, peer = loopback(rcvbuf)
    with sock, peer:
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
        assert type(transport) is LeanSocketTransport
        try:
            yield transport, peer
        finally:
            last = transport.get_protocol()
            transport.abort()
            last = last if isinstance(last, Record) else protocol
            await asyncio.wait_for(asyncio.shield(last.lost), WAIT)


async def recv(peer, n: int | None = None) -> bytes:
    """``n`` bytes from ``peer`` (fewer at EOF), or everything up to EOF."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while n is None or len(data) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(peer, 1 << 20), WAIT)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_plain_tcp_transports_are_lean_and_register_read_cb():
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Plain, "127.0.0.1", 0)
        async with server:
            transport, client = await loop.create_connection(
                Plain, *server.sockets[0].getsockname()
            )
            assert type(transport) is LeanSocketTransport
            # CPython's own transport registers _read_ready, which only calls this:
            assert reader_callback(transport) == transport.reader()
            assert reader_callback(transport) == plain_reader(transport)
            transport.close()
            await asyncio.wait_for(client.lost, WAIT)

    run(main)


def tls_contexts():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


@pytest.mark.parametrize("via_start_tls", [False, True], ids=["ssl", "start_tls"])
def test_tls_transports_are_cpythons(via_start_tls):
    """TLS as shardserve serves it (connect_accepted_socket(ssl=...)), and by start_tls,
    which pauses a lean transport and switches it to a buffered SSLProtocol."""
    server_context, client_context = tls_contexts()

    async def main():
        loop, app = asyncio.get_running_loop(), Plain()
        sock, peer = loopback()
        peer.settimeout(WAIT)
        if via_start_tls:
            raw, _ = await loop.connect_accepted_socket(lambda: app, sock)
            upgrade = loop.start_tls(raw, app, server_context, server_side=True)
        else:
            upgrade = loop.connect_accepted_socket(lambda: app, sock, ssl=server_context)
        upgrade = asyncio.ensure_future(upgrade)
        with (
            sock,
            client_context.wrap_socket(
                peer, server_hostname="127.0.0.1", do_handshake_on_connect=False
            ) as client,
        ):
            await asyncio.to_thread(client.do_handshake)
            tls = await asyncio.wait_for(upgrade, WAIT)
            if via_start_tls:
                assert reader_callback(raw) == buffered_reader(raw)
            else:
                tls = tls[0]
            assert not isinstance(tls, LeanSocketTransport)
            await asyncio.to_thread(client.sendall, b"hello")
            assert await app.received(5) == b"hello"
            tls.write(b"world")
            assert await asyncio.to_thread(client.recv, 5) == b"world"
            tls.abort()
            await asyncio.wait_for(app.lost, WAIT)

    run(main)


def test_writes_arrive_in_order_across_the_partial_send_fallback_with_flow_control():
    big = bytes(range(256)) * (8 * 4096)  # 8 MiB, far more than both socket buffers
    tail = [b"bytes", bytearray(b"bytearray"), memoryview(b"memoryview"), b"!"]

    async def main():
        protocol = Plain()
        async with connected(protocol, sndbuf=16384, rcvbuf=16384) as (transport, peer):
            transport.write(b"")
            transport.write(b"hello")  # sent whole, straight away: nothing buffered
            assert transport.get_write_buffer_size() == 0
            assert await recv(peer, 5) == b"hello"
            transport.set_write_buffer_limits(high=65536, low=16384)
            transport.write(big)  # a partial send: the rest is buffered by CPython's write
            assert 0 < transport.get_write_buffer_size() <= len(big)
            assert protocol.events == ["pause"]
            # Read some without yielding to the loop: the socket has room again, but the
            # transport's buffer is not empty, so what follows must queue behind it.
            head = bytearray()
            with contextlib.suppress(BlockingIOError):
                while len(head) < 1 << 20:
                    head += peer.recv(1 << 16)
            for data in tail:
                transport.write(data)
            expected = big + b"".join(tail)
            assert transport.get_write_buffer_size() > 0
            assert head + await recv(peer, len(expected) - len(head)) == expected
            assert transport.get_write_buffer_size() == 0
            assert protocol.events == ["pause", "resume"]
            transport.write(b"after")  # drained: back to the direct send
            assert transport.get_write_buffer_size() == 0
            assert await recv(peer, 5) == b"after"

    run(main)


@pytest.mark.parametrize("end", ["close", "write_eof"])
def test_write_after_close_is_dropped_after_write_eof_raises(end):
    async def main():
        protocol = Plain()
        async with connected(protocol) as (transport, peer):
            for bad in ("text", 1, None, [b"x"]):
                with pytest.raises(TypeError):
                    transport.write(bad)
            transport.write(b"last")
            getattr(transport, end)()
            for data in (b"x", bytearray(b"x"), memoryview(b"x")):
                if end == "close":
                    transport.write(data)  # dropped, like CPython's
                else:
                    with pytest.raises(RuntimeError, match="write_eof"):
                        transport.write(data)
            assert await recv(peer) == b"last"
            if end == "close":
                assert await asyncio.wait_for(protocol.lost, WAIT) is None

    run(main)


@pytest.mark.parametrize("size", [1000, 4 << 20], ids=["direct", "buffered"])
def test_peer_reset_during_writes(size):
    async def main():
        protocol = Plain()
        async with connected(protocol, sndbuf=16384) as (transport, peer):
            transport.pause_reading()  # let the write path, not the read path, meet the reset
            transport.write(b"x" * size)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()
            for _ in range(200):
                transport.write(b"y" * 1000)
                await asyncio.sleep(0.005)
                if protocol.lost.done():
                    break
            exc = await asyncio.wait_for(protocol.lost, WAIT)
            assert exc is None or isinstance(exc, OSError)
            for _ in range(8):  # after the loss: dropped (CPython logs), never raised
                transport.write(b"z")
            assert transport.get_write_buffer_size() == 0
        await asyncio.sleep(0.01)  # the loop still runs

    run(main)


def test_reading_pausing_resuming_and_eof():
    async def main():
        protocol = Plain()
        loop = asyncio.get_running_loop()
        async with connected(protocol) as (transport, peer):
            await loop.sock_sendall(peer, b"abc")
            assert await protocol.received(3) == b"abc"
            transport.pause_reading()
            assert not transport.is_reading()
            await loop.sock_sendall(peer, b"def")
            await asyncio.sleep(0.05)
            assert protocol.data == b"abc"
            transport.resume_reading()  # CPython passes _read_ready: the lean one is kept
            assert reader_callback(transport) == transport.reader()
            assert await protocol.received(6) == b"abcdef"
            peer.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(protocol.lost, WAIT) is None  # eof_received: None
            assert protocol.events == ["eof"]

    run(main)


def test_set_protocol_switches_the_read_method():
    async def main():
        loop = asyncio.get_running_loop()
        first, second, third, fourth = Plain(), Buffered(), Plain(), Buffered()
        async with connected(first) as (transport, peer):
            await loop.sock_sendall(peer, b"one")
            assert await first.received(3) == b"one"

            transport.set_protocol(second)  # to buffered, while reading
            assert reader_callback(transport) == buffered_reader(transport)
            await loop.sock_sendall(peer, b"two")
            assert await second.received(3) == b"two"
            assert second.gets >= 2  # the 2-byte buffer took more than one read

            transport.set_protocol(third)  # back to plain, while reading
            assert reader_callback(transport) == plain_reader(transport)
            await loop.sock_sendall(peer, b"three")
            assert await third.received(5) == b"three"

            transport.pause_reading()  # while paused: registered again on resume
            transport.set_protocol(fourth)
            transport.resume_reading()
            assert reader_callback(transport) == buffered_reader(transport)
            await loop.sock_sendall(peer, b"four")
            assert await fourth.received(4) == b"four"
            assert (first.data, second.data, third.data) == (b"one", b"two", b"three")

    run(main)


def test_transport_on_a_socket_that_already_has_a_reader():
    """CPython's transport replaces a reader already registered for its fd; so must this."""

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with a, b:
            loop.add_reader(a.fileno(), lambda: None)
            protocol = Plain()
            try:
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, a)
            except BaseException:
                loop.remove_reader(a.fileno())
                raise
            b.sendall(b"hi")
            assert await protocol.received(2) == b"hi"
            transport.close()
            await asyncio.wait_for(protocol.lost, WAIT)

    run(main)


def test_get_debug_and_is_running_follow_the_loop():
    loop = new_event_loop("asyncio")
    try:
        assert isinstance(loop, LeanEventLoop)
        assert loop.get_debug() is False and loop.is_running() is False
        loop.set_debug(True)
        assert loop.get_debug() is True
        loop.set_debug(False)
        assert loop.get_debug() is False

        async def inside() -> tuple[bool, bool]:
            return loop.is_running(), asyncio.get_running_loop() is loop

        assert loop.run_until_complete(inside()) == (True, True)
        assert loop.is_running() is False
    finally:
        loop.close()


def test_cancelled_readers_are_dropped_and_live_ones_run():
    calls: list = []
    loop = new_event_loop("asyncio")
    left, right = socket.socketpair()
    try:
        loop.add_reader(left.fileno(), calls.append, "read")
        right.send(b"x")
        loop.run_until_complete(asyncio.sleep(0.05))
        assert calls and set(calls) == {"read"}
        # A reader cancelled behind the loop's back (its handle, not remove_reader):
        # the next event removes it instead of running it.
        key = loop._selector.get_key(left.fileno())
        key.data[0].cancel()
        calls.clear()
        loop.run_until_complete(asyncio.sleep(0.05))
        assert calls == []
        with pytest.raises(KeyError):
            loop._selector.get_key(left.fileno())
    finally:
        loop.close()
        left.close()
        right.close()


class Events(asyncio.Protocol):
    """Every call a transport makes to its protocol, in order; fails on b"boom"."""

    def __init__(self) -> None:
        self.events: list = []
        self.changed = asyncio.Event()
        self.lost = asyncio.get_running_loop().create_future()

    def note(self, event) -> None:
        self.events.append(event)
        self.changed.set()

    def connection_made(self, transport) -> None:
        self.note("made")

    def data_received(self, data: bytes) -> None:
        self.note(("data", data))
        if data == b"boom":
            raise ValueError("boom")

    def eof_received(self) -> None:
        self.note("eof")

    def connection_lost(self, exc) -> None:
        self.note(("lost", type(exc).__name__ if exc is not None else None))
        self.lost.set_result(None)


def read_path(loop_factory, ending: str) -> tuple[list, list]:
    """(protocol events, loop error messages) of one connection whose peer sends b"hi",
    then ends it: ``boom`` (the protocol raises), ``reset`` or ``eof``."""
    errors: list = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: errors.append(context["message"]))
        sock, peer = loopback()
        with sock, peer:
            protocol = Events()
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
            peer.send(b"hi")
            while ("data", b"hi") not in protocol.events:
                protocol.changed.clear()
                await asyncio.wait_for(protocol.changed.wait(), WAIT)
            if ending == "boom":
                peer.send(b"boom")
            elif ending == "reset":
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                peer.close()
            else:
                peer.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(protocol.lost, WAIT)
            transport.close()
            return protocol.events

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        events = runner.run(main())
    return events, errors


@pytest.mark.parametrize("ending", ["boom", "reset", "eof"])
def test_the_read_path_does_what_cpythons_does(ending):
    lean = read_path(lambda: new_event_loop("asyncio"), ending)
    cpython = read_path(asyncio.SelectorEventLoop, ending)
    assert lean == cpython
    assert lean[0][:2] == ["made", ("data", b"hi")]
