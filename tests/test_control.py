"""The control channel's schema, codecs and framing, over real socketpairs.

Every message type round-trips through both codecs (the coordinator's validating
MsgspecCodec and the stdlib JsonCodec a shard may use instead), each codec decodes
the other's output, and both refuse the same malformed input with MessageError.
FrameReader is checked on every split of a byte stream; ``Channel`` runs on real
event loops (asyncio and uvloop) over a socketpair, with real file descriptors;
``send_blocking``/``receive_blocking`` are what the template and a starting shard use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import socket
import struct
import threading
import time

import pytest
import uvloop

from shardserve.config import Config
from shardserve.control import (
    MAX_FRAME,
    Channel,
    FrameReader,
    frame,
    receive_blocking,
    send_blocking,
)
from shardserve.messages import (
    MESSAGE_TYPES,
    Adopt,
    Configure,
    Drain,
    Fatal,
    Heartbeat,
    JsonCodec,
    MessageError,
    MsgspecCodec,
    Ready,
    Retire,
    Spawn,
    Spawned,
    Stats,
    Stop,
)

CODECS = {"msgspec": MsgspecCodec(), "json": JsonCodec()}
# (sender's codec, receiver's codec): the coordinator always speaks msgspec.
CODEC_PAIRS = [("msgspec", "msgspec"), ("json", "json"), ("msgspec", "json"), ("json", "msgspec")]

SAMPLES = [
    Ready(index=1, pid=4242, generation=3),
    Heartbeat(index=0, generation=7),
    Stats(
        index=1,
        generation=2,
        requests=10,
        connections=4,
        parse_errors=1,
        app_errors=2,
        timeouts=3,
        open_connections=5,
        active_requests=6,
        bytes_in=1234,
        responses={"GET": [0, 0, 9, 0, 1, 0, 0, 0, 0, 0]},
        latency=[1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        latency_sum=0.0125,
        pid=4242,
        mode="subinterpreter",
        cpu_seconds=1.5,
        rss_bytes=None,
        uptime_seconds=12.25,
    ),
    Stats(index=0, generation=1),
    Retire(index=0, generation=1, reason="served 1000 requests"),
    Fatal(
        index=1, generation=1, error="ImportError: no module 'ünï' ✓ 😀", starting=True, exit_code=3
    ),
    Fatal(index=0, generation=2, error="boom", starting=False),
    Configure(
        index=1,
        generation=2,
        config=dataclasses.asdict(
            Config(app="apps.echo:scope_json", headers=["x-a:1", "x-b:2"], shards=2, cpus="0-1")
        ),
        cpus=[1],
        max_requests=1000,
        heartbeat_seconds=0.5,
    ),
    Configure(index=0, generation=1, config={}),
    Drain(close_idle=False),
    Drain(),
    Stop(),
    Adopt(listener=3),
    Spawn(index=2, generation=5, listeners=2),
    Spawned(index=2, generation=5, pid=999),
]
PLAIN_SAMPLES = [m for m in SAMPLES if not getattr(m, "wanted_fds", 0)]


def _id(message) -> str:
    return type(message).__name__


def test_samples_cover_every_message_type():
    assert {m.TAG for m in SAMPLES} == set(MESSAGE_TYPES)
    assert all(MESSAGE_TYPES[m.TAG] is type(m) for m in SAMPLES)


# Codecs --------------------------------------------------------------------------------


@pytest.mark.parametrize("message", SAMPLES, ids=_id)
@pytest.mark.parametrize(("encoder", "decoder"), CODEC_PAIRS)
def test_round_trip_within_and_across_codecs(message, encoder, decoder):
    payload = CODECS[encoder].encode(message)
    decoded = CODECS[decoder].decode(payload)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", SAMPLES, ids=_id)
def test_wire_form_is_one_tagged_object_without_fds(message):
    expected = {"type": message.TAG}
    for f in dataclasses.fields(message):
        if f.name != "fds":
            expected[f.name] = getattr(message, f.name)
    for codec in CODECS.values():
        wire = json.loads(codec.encode(message))
        assert wire == expected, codec.name


BAD_PAYLOADS = {
    # Not JSON.
    "empty": b"",
    "garbage": b"hello",
    "truncated": b'{"type":"stop"',
    "trailing": b'{"type":"stop"} x',
    "binary": b"\xff\xfe\x00\x01",
    "nan": b'{"type":"config","index":0,"generation":1,"config":{},"heartbeat_seconds":NaN}',
    "infinity": b'{"type":"config","index":0,"generation":1,"config":{"a":Infinity}}',
    "minus-infinity": b'{"type":"stats","index":0,"generation":1,"requests":-Infinity}',
    "invalid-utf8": b'{"type":"retire","index":0,"generation":1,"reason":"\xff\xfe"}',
    # Not an object.
    "array": b'[{"type":"stop"}]',
    "number": b"42",
    "string": b'"stop"',
    "null": b"null",
    "true": b"true",
    # Unknown type.
    "no-type": b'{"index":0,"generation":1}',
    "unknown-type": b'{"type":"nope"}',
    "type-number": b'{"type":5}',
    "type-null": b'{"type":null}',
    "type-list": b'{"type":["stop"]}',
    "type-case": b'{"type":"Ready","index":0,"pid":1,"generation":1}',
    # Missing required fields.
    "ready-no-pid": b'{"type":"ready","index":0,"generation":1}',
    "heartbeat-no-generation": b'{"type":"heartbeat","index":0}',
    "stats-no-index": b'{"type":"stats","generation":1}',
    "retire-no-reason": b'{"type":"retire","index":0,"generation":1}',
    "fatal-no-starting": b'{"type":"fatal","index":0,"generation":1,"error":"x"}',
    "config-no-config": b'{"type":"config","index":0,"generation":1}',
    "adopt-no-listener": b'{"type":"adopt"}',
    "spawn-no-listeners": b'{"type":"spawn","index":0,"generation":1}',
    "spawned-no-pid": b'{"type":"spawned","index":0,"generation":1}',
    # Wrong field types.
    "index-string": b'{"type":"ready","index":"0","pid":1,"generation":1}',
    "index-bool": b'{"type":"ready","index":true,"pid":1,"generation":1}',
    "pid-float": b'{"type":"ready","index":0,"pid":1.0,"generation":1}',
    "generation-null": b'{"type":"heartbeat","index":0,"generation":null}',
    "requests-string": b'{"type":"stats","index":0,"generation":1,"requests":"3"}',
    "requests-bool": b'{"type":"stats","index":0,"generation":1,"requests":false}',
    "reason-number": b'{"type":"retire","index":0,"generation":1,"reason":5}',
    "starting-int": b'{"type":"fatal","index":0,"generation":1,"error":"x","starting":1}',
    "starting-string": b'{"type":"fatal","index":0,"generation":1,"error":"x","starting":"true"}',
    "exit-code-bool": (
        b'{"type":"fatal","index":0,"generation":1,"error":"x","starting":true,"exit_code":true}'
    ),
    "config-list": b'{"type":"config","index":0,"generation":1,"config":[]}',
    "config-string": b'{"type":"config","index":0,"generation":1,"config":"x"}',
    "cpus-string": b'{"type":"config","index":0,"generation":1,"config":{},"cpus":"0-1"}',
    "cpus-bools": b'{"type":"config","index":0,"generation":1,"config":{},"cpus":[true]}',
    "cpus-strings": b'{"type":"config","index":0,"generation":1,"config":{},"cpus":["0"]}',
    "max-requests-bool": (
        b'{"type":"config","index":0,"generation":1,"config":{},"max_requests":true}'
    ),
    "heartbeat-seconds-string": (
        b'{"type":"config","index":0,"generation":1,"config":{},"heartbeat_seconds":"1"}'
    ),
    "heartbeat-seconds-bool": (
        b'{"type":"config","index":0,"generation":1,"config":{},"heartbeat_seconds":true}'
    ),
    "close-idle-int": b'{"type":"drain","close_idle":1}',
    "close-idle-null": b'{"type":"drain","close_idle":null}',
    "listener-bool": b'{"type":"adopt","listener":true}',
    "listeners-string": b'{"type":"spawn","index":0,"generation":1,"listeners":"1"}',
    "spawned-pid-bool": b'{"type":"spawned","index":0,"generation":1,"pid":true}',
}


@pytest.mark.parametrize("payload", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
@pytest.mark.parametrize("codec", CODECS)
def test_both_codecs_reject_bad_input_with_message_error(codec, payload):
    with pytest.raises(MessageError):
        CODECS[codec].decode(payload)


# Inputs a codec may accept or refuse, as long as both codecs do the same.
EDGE_PAYLOADS = {
    "unknown-field": b'{"type":"stop","extra":1}',
    "duplicate-type": b'{"type":"ready","type":"stop"}',
    "huge-int": b'{"type":"ready","index":100000000000000000000000,"pid":1,"generation":1}',
    "negative-int": b'{"type":"stats","index":0,"generation":1,"requests":-5}',
    "null-optional": b'{"type":"config","index":0,"generation":1,"config":{},"max_requests":null}',
    "int-for-float": (
        b'{"type":"config","index":0,"generation":1,"config":{},"heartbeat_seconds":2}'
    ),
    "bad-fds-on-the-wire": b'{"type":"spawn","index":0,"generation":1,"listeners":1,"fds":"x"}',
    "lone-surrogate": b'{"type":"retire","index":0,"generation":1,"reason":"\\ud800"}',
    "byte-order-mark": b'\xef\xbb\xbf{"type":"stop"}',
}


def _outcome(codec, payload):
    try:
        return ("ok", codec.decode(payload))
    except MessageError:
        return ("refused", None)


@pytest.mark.parametrize("payload", EDGE_PAYLOADS.values(), ids=EDGE_PAYLOADS.keys())
def test_codecs_agree_on_edge_input(payload):
    outcomes = {name: _outcome(codec, payload) for name, codec in CODECS.items()}
    assert outcomes["msgspec"] == outcomes["json"]


def test_file_descriptors_are_never_read_from_the_wire():
    """``fds`` is not a wire field: only SCM_RIGHTS may fill it."""
    for codec in CODECS.values():
        decoded = codec.decode(b'{"type":"adopt","listener":0,"fds":[5]}')
        assert decoded == Adopt(listener=0), codec.name
        assert decoded.fds == [], codec.name


TRICKY = {
    "infinite-config-value": Configure(
        index=0,
        generation=1,
        config=dataclasses.asdict(Config(app="m:a", timeout_keep_alive=float("inf"))),
    ),
    "minus-infinity": Configure(index=0, generation=1, config={"x": float("-inf")}),
    "infinite-heartbeat": Configure(
        index=0, generation=1, config={}, heartbeat_seconds=float("inf")
    ),
    "surrogate-escape-in-error": Fatal(
        index=0, generation=1, error=os.fsdecode(b"no module \xff"), starting=True
    ),
    "control-characters": Retire(index=0, generation=1, reason="a\x00b\u2028c\n"),
    "huge-int": Ready(index=0, pid=2**70, generation=1),
}


def _carry(message, same) -> list[str]:
    """Send ``message`` through every codec pair; what went wrong, if anything."""
    problems = []
    for encoder, decoder in CODEC_PAIRS:
        try:
            payload = CODECS[encoder].encode(message)
        except MessageError:
            continue  # refusing to send a value is allowed
        except Exception as exc:  # noqa: BLE001 - reported below
            problems.append(f"{encoder} encode raised {type(exc).__name__}: {exc}")
            continue
        try:
            decoded = CODECS[decoder].decode(payload)
        except Exception as exc:  # noqa: BLE001 - reported below
            problems.append(f"{encoder}->{decoder}: {payload[:120]!r} not decoded: {exc}")
            continue
        if not same(decoded, message):
            problems.append(f"{encoder}->{decoder}: sent {payload[:120]!r}, got {decoded!r}")
    return problems


@pytest.mark.parametrize("message", TRICKY.values(), ids=TRICKY.keys())
def test_values_are_carried_faithfully_or_refused(message):
    """A codec may refuse to encode a value (MessageError), but it must never send
    something the peer cannot decode, or decodes to a different value."""
    problems = _carry(message, lambda a, b: a == b)
    assert not problems, "\n".join(problems)


def test_nan_is_carried_faithfully_or_refused():
    def same(decoded, _):
        value = decoded.config.get("x")
        return isinstance(value, float) and math.isnan(value)

    problems = _carry(Configure(index=0, generation=1, config={"x": float("nan")}), same)
    assert not problems, "\n".join(problems)


# Framing --------------------------------------------------------------------------------


def test_frame_is_a_big_endian_length_then_the_payload():
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"") == b"\x00\x00\x00\x00"
    assert frame(b"x" * 300)[:4] == b"\x00\x00\x01\x2c"


PAYLOADS = [b'{"type":"stop"}', b"", b"x" * 70_000, bytes(range(256))]
STREAM = b"".join(frame(p) for p in PAYLOADS)


def test_frame_reader_several_frames_in_one_read():
    reader = FrameReader()
    assert reader.feed(STREAM) == PAYLOADS
    assert reader.buffer == b""


def test_frame_reader_split_at_every_byte_boundary():
    small = PAYLOADS[:2] + [PAYLOADS[3]]
    stream = b"".join(frame(p) for p in small)
    for cut in range(len(stream) + 1):
        reader = FrameReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert got == small, cut
        assert reader.buffer == b"", cut
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1, 7):
            reader = FrameReader()
            got = (
                reader.feed(stream[:first])
                + reader.feed(stream[first:second])
                + reader.feed(stream[second:])
            )
            assert got == small, (first, second)


def test_frame_reader_one_byte_at_a_time():
    reader = FrameReader()
    got = []
    for i in range(len(STREAM)):
        got += reader.feed(STREAM[i : i + 1])
    assert got == PAYLOADS
    assert reader.buffer == b""


def test_frame_reader_keeps_an_incomplete_frame():
    reader = FrameReader()
    assert reader.feed(frame(b"hello")[:-1]) == []
    assert reader.feed(b"o" + frame(b"")[:2]) == [b"hello"]
    assert reader.feed(frame(b"")[2:]) == [b""]


def test_frame_reader_accepts_the_largest_frame():
    payload = b"y" * MAX_FRAME
    assert FrameReader().feed(frame(payload)) == [payload]


@pytest.mark.parametrize("size", [MAX_FRAME + 1, 0xFFFFFFFF])
def test_frame_reader_rejects_an_oversized_length_at_once(size):
    reader = FrameReader()
    header = struct.pack(">I", size)
    assert reader.feed(header[:3]) == []
    with pytest.raises(MessageError):
        reader.feed(header[3:])
    with pytest.raises(MessageError):
        FrameReader().feed(frame(b"ok") + header)


# Channel on an event loop ----------------------------------------------------------------

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run_on(loop_name, coro_fn, timeout=10.0):
    loop = LOOPS[loop_name]()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), timeout))
    finally:
        loop.close()


class End:
    """One Channel end, recording what its callbacks see."""

    def __init__(self, sock: socket.socket, codec) -> None:
        loop = asyncio.get_running_loop()
        self.messages: asyncio.Queue = asyncio.Queue()
        self.closed = loop.create_future()
        self.error = loop.create_future()
        self.events: list[str] = []
        self.channel = Channel(sock, codec, self._message, self._closed, self._error, loop=loop)

    def _message(self, message) -> None:
        self.events.append("message")
        self.messages.put_nowait(message)

    def _closed(self) -> None:
        self.events.append("closed")
        if not self.closed.done():
            self.closed.set_result(True)

    def _error(self, exc: Exception) -> None:
        self.events.append("error")
        if not self.error.done():
            self.error.set_result(exc)

    async def next(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.messages.get(), timeout)


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    b.settimeout(5)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize(("codec_a", "codec_b"), CODEC_PAIRS[:3])
def test_channel_delivers_messages_both_ways(pair, loop_name, codec_a, codec_b):
    async def main():
        a = End(pair[0], CODECS[codec_a])
        b = End(pair[1], CODECS[codec_b])
        for message in PLAIN_SAMPLES:
            a.channel.send(message)
            b.channel.send(message)
        got_b = [await b.next() for _ in PLAIN_SAMPLES]
        got_a = [await a.next() for _ in PLAIN_SAMPLES]
        assert got_b == PLAIN_SAMPLES
        assert got_a == PLAIN_SAMPLES
        assert not a.error.done() and not b.error.done()
        a.channel.close()
        b.channel.close()

    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_channel_queues_what_the_socket_cannot_take_yet(pair, loop_name):
    """A message larger than the socket buffer, then many small ones: all arrive, in order."""
    big = Configure(index=0, generation=1, config={"blob": "x" * 900_000})
    beats = [Heartbeat(index=0, generation=n) for n in range(500)]

    async def main():
        a = End(pair[0], CODECS["msgspec"])
        b = End(pair[1], CODECS["json"])
        a.channel.send(big)
        for beat in beats:
            a.channel.send(beat)
        assert a.channel.outgoing, "expected the big frame to outrun the socket buffer"
        assert await b.next() == big
        assert [await b.next() for _ in beats] == beats
        for _ in range(200):
            if not a.channel.outgoing:
                break
            await asyncio.sleep(0.01)
        assert not a.channel.outgoing
        a.channel.close()
        b.channel.close()

    run_on(loop_name, main)


def _accept_one(listener_fd: int, port: int) -> bytes:
    """Connect to ``port`` and accept on the given fd: proves the fd is that listener."""
    listener = socket.socket(fileno=listener_fd)
    try:
        listener.settimeout(5)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                client.sendall(b"ping")
                return conn.recv(4)
    finally:
        listener.close()


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("codec", CODECS)
def test_channel_carries_a_listening_socket_with_adopt(pair, loop_name, codec):
    async def main():
        a = End(pair[0], CODECS["msgspec"])
        b = End(pair[1], CODECS[codec])
        first = socket.create_server(("127.0.0.1", 0))
        second = socket.create_server(("127.0.0.1", 0))
        ports = [first.getsockname()[1], second.getsockname()[1]]
        inodes = [os.fstat(first.fileno()).st_ino, os.fstat(second.fileno()).st_ino]
        a.channel.send(Adopt(listener=0), fds=[first.fileno()])
        a.channel.send(Heartbeat(index=0, generation=1))
        a.channel.send(Adopt(listener=1), fds=[second.fileno()])
        got = [await b.next() for _ in range(3)]
        # The sender's copies go away: the received descriptors stand on their own.
        first.close()
        second.close()
        assert got[1] == Heartbeat(index=0, generation=1)
        adopts = [got[0], got[2]]
        assert [m.listener for m in adopts] == [0, 1]
        for message, port, inode in zip(adopts, ports, inodes, strict=True):
            assert isinstance(message, Adopt)
            assert len(message.fds) == 1
            assert os.fstat(message.fds[0]).st_ino == inode
            assert _accept_one(message.fds[0], port) == b"ping"
        assert not b.error.done()
        a.channel.close()
        b.channel.close()

    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_channel_carries_a_spawn_with_its_control_socket_and_listeners(pair, loop_name):
    async def main():
        a = End(pair[0], CODECS["msgspec"])
        b = End(pair[1], CODECS["msgspec"])
        ours, theirs = socket.socketpair()
        listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
        ports = [s.getsockname()[1] for s in listeners]
        try:
            a.channel.send(
                Spawn(index=1, generation=4, listeners=2),
                fds=[theirs.fileno(), *(s.fileno() for s in listeners)],
            )
            spawn = await b.next()
            theirs.close()
            for s in listeners:
                s.close()
            assert isinstance(spawn, Spawn)
            assert (spawn.index, spawn.generation, spawn.listeners) == (1, 4, 2)
            assert len(spawn.fds) == 3
            control_fd, *listener_fds = spawn.fds
            with socket.socket(fileno=control_fd) as control:
                control.settimeout(5)
                control.sendall(b"hello")
                ours.settimeout(5)
                assert ours.recv(5) == b"hello"
            for fd, port in zip(listener_fds, ports, strict=True):
                assert _accept_one(fd, port) == b"ping"
        finally:
            ours.close()
            theirs.close()
            for s in listeners:
                s.close()
            a.channel.close()
            b.channel.close()

    run_on(loop_name, main)


BAD_FRAMES = {
    "not-json": frame(b"not json"),
    "not-an-object": frame(b"[1, 2]"),
    "unknown-type": frame(b'{"type":"reboot"}'),
    "missing-field": frame(b'{"type":"ready","index":0,"generation":1}'),
    "wrong-type": frame(b'{"type":"ready","index":"0","pid":1,"generation":1}'),
    "invalid-utf8": frame(b'{"type":"retire","index":0,"generation":1,"reason":"\xff"}'),
    "oversized": struct.pack(">I", MAX_FRAME + 1) + b"x" * 100,
    "adopt-without-fd": frame(b'{"type":"adopt","listener":0}'),
}


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("raw", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
@pytest.mark.parametrize("codec", CODECS)
def test_channel_reports_a_malformed_frame(pair, loop_name, codec, raw):
    async def main():
        end = End(pair[0], CODECS[codec])
        pair[1].sendall(raw)
        exc = await asyncio.wait_for(end.error, 3)
        assert isinstance(exc, MessageError)
        assert end.events == ["error"]
        end.channel.close()

    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_channel_delivers_then_reports_the_peer_closing(pair, loop_name):
    async def main():
        end = End(pair[0], CODECS["msgspec"])
        pair[1].sendall(frame(CODECS["json"].encode(Stop())))
        pair[1].close()
        assert await end.next() == Stop()
        await asyncio.wait_for(end.closed, 5)
        assert end.events == ["message", "closed"]
        assert end.channel.closed
        end.channel.send(Stop())  # after close: dropped, never raises

    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_channel_close_is_seen_by_the_other_end(pair, loop_name):
    async def main():
        a = End(pair[0], CODECS["msgspec"])
        b = End(pair[1], CODECS["json"])
        a.channel.send(Heartbeat(index=0, generation=1))
        a.channel.close()
        assert await b.next() == Heartbeat(index=0, generation=1)
        await asyncio.wait_for(b.closed, 5)
        assert b.events == ["message", "closed"]
        assert not a.closed.done()  # closing our own end is not the peer going away

    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_channel_reassembles_a_frame_sent_byte_by_byte(pair, loop_name):
    raw = frame(CODECS["msgspec"].encode(SAMPLES[0])) + frame(CODECS["msgspec"].encode(Stop()))

    async def main():
        end = End(pair[0], CODECS["json"])
        for i in range(len(raw)):
            pair[1].sendall(raw[i : i + 1])
            await asyncio.sleep(0.001)
        assert await end.next() == SAMPLES[0]
        assert await end.next() == Stop()
        end.channel.close()

    run_on(loop_name, main)


# Blocking helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(("encoder", "decoder"), CODEC_PAIRS)
def test_blocking_send_and_receive_across_the_pair(pair, encoder, decoder):
    a, b = pair
    for message in PLAIN_SAMPLES:
        send_blocking(a, CODECS[encoder], message)
        send_blocking(b, CODECS[encoder], message)
    # Queued back to back: each call takes exactly one message.
    assert [receive_blocking(b, CODECS[decoder], timeout=5) for _ in PLAIN_SAMPLES] == (
        PLAIN_SAMPLES
    )
    assert [receive_blocking(a, CODECS[decoder], timeout=5) for _ in PLAIN_SAMPLES] == (
        PLAIN_SAMPLES
    )


def test_receive_blocking_takes_the_fds_a_channel_sent(pair):
    """What the template does: a Spawn sent by the coordinator's Channel, received blocking."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ours, theirs = socket.socketpair()

    async def send():
        a = End(pair[0], CODECS["msgspec"])
        a.channel.send(
            Spawn(index=0, generation=1, listeners=1), fds=[theirs.fileno(), listener.fileno()]
        )
        for _ in range(200):
            if not a.channel.outgoing:
                break
            await asyncio.sleep(0.01)
        a.channel.close()

    try:
        run_on("asyncio", send)
        listener.close()
        theirs.close()
        spawn = receive_blocking(pair[1], CODECS["json"], timeout=5)
        assert isinstance(spawn, Spawn)
        assert (spawn.index, spawn.generation, spawn.listeners) == (0, 1, 1)
        assert len(spawn.fds) == 2
        with socket.socket(fileno=spawn.fds[0]) as control:
            send_blocking(control, CODECS["json"], Spawned(index=0, generation=1, pid=7))
            assert receive_blocking(ours, CODECS["msgspec"], timeout=5) == Spawned(0, 1, 7)
        assert _accept_one(spawn.fds[1], port) == b"ping"
    finally:
        listener.close()
        ours.close()
        theirs.close()


def test_receive_blocking_waits_for_a_frame_arriving_in_pieces(pair):
    a, b = pair
    raw = frame(CODECS["msgspec"].encode(SAMPLES[2]))
    pieces = [raw[:2], raw[2:7], raw[7:-1], raw[-1:]]

    def trickle():
        for piece in pieces:
            time.sleep(0.05)
            a.sendall(piece)

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        assert receive_blocking(b, CODECS["json"], timeout=5) == SAMPLES[2]
    finally:
        sender.join(5)


def test_receive_blocking_errors(pair):
    a, b = pair
    codec = CODECS["msgspec"]
    with pytest.raises(TimeoutError):
        receive_blocking(b, codec, timeout=0.2)
    a.sendall(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(MessageError):
        receive_blocking(b, codec, timeout=5)


@pytest.mark.parametrize("codec", CODECS)
def test_receive_blocking_bad_payload_is_a_message_error(pair, codec):
    a, b = pair
    for raw in (frame(b"nope"), frame(b'{"type":"spawned","index":0}'), BAD_FRAMES["invalid-utf8"]):
        a.sendall(raw)
        with pytest.raises(MessageError):
            receive_blocking(b, CODECS[codec], timeout=5)


def test_receive_blocking_end_of_stream(pair):
    a, b = pair
    a.sendall(frame(CODECS["json"].encode(Stop()))[:6])
    a.close()
    with pytest.raises(EOFError):
        receive_blocking(b, CODECS["msgspec"], timeout=5)
    with pytest.raises(EOFError):
        receive_blocking(b, CODECS["msgspec"], timeout=5)


def test_receive_blocking_spawn_without_its_fds(pair):
    a, b = pair
    send_blocking(a, CODECS["msgspec"], Spawn(index=0, generation=1, listeners=1))
    with pytest.raises(MessageError):
        receive_blocking(b, CODECS["msgspec"], timeout=5)
