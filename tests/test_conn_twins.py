"""The compiled twins of HttpConnection's per-request methods (shardserve/shard/http/
_conn.c: data_received, on_request, on_request_end, response_done) against the
pure-Python references they mirror (protocol.py's ``HttpConnection.reference_*``).

Each example serves one byte stream, cut into random packets, on one HTTP/1.1
connection twice, on an in-memory transport, through the real HttpConnection, parser,
RequestCycle and ShardState: once with the references put back in place of the four
methods (on HttpConnection itself, not a subclass: _send.c's FastSend and the parsers'
twins take exact classes only, and must do the same in both runs), once with the
twins.  The apps do the same both times; what was written and when the connection
paused, resumed, half-closed or closed, the connection's slots after each packet, the
cycles (what each was left in, its scope), the scopes and messages the apps received,
the counters, the access log, the error log and what data_received raised must be the
same.  Each twin's uncommon branches (the ones it leaves to the
reference, or to ``after_response``) are checked one by one; ordinary keep-alive
requests must take the compiled path; no object may leak on any path.  CI also runs
this module under valgrind (.ci/memcheck.py), with CONN_TWINS_EXAMPLES small.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import os
import re
import sys
import tracemalloc
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardserve.config import Config
from shardserve.shard.http import cycle as cycle_module
from shardserve.shard.http import protocol
from shardserve.shard.http import scope as scope_module
from shardserve.shard.http.cycle import COMPLETE, RequestCycle
from shardserve.shard.http.parser import ParseError
from shardserve.shard.http.protocol import (
    IDLE,
    MAX_PIPELINE,
    NO_TIMER,
    READING_HEAD,
    HttpConnection,
)
from shardserve.shard.loop import new_event_loop
from shardserve.shard.state import ShardCounters, ShardState

try:
    from shardserve.shard.http import _conn
except ImportError:  # pragma: no cover - CI builds it
    _conn = None

NAMES = ("data_received", "on_request", "on_request_end", "response_done")
INSTALLED = _conn is not None and not inspect.isfunction(HttpConnection.__dict__["on_request"])
pytestmark = pytest.mark.skipif(
    not INSTALLED, reason="_conn.c not built, or SHARDSERVE_PURE_PYTHON=1: nothing to compare"
)
EXAMPLES = int(os.environ.get("CONN_TWINS_EXAMPLES", "300"))
NOW = 1000.0  # ShardState.now, the coarse clock, the same in both runs
TURNS = 60  # loop turns for the apps to finish (each await below is one turn or two)
ERRORS = logging.getLogger("shardserve.error")


def conn_twins(connection_class=HttpConnection, account=None):
    """A ConnTwins as install_compiled_connection builds it, for ``connection_class``."""
    return _conn.ConnTwins(
        connection_class=connection_class,
        cycle_class=RequestCycle,
        counters_class=ShardCounters,
        parse_error=ParseError,
        request_scope=scope_module.request_scope,
        account=account or scope_module.account,
        perf_counter=cycle_module.perf_counter,
    )


@contextlib.contextmanager
def the_references():
    """HttpConnection with its four references in place of the twins (parsers bind the
    sink's methods when made: keep this for the connection's whole life)."""
    saved = {name: HttpConnection.__dict__[name] for name in NAMES}
    try:
        for name in NAMES:
            setattr(HttpConnection, name, getattr(HttpConnection, "reference_" + name))
        yield
    finally:
        for name, twin in saved.items():
            setattr(HttpConnection, name, twin)


# The in-memory world ------------------------------------------------------------------

_DATE = re.compile(rb"date: [^\r]*\r\n")


def undated(data):
    return _DATE.sub(b"date: D\r\n", data) if isinstance(data, bytes) else data


class MemoryTransport:
    """What a connection does to its transport, recorded."""

    def __init__(self, peer=("127.0.0.1", 5555)) -> None:
        self.events: list = []
        self.closing = False
        self.paused = False
        self.peer = peer
        self.fail_writes = False

    def write(self, data: bytes) -> None:
        if self.fail_writes:
            raise OSError("write failed")
        self.events.append(undated(bytes(data)))

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def write_eof(self) -> None:
        self.events.append("eof")

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True
        self.events.append("pause")

    def resume_reading(self) -> None:
        self.paused = False
        self.events.append("resume")

    def get_extra_info(self, name: str, default=None):
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8000)}.get(name, default)


class AccessLog:
    def __init__(self) -> None:
        self.lines: list = []

    def log(self, *args) -> None:
        self.lines.append(args)

    def flush(self) -> None:
        pass


class Records(logging.Handler):
    def __init__(self, into: list) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.into.append((record.levelname, record.getMessage(), type(exc).__name__))


@contextlib.contextmanager
def error_log(into: list):
    """shardserve.error's records, debug ones too, kept from pytest's capture."""
    handler = Records(into)
    saved = ERRORS.level, ERRORS.propagate
    ERRORS.addHandler(handler)
    ERRORS.setLevel(logging.DEBUG)
    ERRORS.propagate = False
    try:
        yield
    finally:
        ERRORS.removeHandler(handler)
        ERRORS.setLevel(saved[0])
        ERRORS.propagate = saved[1]


class World:
    """One connection on a fresh loop, everything it does recorded.  Cycles are named
    by the order they were first seen (the same in both runs if they behave alike)."""

    def __init__(
        self,
        options: dict,
        app=None,
        connection_class=HttpConnection,
        loop: str = "asyncio",
        peer=("127.0.0.1", 5555),
        lifespan_state=None,
    ) -> None:
        self.loop = new_event_loop(loop)
        self.trace: list = []
        self.loop_errors: list = []
        self.loop.set_exception_handler(self._loop_error)
        config = Config(app="tests:app", forwarded_allow_ips="127.0.0.1", **options)
        state = self.state = ShardState(config, app or answer_at_once, self.loop)
        state.now = NOW
        state.access_logger = AccessLog()
        state.lifespan_state = dict(lifespan_state or {})
        self.reached: list = []
        state.on_max_requests = self._max_requests
        self.transport = MemoryTransport(peer)
        self.conn = connection_class(state)
        self.conn.connection_made(self.transport)
        self.cycles: list = []

    def _loop_error(self, loop, context) -> None:
        self.loop_errors.append((context["message"], type(context.get("exception")).__name__))

    def _max_requests(self) -> None:
        # (as a shard does, in short: every connection answers its next response with
        # connection: close)
        self.reached.append(True)
        for conn in tuple(self.state.connections):
            conn.drain(False)

    def ordinal(self, cycle):
        if cycle is None:
            return None
        for i, seen in enumerate(self.cycles):
            if seen is cycle:
                return i
        self.cycles.append(cycle)
        return len(self.cycles) - 1

    def conn_state(self) -> dict:
        conn = self.conn
        return {
            "closed": typed(conn.closed),
            "draining": typed(conn.draining),
            "read_paused": typed(conn.read_paused),
            "write_paused": typed(conn.write_paused),
            "timer": typed(conn.timer),
            "timer_since": typed(conn.timer_since),
            "rejection": typed(undated(conn.rejection)),
            "cycle": self.ordinal(conn.cycle),
            "parsing": self.ordinal(conn.parsing),
            "ready": self.ordinal(conn.ready),
            "pipeline": [self.ordinal(c) for c in conn.pipeline],
            "feeding": typed(conn.feeding),
            "body_received": typed(conn.body_received),
            "parser": type(conn.parser).__name__,
        }

    def snapshot(self, label) -> None:
        self.trace.append((label, self.conn_state()))

    def call(self, function, turns: int = 10):
        """Run ``function`` as a loop callback (outside any task, as a transport calls
        a protocol), then let the loop turn."""
        result: list = []

        def callback() -> None:
            try:
                result.append(function())
            except BaseException as exc:  # noqa: BLE001 - raised again below
                result.append(exc)
                raise

        async def main() -> None:
            self.loop.call_soon(callback)
            for _ in range(turns):
                await asyncio.sleep(0)

        self.loop.run_until_complete(main())
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def finish(self) -> dict:
        """Close the connection, end whatever still runs, and report."""

        async def end() -> None:
            self.conn.connection_lost(None)
            for _ in range(10):
                await asyncio.sleep(0)
            self.snapshot("lost")
            others = sorted(asyncio.all_tasks() - {asyncio.current_task()}, key=created)
            for task in others:  # (in the order they were made: the same in both runs)
                task.cancel()
            if others:
                await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), 10)

        try:
            self.loop.run_until_complete(end())
            gc.collect()  # (a task that failed unread reports it when collected)
        finally:
            self.loop.close()
        return self.report()

    def report(self) -> dict:
        counters = self.state.counters
        plain = {
            name: getattr(counters, name)
            for name in ShardCounters.__slots__
            if name not in ("latency", "latency_sum")
        }
        return {
            "trace": self.trace,
            "events": self.transport.events,
            "counters": plain,
            # (latency depends on the clock: how many, not where)
            "latency": (sum(counters.latency), type(counters.latency_sum)),
            "cycles": [cycle_state(c) for c in self.cycles],
            "access_log": self.state.access_logger.lines,
            "max_requests": (self.reached, self.state.requests_left),
            "active_requests": self.state.active_requests,
            "connections": len(self.state.connections),
            "loop_errors": self.loop_errors,
        }


def typed(value) -> tuple:
    """A value with its type: True == 1 == 1.0, but a twin must store what the
    reference stores."""
    return type(value).__name__, value


def created(task) -> int:
    name = task.get_name()  # ("Task-<n>", n counting up)
    return int(name[5:]) if name.startswith("Task-") and name[5:].isdigit() else -1


def scope_state(scope) -> tuple:
    """A scope, or a message: its items, in order, and the types of its values."""
    return list(scope.items()), [type(v) for v in scope.values()]


CYCLE_FIELDS = ("state", "status", "keep_alive", "request", "body", "expect_checked",
                "no_body", "chunked", "remaining")  # fmt: skip


def cycle_state(cycle) -> tuple:
    def get(name):
        return getattr(cycle, name, "unset")

    waiter = get("waiter")
    return (
        *(typed(get(name)) for name in CYCLE_FIELDS),
        None if waiter is None else ("future", waiter.done()),
        type(get("task")).__name__,  # (None: finished in its first step)
        type(get("started")).__name__,  # (a clock reading)
        scope_state(cycle.scope),
    )


# Apps -----------------------------------------------------------------------------------

START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
}
BODY = {"type": "http.response.body", "body": b"hello"}


async def answer_at_once(scope, receive, send):
    await send(START)
    await send(BODY)


def make_app(world_ref: list, kinds: list, seen: list):
    """The example's app: request i does kinds[i % len(kinds)]."""
    requests = [0]

    async def app(scope, receive, send):
        world = world_ref[0]
        index = requests[0]
        requests[0] += 1
        seen.append(("scope", index, scope_state(scope)))
        world.ordinal(send.__self__)
        kind = kinds[index % len(kinds)]

        async def received():
            message = await receive()
            seen.append(("received", index, scope_state(message)))
            return message

        if kind == "now":
            await send(START)
            await send(BODY)
        elif kind == "await":
            await asyncio.sleep(0)
            await send(START)
            await send(BODY)
        elif kind == "read":
            body = b""
            for _ in range(100):
                message = await received()
                if message["type"] == "http.disconnect":
                    return
                body += message["body"]
                if not message["more_body"]:
                    break
            await send(
                {
                    "type": "http.response.start",
                    "status": 201,
                    "headers": [(b"content-length", b"%d" % len(body))],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif kind == "stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"b"})
        elif kind == "close":
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"connection", b"close"), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body"})
        elif kind == "raise":
            raise RuntimeError("the app failed")
        elif kind == "raise_after":
            await send(START)
            await send(BODY)
            raise RuntimeError("the app failed after its response")
        elif kind == "nothing":
            return  # (no response: a 500)
        elif kind == "hang":
            for _ in range(100):  # until the client leaves
                if (await received())["type"] == "http.disconnect":
                    return
        elif kind == "wait":
            await asyncio.Event().wait()  # never: cancelled at the end

    return app


APP_KINDS = ["now", "await", "read", "stream", "close", "raise", "raise_after", "nothing",
             "hang", "wait"]  # fmt: skip


# Byte streams ---------------------------------------------------------------------------

TARGETS = [
    b"/",
    b"/a/b",
    b"/search?q=1&r=2",
    b"/a?b?c",
    b"/?",
    b"/p%41th",
    b"/caf\xc3\xa9",  # (not ASCII: 400 from request_scope)
    b"*",
    b"http://example.com/x?y=1",
    b"http://example.com",
    b"//two",
]
EXTRA_FIELDS = [
    (b"Connection", b"close"),
    (b"Connection", b"keep-alive"),
    (b"Expect", b"100-continue"),
    (b"X-Forwarded-For", b"10.0.0.1"),
    (b"X-Forwarded-Proto", b"https"),
    (b"Accept", b"*/*"),
]
BODIES = [b"", b"hello", b"0123456789abcdef"]
MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 9000 + b"\r\n\r\n",  # 431
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",  # 501
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",  # bad ws
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
]
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
FLOOD = GET * (MAX_PIPELINE + 1)  # pipelined past the limit


@st.composite
def well_formed(draw) -> bytes:
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS"]))
    target = draw(st.sampled_from(TARGETS))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    fields = []
    if version == b"HTTP/1.1" or draw(st.booleans()):
        fields.append((b"Host", b"example.com"))
    fields += draw(st.lists(st.sampled_from(EXTRA_FIELDS), max_size=3))
    framing = draw(st.sampled_from(["none", "none", "length", "chunked", "short", "large"]))
    body = draw(st.sampled_from(BODIES))
    payload = b""
    if framing == "length":
        fields.append((b"Content-Length", b"%d" % len(body)))
        payload = body
    elif framing == "short":  # declared longer than sent: what follows is taken as body
        fields.append((b"Content-Length", b"%d" % (len(body) + 5)))
        payload = body
    elif framing == "large":  # past READ_HIGH_WATER: reading pauses
        fields.append((b"Content-Length", b"70000"))
        payload = b"x" * 70000
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        half = len(body) // 2
        for part in (body[:half], body[half:]):
            if part:
                payload += b"%x\r\n%s\r\n" % (len(part), part)
        payload += b"0\r\n\r\n"
    lines = [b"%s %s %s" % (method, target, version), *(b"%s: %s" % f for f in fields)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


@st.composite
def upload(draw) -> bytes:
    """A body the app may have to wait for (100-continue: the head asked for it)."""
    method = draw(st.sampled_from([b"POST", b"PUT"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    fields = [(b"Host", b"a")]
    if draw(st.booleans()):
        fields.append((b"Expect", b"100-continue"))
    body = draw(st.sampled_from(BODIES[1:]))
    if draw(st.booleans()):
        fields.append((b"Content-Length", b"%d" % len(body)))
        payload = body
    else:
        fields.append((b"Transfer-Encoding", b"chunked"))
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    lines = [b"%s /upload %s" % (method, version), *(b"%s: %s" % f for f in fields)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


REQUEST = st.one_of(well_formed(), well_formed(), upload(), st.sampled_from(MALFORMED))


@st.composite
def packets(draw) -> list:
    """[(bytes, loop turns after it)]: a stream of requests cut at random places."""
    if draw(st.integers(0, 19)) == 0:
        stream = FLOOD
    else:
        stream = b"".join(draw(st.lists(REQUEST, min_size=1, max_size=5)))
    stream = stream[: len(stream) - draw(st.sampled_from([0, 0, 0, 3, 20]))] or b"G"
    cuts = set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=6)))
    if draw(st.booleans()):  # (often: a first head alone, its body in the next packets)
        cuts.add(stream.find(b"\r\n\r\n") + 4)
    cuts = sorted(c for c in cuts if 0 < c < len(stream))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return [(p, draw(st.integers(0, 3))) for p in pieces if p]


OPTIONS = st.fixed_dictionaries(
    {
        "http": st.sampled_from(["httptools", "python", "h11"]),
        "limit_concurrency": st.sampled_from([None, None, None, 0, 1, 50]),
        "limit_request_body": st.sampled_from([None, None, None, 0, 5, 100000]),
        "limit_max_requests": st.sampled_from([None, None, 1, 2]),
        "access_log": st.booleans(),
        "root_path": st.sampled_from(["", "", "/api"]),
        "proxy_headers": st.booleans(),
    }
)


def serve(compiled: bool, packets, options, kinds, loop, peer, lifespan_state, drain, eof):
    """Serve ``packets`` on one connection and report everything it did."""
    seen: list = []
    raised: list = []
    logged: list = []
    world_ref: list = []
    app = make_app(world_ref, kinds, seen)
    with error_log(logged), contextlib.ExitStack() as stack:
        if not compiled:
            stack.enter_context(the_references())
        world = World(options, app, loop=loop, peer=peer, lifespan_state=lifespan_state)
        world_ref.append(world)
        world.state.access_log = options["access_log"]
        conn, transport = world.conn, world.transport

        def feed(data: bytes, index: int) -> None:
            try:
                conn.data_received(data)
            except Exception as exc:  # noqa: BLE001 - compared
                raised.append((index, type(exc).__name__, str(exc)))
            world.snapshot(("fed", index))

        async def drive() -> None:
            for index, (data, turns) in enumerate(packets):
                world.state.now = NOW + 1 + index  # (a timer set now says when)
                if drain is not None and drain[0] == index:
                    conn.drain(drain[1])
                    world.snapshot(("drained", index))
                for _ in range(8):  # (a real transport delivers nothing while paused)
                    if not transport.paused:
                        break
                    await asyncio.sleep(0)
                if transport.paused or transport.closing:
                    world.snapshot(("stopped", index))
                    break
                world.loop.call_soon(feed, data, index)  # (outside any task, as a transport)
                for _ in range(turns):
                    await asyncio.sleep(0)
            world.state.now = NOW + 100
            for _ in range(TURNS):
                await asyncio.sleep(0)
            world.snapshot("settled")
            world.state.now = NOW + 200
            if eof and not transport.closing:
                world.trace.append(("eof_received", conn.eof_received()))
                for _ in range(TURNS):
                    await asyncio.sleep(0)
                world.snapshot("after eof")

        try:
            world.loop.run_until_complete(drive())
        except BaseException:
            world.loop.close()
            raise
        report = world.finish()
    report.update(seen=seen, raised=raised, logged=logged)
    return report


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    packets=packets(),
    options=OPTIONS,
    kinds=st.lists(st.sampled_from(["now", "read", *APP_KINDS]), min_size=1, max_size=3),
    loop=st.sampled_from(["asyncio", "uvloop"]),
    peer=st.sampled_from([("127.0.0.1", 5555), ("192.0.2.9", 5555)]),
    lifespan_state=st.sampled_from([{}, {"db": 1}]),
    drain=st.one_of(st.none(), st.tuples(st.integers(0, 5), st.booleans())),
    eof=st.booleans(),
)
def test_the_twins_do_what_the_references_do(
    packets, options, kinds, loop, peer, lifespan_state, drain, eof
):
    args = (packets, options, kinds, loop, peer, lifespan_state, drain, eof)
    expected = serve(False, *args)
    compiled = serve(True, *args)
    for key in expected:  # (one key at a time: a shorter message when they differ)
        assert compiled[key] == expected[key], key
    assert expected["trace"]  # (it ran)


def config(**changes) -> dict:
    return {
        "http": "httptools",
        "limit_concurrency": None,
        "limit_request_body": None,
        "limit_max_requests": None,
        "access_log": False,
        "root_path": "",
        "proxy_headers": False,
        **changes,
    }


UPLOAD_HEAD = b"POST /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
LARGE = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200000
CHUNKED = (
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
)
PROXIED = (
    b"GET /x?y HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Proto: https\r\n\r\n"
)
OTHER_FORMS = (
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"
    b"GET http://a/b?c HTTP/1.1\r\nHost: a\r\n\r\n"
)
HTTP10 = b"GET / HTTP/1.0\r\n\r\n"
HTTP10_KEPT = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
CLOSING = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def scenario(packets, kinds, drain=None, eof=False, **changes) -> tuple:
    return packets, config(**changes), kinds, drain, eof


# What the random streams reach rarely, for certain.
SCENARIOS = {
    "keep-alive GETs, a packet each": scenario([(GET, 1)] * 3, ["now"]),
    "pipelined": scenario([(GET * 3, 0)], ["await"]),
    "pipelined past the limit": scenario([(FLOOD, 0), (GET, 0)], ["await"]),
    "pipelined, answered at once": scenario([(FLOOD, 0)], ["now"]),
    "100-continue": scenario([(UPLOAD_HEAD, 1), (b"01234", 1), (b"56789", 1)], ["read"]),
    "a large body": scenario(
        [(LARGE[i : i + 70000], 2) for i in range(0, len(LARGE), 70000)], ["read"]
    ),
    "the end of a body awaited": scenario([(CHUNKED[:-5], 2), (CHUNKED[-5:], 2)], ["read"]),
    "answered before the body": scenario([(UPLOAD_HEAD + b"01", 2), (b"234", 2)], ["now"]),
    "a rejection behind an exchange": scenario([(GET + b"GARBAGE\r\n\r\n", 0)], ["await"]),
    "HTTP/1.0": scenario([(HTTP10, 1)], ["stream"]),
    "HTTP/1.0 keep-alive": scenario([(HTTP10_KEPT * 2, 1)], ["now", "stream"]),
    "connection: close": scenario([(CLOSING, 1)], ["now"]),
    "max requests": scenario([(GET, 1), (GET, 1)], ["now"], limit_max_requests=1, access_log=True),
    "limit concurrency": scenario([(GET * 2, 0)], ["await"], limit_concurrency=1),
    "limit request body": scenario([(CHUNKED, 1)], ["read"], limit_request_body=4),
    "root path, proxy headers": scenario(
        [(PROXIED, 1)], ["now"], root_path="/api", proxy_headers=True
    ),
    "half-closed while answering": scenario([(GET, 0)], ["hang"], eof=True),
    "half-closed when idle": scenario([(GET, 2)], ["now"], eof=True),
    "drained between requests": scenario([(GET, 2), (GET, 2)], ["now"], drain=(1, True)),
    "drained during an exchange": scenario([(GET, 0), (GET, 2)], ["await"], drain=(1, False)),
    "failing apps": scenario([(GET, 2)] * 5, ["raise", "raise_after", "nothing", "now", "wait"]),
    "HEAD, OPTIONS *, absolute-form": scenario([(OTHER_FORMS, 1)], ["now"]),
    "a head in pieces": scenario([(GET[:5], 1), (GET[5:20], 1), (GET[20:], 1)], ["now"]),
}


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("http", ["httptools", "python", "h11"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenarios_do_what_the_references_do(name, http, loop):
    packets, opts, kinds, drain, eof = SCENARIOS[name]
    args = (packets, {**opts, "http": http}, kinds, loop, ("127.0.0.1", 5555), {}, drain, eof)
    expected = serve(False, *args)
    compiled = serve(True, *args)
    for key in expected:
        assert compiled[key] == expected[key], key
    written = b"".join(e for e in expected["events"] if isinstance(e, bytes))
    if name == "100-continue":
        assert written.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 ")
    elif name.startswith("pipelined past") or name == "a large body":
        assert "pause" in expected["events"] and "resume" in expected["events"]
    elif name == "max requests":
        assert expected["max_requests"] == ([True], None)


def test_the_streams_cover_what_they_should():
    """The world above does reach the cases the twins tell apart (the comparisons are
    not vacuous): ordinary exchanges, a pipelined one, a rejection, a body read."""
    stream = (
        b"GET /a?b=1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    report = serve(
        True,
        [(stream, 0)],
        config(access_log=True),
        ["await", "read"],
        "asyncio",
        ("127.0.0.1", 1),
        {},
        None,
        False,
    )
    written = b"".join(e for e in report["events"] if isinstance(e, bytes))
    assert written.count(b"HTTP/1.1 200 ") == written.count(b"HTTP/1.1 201 ") == 1
    assert b"HTTP/1.1 400 " in written
    assert [line[2] for line in report["access_log"]] == ["/a?b=1", "/"]
    assert report["counters"]["parse_errors"] == 1
    assert [s[1:] for s in report["seen"] if s[0] == "received"] == [
        (1, scope_state({"type": "http.request", "body": b"hello", "more_body": False}))
    ]
    assert any(entry[1]["pipeline"] == [1] for entry in report["trace"])


# Each twin's uncommon branches, one by one ----------------------------------------------


class Counted(HttpConnection):
    """Its own twins (conn_twins(Counted)), whose references count their calls: which
    path a call took.  after_response is counted too (response_done's rest)."""

    __slots__ = ()
    calls: Counter = Counter()

    def reference_data_received(self, *args, **kwargs):
        Counted.calls["data_received"] += 1
        return HttpConnection.reference_data_received(self, *args, **kwargs)

    def reference_on_request(self, *args, **kwargs):
        Counted.calls["on_request"] += 1
        return HttpConnection.reference_on_request(self, *args, **kwargs)

    def reference_on_request_end(self, *args, **kwargs):
        Counted.calls["on_request_end"] += 1
        return HttpConnection.reference_on_request_end(self, *args, **kwargs)

    def reference_response_done(self, *args, **kwargs):
        Counted.calls["response_done"] += 1
        return HttpConnection.reference_response_done(self, *args, **kwargs)

    def after_response(self, cycle) -> None:
        Counted.calls["after_response"] += 1
        HttpConnection.after_response(self, cycle)


if INSTALLED:
    COUNTED = conn_twins(Counted)
    for _name in NAMES:
        setattr(Counted, _name, getattr(COUNTED, _name))


def outcome(function, *args, **kwargs):
    try:
        return ("returned", function(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - compared
        return ("raised", type(exc), str(exc), getattr(exc, "status", None))


def one_call(via: str, name: str, prepare, arguments, options=None, app=None):
    """A fresh world, ``prepare(world)``, then one call of ``name`` with
    ``arguments(world, what prepare returned)``: (args, kwargs).  Through the
    reference, the installed twin, or Counted's twin.  Returns the report and, for
    Counted, the calls its references had."""
    logged: list = []
    with error_log(logged):
        world = World(options or {}, app, Counted if via == "counted" else HttpConnection)
        try:
            prepared = world.call(lambda: prepare(world))
            world.state.now += 1  # (a timer the call sets says so)
            conn = world.conn
            if via == "reference":
                method = getattr(HttpConnection, "reference_" + name).__get__(conn)
            else:
                method = getattr(conn, name)
            args, kwargs = arguments(world, prepared)
            Counted.calls.clear()
            result = world.call(lambda: outcome(method, *args, **kwargs))
            calls = dict(Counted.calls)
            world.trace.append(("result", result))
            world.snapshot("after")
        except BaseException:
            world.loop.close()
            raise
        report = world.finish()
    report["logged"] = logged
    return report, calls


def no_arguments(world, prepared):
    return (), {}


def same_as_reference(name, prepare, arguments=no_arguments, options=None, app=None):
    """The installed twin does what the reference does; returns (report, the calls
    Counted's references had: which path the twin took)."""
    expected, _ = one_call("reference", name, prepare, arguments, options, app)
    report, _ = one_call("twin", name, prepare, arguments, options, app)
    for key in expected:
        assert report[key] == expected[key], key
    counted, calls = one_call("counted", name, prepare, arguments, options, app)
    assert counted["trace"] == expected["trace"]
    assert counted["events"] == expected["events"]
    return expected, calls


def result_of(report):
    return next(entry[1] for entry in report["trace"] if entry[0] == "result")


GET_HEAD = ("GET", b"/", "1.1", [(b"host", b"a")], True)


def exchange(world, keep_alive=True, end=True):
    """An exchange the unit itself answers (not started: no app runs)."""
    conn = world.conn
    HttpConnection.reference_on_request(conn, "GET", b"/p", "1.1", [(b"host", b"a")], keep_alive)
    cycle = conn.parsing
    if end:
        HttpConnection.reference_on_request_end(conn)
    conn.ready = None
    cycle.status = 200
    cycle.state = COMPLETE
    world.ordinal(cycle)
    return cycle


def the_cycle(world, cycle):
    return (cycle,), {}


# response_done


def _common(world):
    return exchange(world)


def _not_kept_alive(world):
    return exchange(world, keep_alive=False)


def _kept_alive_as_1(world):
    cycle = exchange(world)
    cycle.keep_alive = 1  # (truthy, not True)
    return cycle


def _draining(world):
    cycle = exchange(world)
    world.conn.draining = True
    return cycle


def _closed(world):
    cycle = exchange(world)
    world.conn.close()
    return cycle


def _pipelined(feeding):
    def prepare(world):
        cycle = exchange(world)
        conn = world.conn
        HttpConnection.reference_on_request(conn, "GET", b"/next", "1.1", [], True)
        HttpConnection.reference_on_request_end(conn)
        conn.feeding = feeding
        return cycle

    return prepare


def _rejected(world):
    cycle = exchange(world)
    world.conn.rejection = world.state.canned(400)
    return cycle


def _body_arriving(keep_alive):
    def prepare(world):
        return exchange(world, keep_alive=keep_alive, end=False)

    return prepare


def _read_paused(world):
    cycle = exchange(world)
    world.conn.pause_reading()
    return cycle


def _not_current(world):
    exchange(world)
    cycle = RequestCycle(world.conn, world.conn.cycle.scope, True)  # (another exchange's)
    cycle.status = 200
    return cycle


def _subclass_cycle(world):
    class Other(RequestCycle):
        __slots__ = ()

    conn = world.conn
    cycle = Other(conn, exchange(world).scope, True)
    cycle.status = 200
    conn.cycle = cycle
    return cycle


def _max_requests(world):
    world.state.requests_left = 1  # account drains the connection
    return exchange(world)


def _clock_moved(world):
    cycle = exchange(world)
    world.state.now = NOW + 7  # (timer_since is read after account)
    return cycle


RESPONSE_DONE = {
    "common": (_common, "C"),
    "keep_alive False": (_not_kept_alive, "after_response"),
    "keep_alive 1": (_kept_alive_as_1, "after_response"),
    "draining": (_draining, "after_response"),
    "closed": (_closed, "after_response"),
    "pipelined, feeding": (_pipelined(True), "after_response"),
    "pipelined, not feeding": (_pipelined(False), "after_response"),
    "rejection": (_rejected, "after_response"),
    "body arriving, kept alive": (_body_arriving(True), "after_response"),
    "body arriving, closing": (_body_arriving(False), "after_response"),
    "read paused": (_read_paused, "after_response"),
    "not the current cycle": (_not_current, "after_response"),
    "a RequestCycle subclass": (_subclass_cycle, "after_response"),
    "max requests reached in account": (_max_requests, "after_response"),
    "the clock moved": (_clock_moved, "C"),
}


@pytest.mark.parametrize("case", list(RESPONSE_DONE))
def test_response_done(case):
    prepare, path = RESPONSE_DONE[case]
    options = {"limit_max_requests": 5} if case.startswith("max requests") else {}
    report, calls = same_as_reference("response_done", prepare, the_cycle, options=options)
    assert result_of(report) == ("returned", None)
    assert report["latency"][0] >= 1  # (account ran)
    if path == "C":
        assert calls == {}
    else:
        assert calls == {"after_response": 1}


def test_response_done_when_account_raises(monkeypatch):
    """account first; if it raises, the error propagates and nothing else is done."""

    def account(state, cycle):
        raise ZeroDivisionError("account failed")

    twins = conn_twins(account=account)
    results = []
    for via in ("reference", "twin"):
        world = World({})
        with monkeypatch.context() as patch:
            patch.setattr(protocol, "account", account)  # (the reference's)
            cycle = exchange(world)
            before = world.conn_state()
            method = (
                HttpConnection.reference_response_done.__get__(world.conn)
                if via == "reference"
                else twins.response_done.__get__(world.conn)
            )
            results.append((outcome(method, cycle), before == world.conn_state()))
        world.finish()
    assert results[0] == results[1]
    assert results[0] == (("raised", ZeroDivisionError, "account failed", None), True)


# on_request


def _fresh(world):
    return None


def _running(world):
    exchange(world)


def _nearly_full_pipeline(world):
    exchange(world)
    for _ in range(MAX_PIPELINE - 1):
        HttpConnection.reference_on_request(world.conn, "GET", b"/", "1.1", [], True)
        HttpConnection.reference_on_request_end(world.conn)


def _head(method, target, keep_alive=True, headers=((b"host", b"a"),)):
    return lambda world, prepared: ((method, target, "1.1", list(headers), keep_alive), {})


ON_REQUEST = {
    "common": (_fresh, _head("GET", b"/a?b=1"), {}, "C"),
    "a query with two ?": (_fresh, _head("GET", b"/a?b?c"), {}, "C"),
    "an empty query": (_fresh, _head("GET", b"/?"), {}, "C"),
    "a quoted path": (_fresh, _head("GET", b"/p%41th"), {}, "C"),
    "root path and proxy headers": (
        _fresh,
        _head("GET", b"/x", headers=[(b"x-forwarded-for", b"10.0.0.1")]),
        {"root_path": "/api", "proxy_headers": True},
        "C",
    ),
    "not ASCII (request_scope raises)": (_fresh, _head("GET", b"/caf\xc3\xa9"), {}, "C"),
    "not kept alive": (_fresh, _head("GET", b"/", keep_alive=False), {}, "C"),
    "limit_concurrency not reached": (
        _fresh,
        _head("GET", b"/"),
        {"limit_concurrency": 50},
        "reference",
    ),
    "limit_concurrency reached": (
        _fresh,
        _head("GET", b"/"),
        {"limit_concurrency": 0},
        "reference",
    ),
    "limit_request_body": (_fresh, _head("POST", b"/"), {"limit_request_body": 10}, "reference"),
    "limit_request_body exceeded": (
        _fresh,
        _head("POST", b"/", headers=[(b"content-length", b"11")]),
        {"limit_request_body": 10},
        "reference",
    ),
    "an exchange running": (_running, _head("GET", b"/"), {}, "reference"),
    "the pipeline full": (_nearly_full_pipeline, _head("GET", b"/"), {}, "reference"),
    "OPTIONS *": (_fresh, _head("OPTIONS", b"*"), {}, "reference"),
    "GET *": (_fresh, _head("GET", b"*"), {}, "reference"),
    "absolute-form": (_fresh, _head("GET", b"http://h/x?y=1"), {}, "reference"),
    "absolute-form, no path": (_fresh, _head("GET", b"https://h?q"), {}, "reference"),
    "CONNECT": (_fresh, _head("CONNECT", b"h:443"), {}, "reference"),
    "an empty target": (_fresh, _head("GET", b""), {}, "reference"),
    "a bytearray target": (_fresh, _head("GET", bytearray(b"/x")), {}, "reference"),
    "a str target": (_fresh, _head("GET", "/x"), {}, "reference"),
}


@pytest.mark.parametrize("case", list(ON_REQUEST))
def test_on_request(case):
    prepare, args, options, path = ON_REQUEST[case]
    report, calls = same_as_reference("on_request", prepare, args, options=options)
    assert calls == ({} if path == "C" else {"on_request": 1})
    if case == "common":
        assert result_of(report) == ("returned", None)
        assert report["cycles"][0][:6] == tuple(map(typed, (0, "unset", True, 0, b"", False)))


# on_request_end


def _parsing(world):
    HttpConnection.reference_on_request(world.conn, *GET_HEAD)
    world.conn.ready = None
    world.ordinal(world.conn.parsing)


def _waited_for(world):
    _parsing(world)
    world.conn.parsing.waiter = world.loop.create_future()


def _answered_early(world):
    _parsing(world)
    world.conn.cycle = None  # (answered before its body ended, kept alive)


def _subclass_parsing(world):
    class Other(RequestCycle):
        __slots__ = ()

    _parsing(world)
    conn = world.conn
    conn.parsing = conn.cycle = Other(conn, conn.parsing.scope, True)
    world.ordinal(conn.parsing)


def _nothing_parsing(world):
    world.conn.parsing = None


ON_REQUEST_END = {
    "common": (_parsing, "C"),
    "answered early": (_answered_early, "C"),
    "a waiter": (_waited_for, "reference"),
    "a RequestCycle subclass": (_subclass_parsing, "reference"),
    "nothing parsing": (_nothing_parsing, "reference"),
}


@pytest.mark.parametrize("case", list(ON_REQUEST_END))
def test_on_request_end(case):
    prepare, path = ON_REQUEST_END[case]
    report, calls = same_as_reference("on_request_end", prepare)
    assert calls == ({} if path == "C" else {"on_request_end": 1})
    if case == "answered early":
        assert report["trace"][-2][1]["timer"] == typed(IDLE)


# data_received


class StubParser:
    """Stands in for the parser: calls the sink, then raises what it is given."""

    def __init__(self, conn, heads: int = 0, error: BaseException | None = None) -> None:
        self.conn = conn
        self.heads = heads
        self.error = error

    def feed(self, data) -> None:
        for _ in range(self.heads):
            self.conn.on_request(*GET_HEAD)
            self.conn.on_request_end()
        if self.error is not None:
            raise self.error


def _stub(heads=0, error=None, timer=None, fail_writes=False):
    def prepare(world):
        world.conn.parser = StubParser(world.conn, heads, error)
        if timer is not None:
            world.conn.timer = timer
        world.transport.fail_writes = fail_writes

    return prepare


def _failing_start(world):
    def start(coro):
        coro.close()
        raise ValueError("start failed")

    _stub(heads=1)(world)
    world.conn.start = start


def _other_counters(world):
    class Other(ShardCounters):
        __slots__ = ()

    world.conn.counters = Other()


def _data(data):
    return lambda world, prepared: ((data,), {})


DATA_RECEIVED = {
    "a GET": (_fresh, _data(GET), "C"),
    "two GETs": (_fresh, _data(GET * 2), "C"),
    "half a head": (_fresh, _data(GET[:10]), "C"),
    "not idle": (_stub(timer=NO_TIMER), _data(b"x"), "C"),
    "reading a head": (_stub(timer=READING_HEAD), _data(b"x"), "C"),
    "a ParseError": (_stub(error=ParseError(400, "bad")), _data(b"x"), "C"),
    "a ParseError after a head": (_stub(1, ParseError(400, "bad")), _data(b"x"), "C"),
    "a 503 ParseError": (_stub(error=ParseError(503, "busy")), _data(b"x"), "C"),
    "another exception": (_stub(error=ValueError("parser bug")), _data(b"x"), "C"),
    "another exception after a head": (_stub(1, KeyError("k")), _data(b"x"), "C"),
    "reject raises": (_stub(error=ParseError(400, "bad"), fail_writes=True), _data(b"x"), "C"),
    "start raises": (_failing_start, _data(b"x"), "C"),
    "a bytearray": (_fresh, _data(bytearray(GET)), "reference"),
    "a memoryview": (_stub(), _data(memoryview(GET)), "reference"),
    "a str": (_stub(), _data("text"), "reference"),
    "other counters": (_other_counters, _data(GET), "reference"),
}


@pytest.mark.parametrize("case", list(DATA_RECEIVED))
def test_data_received(case):
    prepare, args, path = DATA_RECEIVED[case]
    report, calls = same_as_reference("data_received", prepare, args)
    if path == "C":
        assert "data_received" not in calls
    else:
        assert calls.get("data_received") == 1
    if case == "another exception":
        assert result_of(report) == ("raised", ValueError, "parser bug", None)
        assert report["trace"][-2][1]["feeding"] == typed(True)  # (as the reference leaves it)


def test_an_error_from_reject_carries_the_parse_error_as_context():
    contexts = []
    for via in ("reference", "twin"):
        world = World({})
        _stub(error=ParseError(400, "bad"), fail_writes=True)(world)
        method = world.conn.data_received
        if via == "reference":
            method = HttpConnection.reference_data_received.__get__(world.conn)
        with pytest.raises(OSError) as info:
            method(b"x")
        contexts.append(type(info.value.__context__))
        world.finish()
    assert contexts[1] == contexts[0] == ParseError


# Arguments: wrong counts and keywords go to the reference (the same TypeError)

WITH_ARGUMENTS = [
    ("data_received", (), {}),
    ("data_received", (GET, GET), {}),
    ("data_received", (), {"data": GET}),
    ("data_received", (GET,), {"extra": 1}),
    ("on_request", GET_HEAD[:4], {}),
    ("on_request", (*GET_HEAD, 1), {}),
    ("on_request", GET_HEAD[:4], {"keep_alive": True}),
    (
        "on_request",
        (),
        {"method": "GET", "target": b"/", "http_version": "1.1", "headers": [], "keep_alive": True},
    ),
    ("on_request_end", (1,), {}),
    ("on_request_end", (), {"x": 1}),
    ("response_done", (), {}),
    ("response_done", ("cycle", 2), {}),
    ("response_done", (), {"cycle": "cycle"}),
]


@pytest.mark.parametrize(("name", "args", "kwargs"), WITH_ARGUMENTS)
def test_other_arguments_go_to_the_reference(name, args, kwargs):
    def prepare(world):
        if name in ("on_request_end", "response_done"):
            return exchange(world, end=name == "response_done")
        return None

    def arguments(world, cycle):  # ("cycle": the world's own)
        return (
            tuple(cycle if a == "cycle" else a for a in args),
            {k: cycle if v == "cycle" else v for k, v in kwargs.items()},
        )

    report, calls = same_as_reference(name, prepare, arguments)
    assert calls.get(name) == 1


def test_the_installed_methods_are_the_twins():
    for name in NAMES:
        twin = HttpConnection.__dict__[name]
        assert type(twin).__name__ == "Twin"
        assert twin.reference is getattr(HttpConnection, "reference_" + name)
        conn = HttpConnection.__new__(HttpConnection)
        assert getattr(conn, name).__self__ is conn


def test_a_class_without_the_slots_is_refused():
    class Loose:
        pass

    for field in ("connection_class", "cycle_class", "counters_class"):
        with pytest.raises(TypeError, match="__slots__"):
            _conn.ConnTwins(**{**twins_arguments(), field: Loose})
    with pytest.raises(TypeError, match="not a class"):
        _conn.ConnTwins(**{**twins_arguments(), "connection_class": "x"})
    with pytest.raises(TypeError):
        _conn.ConnTwins(**{**twins_arguments(), "parse_error": 1})

    class NoReferences:
        __slots__ = HttpConnection.__slots__

    with pytest.raises(AttributeError):  # (no references to call)
        _conn.ConnTwins(**{**twins_arguments(), "connection_class": NoReferences})


def twins_arguments() -> dict:
    return {
        "connection_class": HttpConnection,
        "cycle_class": RequestCycle,
        "counters_class": ShardCounters,
        "parse_error": ParseError,
        "request_scope": scope_module.request_scope,
        "account": scope_module.account,
        "perf_counter": cycle_module.perf_counter,
    }


# Common cases take the compiled path ----------------------------------------------------


def test_ordinary_requests_take_the_compiled_path():
    """Keep-alive GETs (and a POST with its body in the packet), one packet each,
    answered at once or after an await: no reference is called, nor after_response."""

    async def after_an_await(scope, receive, send):
        await asyncio.sleep(0)
        await answer_at_once(scope, receive, send)

    async def reading(scope, receive, send):
        assert (await receive())["more_body"] is False
        await answer_at_once(scope, receive, send)

    requests = [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /search?q=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    ]
    for app in (answer_at_once, after_an_await, reading):
        for loop in ("asyncio", "uvloop"):
            for http in ("httptools", "python", "h11"):
                world = World({"http": http}, app, Counted, loop=loop)
                feed = world.conn.data_received
                Counted.calls.clear()
                for request in requests * 3:
                    world.call(lambda r=request, feed=feed: feed(r), turns=8)
                calls = dict(Counted.calls)
                report = world.finish()
                assert calls == {}, (app.__name__, loop, http)
                answers = [e for e in report["events"] if isinstance(e, bytes)]
                assert len(answers) == 15 and all(a.startswith(b"HTTP/1.1 200 OK") for a in answers)
    # (and the counting does see the uncommon cases: a pipelined request)
    world = World({}, None, Counted)
    Counted.calls.clear()
    world.call(lambda: world.conn.data_received(GET * 2))
    calls = dict(Counted.calls)
    world.finish()
    assert calls == {"on_request": 1, "after_response": 1}


def test_subclasses_get_the_reference():
    """A subclass (its slots may lie elsewhere, its methods may be overridden) never
    takes the compiled path, whatever the call."""

    class Sub(Counted):
        __slots__ = ()

    world = World({}, None, Sub)
    Counted.calls.clear()
    world.call(lambda: world.conn.data_received(GET))
    calls = dict(Counted.calls)
    world.finish()
    assert calls == {
        "data_received": 1,
        "on_request": 1,
        "on_request_end": 1,
        "response_done": 1,
        "after_response": 1,
    }


# No leak ---------------------------------------------------------------------------------


def test_no_object_is_leaked_on_any_path():
    """Many connections through the twins, on every path (compiled, left to the
    reference or to after_response, a rejection, an app that fails, pipelining, bad
    arguments): neither traced memory, nor the connections and cycles alive, nor the
    references held to the objects the twins store (None, True, False, 0, 1, 2, b"")
    grow with the number of requests.

    Each round serves 40 keep-alive GETs all the way through the compiled paths (each
    twin, each request) and 5 more connections through the others, and makes 7 direct
    calls; 100 rounds are 4000 requests on the compiled path alone.  A twin that leaked
    one object per request (the smallest, a float or an int, is 24 bytes or more) would
    grow by 94 KiB or more, a leaked cycle or scope by megabytes: the bound, 40 KiB,
    catches both, where the growth measured without a leak is under 10 KiB whatever the
    number of rounds (tracemalloc's own, first-use caches).  A leaked reference to a
    connection or cycle keeps it alive: counted.  A missing Py_DECREF of a stored
    singleton grows its reference count by thousands, where the noise is a few."""
    kinds = ["now", "await", "read", "raise"]
    streams = [
        GET * 3,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel",  # (the rest later)
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",  # rejected (400)
        b"GARBAGE\r\n\r\n",
        GET + b"GET * HTTP/1.1\r\nHost: a\r\n\r\n" + GET,
    ]
    seen: list = []
    world_ref: list = []
    world = World({}, make_app(world_ref, kinds, seen))
    world_ref.append(world)
    state, loop = world.state, world.loop
    plain = ShardState(Config(app="tests:app"), answer_at_once, loop)  # (always compiled)

    async def turns(n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    def keep_alive(conn) -> None:
        for _ in range(40):
            conn.data_received(GET)

    async def round_() -> None:
        seen.clear()
        conn = HttpConnection(plain)
        conn.connection_made(MemoryTransport())
        loop.call_soon(keep_alive, conn)
        await turns(2)
        assert conn.counters.bytes_out and conn.cycle is None and conn.timer == IDLE
        conn.connection_lost(None)
        for stream in streams:
            conn = HttpConnection(state)
            conn.connection_made(MemoryTransport())
            loop.call_soon(conn.data_received, stream)
            await turns(6)
            loop.call_soon(conn.data_received, b"lo")
            await turns(6)
            conn.connection_lost(None)
            await turns(2)
        conn = world.conn = HttpConnection(state)
        conn.connection_made(MemoryTransport())
        cycle = exchange(world)
        for call in (
            lambda: conn.data_received(),
            lambda: conn.on_request(*GET_HEAD[:4]),
            lambda: conn.on_request_end(1),
            lambda: conn.response_done(cycle, 1),
            lambda: conn.response_done(),
        ):
            with contextlib.suppress(TypeError):
                call()
        conn.data_received(data=b"")
        conn.response_done(cycle)
        conn.connection_lost(None)
        world.cycles.clear()

    singletons = (None, True, False, 0, 1, 2, b"")

    def references() -> list:
        return [sys.getrefcount(obj) for obj in singletons]

    def alive() -> int:
        return sum(type(o) in (HttpConnection, RequestCycle) for o in gc.get_objects())

    async def main() -> tuple:
        for _ in range(10):
            await round_()
        gc.collect()
        objects = alive()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            counts = references()
            for _ in range(100):
                await round_()
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
            counted = [after - was for after, was in zip(references(), counts, strict=True)]
        finally:
            tracemalloc.stop()
        return grown, alive() - objects, counted

    ERRORS.disabled = True  # (the failing apps log: captured records would grow)
    try:
        grown, objects, counted = loop.run_until_complete(main())
    finally:
        ERRORS.disabled = False
        world.finish()
    assert grown < 40 * 1024, f"{grown} bytes more after 100 rounds"
    assert objects <= 0, f"{objects} more connections and cycles alive"
    assert max(map(abs, counted)) < 500, dict(zip(map(repr, singletons), counted, strict=True))
