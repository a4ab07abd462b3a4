"""The compiled sender (shardserve/shard/http/_send.c's FastSend) against the
pure-Python reference it mirrors (cycle.py's ``RequestCycle.send``).

Each example runs one HTTP/1.1 connection twice, on an in-memory transport, through
the real HttpConnection and RequestCycle: once with the reference as
``RequestCycle.send``, once with FastSend.  The app sends the same messages both times;
the bytes written, the connection's end (closed, half-closed), what send raised, the
counters and what the exchange was left in must be the same.  Ordinary responses must
take the compiled path; no object may leak on any path.  CI also runs this module
under valgrind (.ci/memcheck.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from http import HTTPStatus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardserve.config import Config
from shardserve.shard.http import cycle as cycle_module
from shardserve.shard.http.cycle import RequestCycle
from shardserve.shard.http.protocol import HttpConnection
from shardserve.shard.http.response import _rendered
from shardserve.shard.state import ShardCounters, ShardState

try:
    from shardserve.shard.http._send import FastSend
except ImportError:  # pragma: no cover - CI builds it
    FastSend = None

pytestmark = pytest.mark.skipif(FastSend is None, reason="the compiled module is not built")
EXAMPLES = int(os.environ.get("FAST_SEND_EXAMPLES", "1000"))


class MemoryTransport:
    """What a connection does to its transport, recorded."""

    def __init__(self) -> None:
        self.events: list = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.events.append(bytes(data))

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def write_eof(self) -> None:
        self.events.append("eof")

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        self.events.append("abort")

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.events.append("pause")

    def resume_reading(self) -> None:
        self.events.append("resume")

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8000)}.get(name, default)


class Counting:
    """A reference that counts the messages FastSend left to it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, cycle, message):
        self.calls += 1
        return RequestCycle.reference_send(cycle, message)


def fast_send(reference=RequestCycle.reference_send):
    return FastSend(
        reference,
        RequestCycle,
        HttpConnection,
        ShardCounters,
        cycle_module.STATUS_LINES,
        _rendered,
        cycle_module._CLOSE,
    )


_DATE = re.compile(rb"date: [^\r]*\r\n")


def run(send, request: bytes, messages: list, draining: bool) -> dict:
    """Serve ``request`` on one connection whose app sends ``messages``."""
    saved = RequestCycle.__dict__["send"]
    RequestCycle.send = send
    loop = asyncio.new_event_loop()
    raised: list = []
    cycles: list = []

    async def app(scope, receive, send):
        cycles.append(send.__self__)
        for message in messages:
            try:
                await send(message)
            except Exception as exc:
                raised.append((type(exc).__name__, str(exc)))
                raise

    try:
        state = ShardState(Config(app="tests:app"), app, loop)
        conn = HttpConnection(state)
        transport = MemoryTransport()
        conn.connection_made(transport)
        conn.draining = draining

        async def drive() -> None:
            # (as a loop calls a protocol: from a callback, outside any task)
            loop.call_soon(conn.data_received, request)
            for _ in range(6):
                await asyncio.sleep(0)
            conn.connection_lost(None)
            others = asyncio.all_tasks() - {asyncio.current_task()}
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        loop.run_until_complete(drive())
    finally:
        RequestCycle.send = saved
        loop.close()
    counters = state.counters
    return {
        "events": [
            _DATE.sub(b"date: D\r\n", e) if isinstance(e, bytes) else e for e in transport.events
        ],
        "raised": raised,
        "bytes_out": counters.bytes_out,
        "responses": list(counters.responses),
        "app_errors": counters.app_errors,
        "answered": sum(counters.latency),
        "cycles": [
            (c.state, getattr(c, "status", None), c.keep_alive, getattr(c, "remaining", None))
            for c in cycles
        ],
    }


# Requests and messages ------------------------------------------------------------------

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",  # pipelined
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345",  # body still coming
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n12345",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
]

HEADERS = [
    (b"content-type", b"text/plain"),
    (b"content-length", b"13"),
    (b"content-length", b"5"),
    (b"content-length", b"0"),
    (b"Content-Length", b"13"),
    (b"transfer-encoding", b"chunked"),
    (b"connection", b"close"),
    (b"connection", b"keep-alive"),
    (b"server", b"app"),
    (b"date", b"today"),
    (b"x-list", b"in a list"),
    (b"bad\r\nname", b"v"),
    (b"x-str", "text"),
    ("x-name-str", b"v"),
    (b"x-three", b"v", b"extra"),
]

STATUSES = [
    200,
    201,
    404,
    500,
    204,
    304,
    101,
    199,
    599,
    999,
    1000,
    HTTPStatus.OK,
    True,
    200.0,
    "200",
]
BODIES = [b"", b"Hello, world!", b"hello", b"x" * 70000, bytearray(b"hello"), "text", None]
ABSENT = object()
MORE = [ABSENT, False, True, 0, None]


def header_list(picked: list, form: str):
    headers = [list(h) if h[0] == b"x-list" else h for h in picked]
    return tuple(headers) if form == "tuple" else headers


@st.composite
def start_messages(draw):
    message = {"type": "http.response.start", "status": draw(st.sampled_from(STATUSES))}
    picked = draw(st.lists(st.sampled_from(HEADERS), max_size=4))
    if picked or draw(st.booleans()):  # (no headers: sometimes [], sometimes no key)
        message["headers"] = header_list(picked, draw(st.sampled_from(["list", "tuple"])))
    return message


@st.composite
def body_messages(draw):
    message = {"type": "http.response.body"}
    body = draw(st.sampled_from(BODIES))
    if body is not None:
        message["body"] = body
    more = draw(st.sampled_from(MORE))
    if more is not ABSENT:
        message["more_body"] = more
    return message


OTHER_MESSAGES = st.sampled_from(
    [
        {"type": "http.response.trailers", "headers": []},
        {"type": "http.response.bogus"},
        {"status": 200},
        ["not", "a", "dict"],
    ]
)

# Mostly what apps send (a start, then bodies); sometimes anything.
MESSAGES = st.one_of(
    st.tuples(start_messages(), st.lists(body_messages(), min_size=1, max_size=3)).map(
        lambda pair: [pair[0], *pair[1]]
    ),
    st.lists(st.one_of(start_messages(), body_messages(), OTHER_MESSAGES), max_size=4),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    request=st.sampled_from(REQUESTS),
    messages=MESSAGES,
    draining=st.booleans(),
    warm=st.booleans(),
)
def test_fast_send_does_what_the_reference_does(request, messages, draining, warm):
    if not warm:
        _rendered.clear()
    expected = run(RequestCycle.reference_send, request, messages, draining)
    if not warm:
        _rendered.clear()
    assert run(fast_send(), request, messages, draining) == expected


def test_ordinary_responses_take_the_compiled_path():
    """A start with a Content-Length and one body completing it, on GET and POST,
    keep-alive or closing, with headers rendered before: the reference is not called."""
    messages = [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        },
        {"type": "http.response.body", "body": b"Hello, world!"},
    ]
    requests = [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n12345",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    run(RequestCycle.reference_send, requests[0], messages, False)  # (renders the headers)
    for request in requests:
        counting = Counting()
        outcome = run(fast_send(counting), request, messages, False)
        assert counting.calls == 0, request
        assert outcome["raised"] == []
        assert outcome["events"][0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert outcome["events"][0].endswith(b"\r\n\r\nHello, world!")


def test_the_installed_send_is_the_compiled_one_unless_pure_python():
    installed = RequestCycle.__dict__["send"]
    if os.environ.get("SHARDSERVE_PURE_PYTHON") == "1":
        assert installed is RequestCycle.reference_send
    else:
        assert type(installed) is FastSend
        assert installed.reference is RequestCycle.reference_send


def test_subclasses_get_the_reference():
    """H2Exchange (and any other subclass) frames differently: never the C path."""

    class Other(RequestCycle):
        __slots__ = ()

    counting = Counting()
    bound = fast_send(counting).__get__(Other.__new__(Other), Other)
    coroutine = bound({"type": "http.response.bogus"})
    assert counting.calls == 1
    coroutine.close()


def test_a_class_without_the_slots_is_refused():
    class Loose:
        pass

    for classes in [(Loose, HttpConnection, ShardCounters), (RequestCycle, Loose, ShardCounters),
                    (RequestCycle, HttpConnection, Loose)]:  # fmt: skip
        with pytest.raises(TypeError, match="__slots__"):
            FastSend(RequestCycle.reference_send, *classes, {}, {}, b"")
    with pytest.raises(TypeError, match="not a class"):
        FastSend(RequestCycle.reference_send, RequestCycle, "x", ShardCounters, {}, {}, b"")


def test_another_connection_class_gets_the_reference():
    """A connection of another class (a subclass too): its slots may lie elsewhere."""

    class Other(HttpConnection):
        __slots__ = ("extra",)

    counting = Counting()
    cycle = RequestCycle.__new__(RequestCycle)
    cycle.conn = Other.__new__(Other)
    coroutine = fast_send(counting).__get__(cycle, RequestCycle)({"type": "http.response.body"})
    assert counting.calls == 1
    coroutine.close()


def test_no_object_is_leaked_on_any_path():
    """Taken, left to the reference, and raising: memory traced by tracemalloc does
    not grow with the number of requests."""
    import gc
    import tracemalloc

    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
    }
    cases = [
        [start, {"type": "http.response.body", "body": b"hello"}],  # taken
        [start, {"type": "http.response.body", "body": b"hel", "more_body": True}],  # left
        [start, {"type": "http.response.body", "body": b"hello!"}],  # raises
    ]
    send = fast_send()
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 8

    def serve(n: int) -> None:
        for _ in range(n):
            for messages in cases:
                run(send, request, messages, False)

    errors = logging.getLogger("shardserve.error")
    errors.disabled = True  # (the raising case logs: captured records would grow)
    try:
        serve(20)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        serve(300)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        errors.disabled = False
    assert grown < 256 * 1024, f"{grown} bytes more after 900 connections"
