"""The compiled twins of scope.py's request_scope and account (shardserve/shard/http/
_scope.c) against the pure-Python references they mirror.

For any arguments, the twin returns what the reference returns (the same scope: keys,
order, values, a fresh lifespan-state copy) or raises what it raises, and leaves the
counters exactly as the reference does (the clock is made the same for both).  The
common case must take the compiled path; no object may leak.  CI also runs this
module under valgrind (.ci/memcheck.py).
"""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardserve.config import Config
from shardserve.messages import LATENCY_BUCKETS
from shardserve.shard.http import scope as scope_module
from shardserve.shard.http.parser import ParseError
from shardserve.shard.http.proxy import PROXY_HEADERS, apply_proxy_headers
from shardserve.shard.state import METHOD_SLOTS, OTHER_SLOT, ShardCounters, ShardState

try:
    from shardserve.shard.http._scope import Twins
except ImportError:  # pragma: no cover - CI builds it
    Twins = None

pytestmark = pytest.mark.skipif(Twins is None, reason="the compiled module is not built")
EXAMPLES = int(os.environ.get("SCOPE_TWINS_EXAMPLES", "1000"))


class Clock:
    """perf_counter for both sides: the same reading each time it is set."""

    now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


class Counting:
    def __init__(self, function) -> None:
        self.function = function
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return self.function(*args)


def twins(scope_reference=None, account_reference=None):
    return Twins(
        scope_reference or scope_module.reference_request_scope,
        account_reference or scope_module.reference_account,
        tuple(LATENCY_BUCKETS),
        METHOD_SLOTS,
        OTHER_SLOT,
        CLOCK,
        apply_proxy_headers,
        PROXY_HEADERS,
    )


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def same_clock(monkeypatch):
    monkeypatch.setattr(scope_module, "perf_counter", CLOCK)


class Transport:
    def __init__(self, peer) -> None:
        self.peer = peer

    def get_extra_info(self, name):
        return self.peer if name == "peername" else ("127.0.0.1", 8000)


def shard_state(loop, root_path: str, lifespan_state, proxy_headers: bool) -> ShardState:
    config = Config(app="tests:app", root_path=root_path, proxy_headers=proxy_headers)
    state = ShardState(config, None, loop)
    state.lifespan_state = lifespan_state
    return state


def outcome(function, *args):
    try:
        return ("returned", function(*args))
    except ParseError as exc:
        return ("raised", exc.status, exc.reason)


def same_scope(fast, expected) -> None:
    assert fast[0] == expected[0]
    if fast[0] == "raised":
        assert fast == expected
        return
    a, b = fast[1], expected[1]
    assert list(a.items()) == list(b.items())
    assert [type(v) for v in a.values()] == [type(v) for v in b.values()]


# request_scope ------------------------------------------------------------------------

PATH_BYTES = st.sampled_from(
    [b"/", b"/a", b"/a/b", b"/%41", b"/%zz", b"/caf\xc3\xa9", b"/\x80", b"/a b", b"*", b"/q"]
)
FIELDS = st.sampled_from(
    [
        (b"host", b"a"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"10.0.0.1, 192.0.2.9"),
        (b"x-forwarded-proto", b"https"),
        (b"forwarded", b'for="[2001:db8::1]:80";proto=https'),
        (b"x-forwarded-for", b"garbage"),
        (b"X-Forwarded-For", b"10.1.1.1"),
    ]
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    raw_path=st.one_of(PATH_BYTES, st.binary(max_size=12).map(lambda b: b"/" + b)),
    query=st.sampled_from([b"", b"a=1", b"%20"]),
    method=st.sampled_from(["GET", "HEAD", "POST", "BREW"]),
    version=st.sampled_from(["1.1", "1.0", "2"]),
    fields=st.lists(FIELDS, max_size=4),
    root_path=st.sampled_from(["", "/api"]),
    lifespan_state=st.sampled_from([{}, {"db": 1}]),
    trusted=st.booleans(),
    peer=st.sampled_from([("127.0.0.1", 5000), ("192.0.2.9", 5000), None]),
    proxy_headers=st.booleans(),
)
def test_request_scope_twin_builds_what_the_reference_builds(
    loop, raw_path, query, method, version, fields, root_path, lifespan_state, trusted, peer,
    proxy_headers,
):  # fmt: skip
    state = shard_state(loop, root_path, lifespan_state, proxy_headers)
    template = scope_module.scope_template(state, Transport(peer), "http", "1.1")
    args = (template, state, trusted, method, raw_path, query, version, list(fields))
    expected = outcome(scope_module.reference_request_scope, *args)
    fast = outcome(twins().request_scope, *args)
    same_scope(fast, expected)
    if fast[0] == "returned":
        assert fast[1]["state"] is not lifespan_state  # (a copy per request)
        assert fast[1] is not template


def test_the_common_scope_takes_the_compiled_path(loop):
    counting = Counting(scope_module.reference_request_scope)
    request_scope = twins(scope_reference=counting).request_scope
    for proxy_headers in (False, True):  # (trusted, as loopback is by default)
        state = shard_state(loop, "", {}, proxy_headers)
        template = scope_module.scope_template(state, Transport(("127.0.0.1", 1)), "http", "1.1")
        trusted = scope_module.is_trusted(state, template)
        assert trusted is proxy_headers
        for fields in ([(b"host", b"a")], [(b"host", b"a"), (b"x-forwarded-proto", b"https")]):
            scope = request_scope(template, state, trusted, "GET", b"/p", b"q=1", "1.1", fields)
            expected = scope_module.reference_request_scope(
                template, state, trusted, "GET", b"/p", b"q=1", "1.1", fields
            )
            assert list(scope.items()) == list(expected.items())
    assert counting.calls == 0
    assert scope["scheme"] == "https"  # (trusted, and a proxy header applied)


def test_the_installed_functions_are_the_twins_unless_pure_python():
    if os.environ.get("SHARDSERVE_PURE_PYTHON") == "1":
        assert scope_module.request_scope is scope_module.reference_request_scope
        assert scope_module.account is scope_module.reference_account
    else:
        assert type(scope_module.request_scope.__self__) is Twins
        assert type(scope_module.account.__self__) is Twins


# account --------------------------------------------------------------------------------


class AccessLog:
    def __init__(self) -> None:
        self.lines: list = []

    def log(self, *args) -> None:
        self.lines.append(args)


def counted(loop, function, elapsed, status, method, access_log, requests_left):
    state = shard_state(loop, "", {}, False)
    state.access_log = access_log
    state.access_logger = AccessLog()
    state.requests_left = requests_left
    reached = []
    state.on_max_requests = lambda: reached.append(True)
    scope = {"method": method, "path": "/p", "query_string": b"", "http_version": "1.1",
             "client": ("192.0.2.1", 1)}  # fmt: skip
    cycle = SimpleNamespace(started=CLOCK.now - elapsed, status=status, scope=scope)
    counters: ShardCounters = state.counters
    try:
        function(state, cycle)
        result = "returned"
    except Exception as exc:  # noqa: BLE001 - compared
        result = type(exc).__name__
    return (
        result,
        list(counters.latency),
        counters.latency_sum,
        list(counters.responses),
        state.access_logger.lines,
        state.requests_left,
        reached,
    )


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    elapsed=st.one_of(
        st.sampled_from([0.0, *LATENCY_BUCKETS, 1e9]),
        st.floats(min_value=0, max_value=100, allow_nan=False),
    ),
    status=st.one_of(
        st.sampled_from([0, 101, 200, 304, 404, 500, 599, 999]), st.integers(-5, 1200)
    ),
    method=st.sampled_from(["GET", "HEAD", "POST", "BREW", "OPTIONS"]),
    access_log=st.booleans(),
    requests_left=st.sampled_from([None, 1, 5]),
)
def test_account_twin_counts_what_the_reference_counts(
    loop, elapsed, status, method, access_log, requests_left
):
    args = (elapsed, status, method, access_log, requests_left)
    expected = counted(loop, scope_module.reference_account, *args)
    assert counted(loop, twins().account, *args) == expected


def test_the_common_count_takes_the_compiled_path(loop):
    counting = Counting(scope_module.reference_account)
    account = twins(account_reference=counting).account
    outcome = counted(loop, account, 0.0002, 200, "GET", False, None)
    assert outcome[0] == "returned" and sum(outcome[1]) == 1 and sum(outcome[3]) == 1
    assert counting.calls == 0


def test_no_object_is_leaked_on_any_path(loop):
    import gc
    import tracemalloc

    compiled = twins()
    fast_state = shard_state(loop, "", {"k": 1}, True)
    slow_state = shard_state(loop, "/root", {}, False)
    template = scope_module.scope_template(fast_state, Transport(("127.0.0.1", 1)), "http", "1.1")
    fields = [(b"host", b"a"), (b"x-forwarded-for", b"10.0.0.1")]
    cycle = SimpleNamespace(started=CLOCK.now - 0.001, status=200, scope={"method": "GET"})

    def calls(n: int) -> None:
        for _ in range(n):
            compiled.request_scope(template, fast_state, True, "GET", b"/a", b"", "1.1", fields)
            compiled.request_scope(template, fast_state, False, "GET", b"/%41", b"", "1.1", [])
            compiled.request_scope(template, slow_state, False, "GET", b"/a", b"", "1.1", [])
            try:
                compiled.request_scope(template, fast_state, False, "GET", b"/\x80", b"", "1.1", [])
            except ParseError:
                pass
            compiled.account(fast_state, cycle)

    calls(1000)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        calls(10000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes more after 50000 calls"
