"""The compiled twins' attribute caches (_twins.h: get_attr, set_attr) keep Python's
attribute rules.

A cache notes a class's version tag and a __slots__ member's offset, and reads or
writes later objects of that class at the offset.  These tests warm a cache, then
change what the name means (the class changed, a subclass, another slotted class with
another layout, an emptied slot) and check that the twin sees what Python sees.  They
go through scope.py's account twin, which reads ShardState, the request cycle and
ShardCounters by name and writes counters.latency_sum.
"""

from __future__ import annotations

import asyncio

import pytest
from test_scope_twins import Counting

from shardserve.config import Config
from shardserve.messages import LATENCY_BUCKETS
from shardserve.shard.http import scope as scope_module
from shardserve.shard.http.proxy import PROXY_HEADERS, apply_proxy_headers
from shardserve.shard.state import METHOD_SLOTS, OTHER_SLOT, ShardCounters, ShardState

try:
    from shardserve.shard.http._scope import Twins
except ImportError:  # pragma: no cover - CI builds it
    Twins = None

pytestmark = pytest.mark.skipif(Twins is None, reason="the compiled module is not built")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class AccessLog:
    def __init__(self) -> None:
        self.lines: list = []

    def log(self, *args) -> None:
        self.lines.append(args)


class Cycle:
    __slots__ = ("started", "status", "scope")

    def __init__(self, status: int = 200) -> None:
        self.started = 999.9995
        self.status = status
        self.scope = {"method": "GET", "path": "/", "query_string": b"",
                      "http_version": "1.1", "client": ("192.0.2.1", 1)}  # fmt: skip


class OtherCycle:
    """The same names as Cycle, at other offsets."""

    __slots__ = ("padding", "scope", "status", "started")

    def __init__(self, status: int) -> None:
        self.padding = None
        self.started = 999.9995
        self.status = status
        self.scope = {"method": "GET", "path": "/", "query_string": b"",
                      "http_version": "1.1", "client": ("192.0.2.1", 1)}  # fmt: skip


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class Account:
    """The account twin, counting the calls that reach its reference."""

    def __init__(self, clock: Clock) -> None:
        self.reference = Counting(scope_module.reference_account)
        self.twins = Twins(
            scope_module.reference_request_scope, self.reference, tuple(LATENCY_BUCKETS),
            METHOD_SLOTS, OTHER_SLOT, clock, apply_proxy_headers, PROXY_HEADERS,
        )  # fmt: skip

    def __call__(self, state, cycle) -> None:
        self.twins.account(state, cycle)


@pytest.fixture
def account(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(scope_module, "perf_counter", clock)  # (the reference's clock)
    return Account(clock)


def new_state(loop, cls=ShardState) -> ShardState:
    state = cls(Config(app="tests:app", access_log=False), None, loop)
    state.access_logger = AccessLog()
    return state


def warm(account, state, times: int = 3) -> None:
    for _ in range(times):
        account(state, Cycle())


def test_slotted_objects_take_the_compiled_path(loop, account):
    state = new_state(loop)
    warm(account, state, 5)
    assert account.reference.calls == 0
    assert sum(state.counters.responses) == 5
    assert state.counters.latency_sum == pytest.approx(5 * 0.0005)


def test_a_class_changed_after_the_cache_was_filled_is_read_anew(loop, account):
    state = new_state(loop)
    warm(account, state)
    slot = ShardState.__dict__["access_log"]
    try:
        ShardState.access_log = property(lambda self: True)  # (the class changes)
        account(state, Cycle())
        assert state.access_logger.lines, "the twin read the old slot"
        assert account.reference.calls == 1
    finally:
        ShardState.access_log = slot
    lines = len(state.access_logger.lines)
    account(state, Cycle())
    assert len(state.access_logger.lines) == lines
    assert account.reference.calls == 1


def test_a_subclass_is_not_read_through_its_base_class_cache(loop, account):
    class Logged(ShardState):
        __slots__ = ()
        access_log = property(lambda self: True, lambda self, value: None)

    plain = new_state(loop)
    warm(account, plain)
    logged = new_state(loop, Logged)
    ShardState.__dict__["access_log"].__set__(logged, False)  # (the slot under the property)
    account(logged, Cycle())
    assert logged.access_logger.lines and account.reference.calls == 1
    warm(account, plain)
    assert not plain.access_logger.lines and account.reference.calls == 1


def test_classes_with_the_same_names_at_other_offsets(loop, account):
    state = new_state(loop)
    for status in (200, 404, 500, 201, 302):
        account(state, Cycle(status))
        account(state, OtherCycle(status))
    responses = state.counters.responses
    assert [responses[s // 100] for s in (100, 200, 300, 400, 500)] == [0, 4, 2, 2, 2]
    assert account.reference.calls == 0


def test_an_emptied_slot_raises_as_the_reference_does(loop, account):
    state = new_state(loop)
    warm(account, state)
    del state.requests_left
    with pytest.raises(AttributeError):
        account(state, Cycle())
    with pytest.raises(AttributeError):
        scope_module.reference_account(state, Cycle())
    state.requests_left = None
    warm(account, state)


def test_a_write_goes_through_a_setter_that_replaced_the_slot(loop, account):
    state = new_state(loop)
    warm(account, state)
    written = []
    slot = ShardCounters.__dict__["latency_sum"]
    try:
        ShardCounters.latency_sum = property(
            lambda self: 0.0, lambda self, value: written.append(value)
        )
        account(state, Cycle())
    finally:
        ShardCounters.latency_sum = slot
    assert written == [pytest.approx(0.0005)]
    before = state.counters.latency_sum
    account(state, Cycle())
    assert state.counters.latency_sum == pytest.approx(before + 0.0005)
