"""_eager.c's Starter against the reference, eager.py's _HostTask.start (Python 3.11).

Each scenario runs on a fresh loop twice, once through ``host.start`` and once through
the compiled Starter, and must leave the same trace: what each request saw (its
current task, its context), what start returned, whether the host was kept, retired
or handed off, and the exceptions raised.  tests/test_eager.py runs the same rules end
to end on a real server (CI runs it with and without the compiled modules).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest
from leaks import allocated_growth

if sys.version_info >= (3, 12):
    pytest.skip("the host task is Python 3.11's (3.12+ has eager tasks)", allow_module_level=True)

from shardserve.shard.http import eager

_eager = eager._compiled
if _eager is None:
    pytest.skip("_eager.c not built (or SHARDSERVE_PURE_PYTHON=1)", allow_module_level=True)

VAR = contextvars.ContextVar("VAR", default="unset")


def run_scenario(compiled: bool, steps) -> list:
    """Start each coroutine factory in ``steps`` on one connection's host, from loop
    callbacks (outside any task, as a protocol does), and trace what happened."""
    trace: list = []
    loop = asyncio.new_event_loop()
    try:

        async def main() -> None:
            host = eager._HostTask(loop)
            start = (
                _eager.Starter(host, eager._enter_task, eager._leave_task)
                if compiled
                else host.start
            )
            calls = []

            def one(factory) -> None:
                before = host.task
                try:
                    returned = start(factory(trace))
                except Exception as exc:  # noqa: BLE001 - traced, compared
                    trace.append(("raised", type(exc).__name__, str(exc)))
                    returned = "raised"
                trace.append(
                    (
                        "start",
                        "task" if isinstance(returned, asyncio.Task) else returned,
                        "kept"
                        if host.task is before and before is not None
                        else "new"
                        if host.task is not None
                        else "none",
                        VAR.get(),
                    )
                )
                calls.append(returned)

            for factory in steps:
                loop.call_soon(one, factory)
                for _ in range(5):
                    await asyncio.sleep(0)
            for _ in range(10):
                await asyncio.sleep(0)
            host.close()
            await asyncio.sleep(0)

        loop.run_until_complete(main())
    finally:
        loop.close()
    return trace


async def finishes(trace) -> None:
    task = asyncio.current_task()
    trace.append(("ran", task is not None, VAR.get()))
    VAR.set("set by a request")


_kept = []


async def keeps_its_task(trace) -> None:
    _kept.append(asyncio.current_task())
    trace.append(("kept its task",))


async def cancels_itself(trace) -> None:
    asyncio.current_task().cancel()
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        trace.append(("cancelled at the await",))


async def cancels_and_finishes(trace) -> None:
    asyncio.current_task().cancel()
    trace.append(("asked to cancel, finished",))


async def sleeps(trace) -> None:
    first = asyncio.current_task()
    await asyncio.sleep(0)  # (loop turns, not time: the trace's order is the same each run)
    await asyncio.sleep(0)
    trace.append(("slept", asyncio.current_task() is first, VAR.get()))
    VAR.set("set after sleeping")


async def fails(trace) -> None:
    raise ValueError("the app failed")


async def fails_after_a_wait(trace) -> None:
    await asyncio.sleep(0)
    trace.append(("failing later",))
    raise KeyError("later")


async def times_out(trace) -> None:
    try:
        async with asyncio.timeout(0):
            await asyncio.get_running_loop().create_future()
    except TimeoutError:
        trace.append(("timed out",))


SCENARIOS = {
    "finishing requests share the host": [finishes, finishes, finishes],
    "a request that keeps its task retires the host": [finishes, keeps_its_task, finishes],
    "self-cancel at an await": [finishes, cancels_itself, finishes, cancels_itself],
    "cancel then finish": [finishes, cancels_and_finishes, finishes],
    "a suspending request takes the host": [finishes, sleeps, finishes, sleeps, sleeps],
    "failures propagate": [finishes, fails, finishes, fails_after_a_wait, finishes],
    "asyncio.timeout": [finishes, times_out, finishes],
    "first request on the connection suspends": [sleeps, finishes],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_starter_matches_the_reference(name):
    steps = SCENARIOS[name]
    _kept.clear()
    reference = run_scenario(False, steps)
    _kept.clear()
    compiled = run_scenario(True, steps)
    assert compiled == reference
    assert reference  # (the scenario ran)


def test_the_common_case_does_not_call_the_reference():
    """After the first request made the host, finishing requests never reach
    host.start (the reference): the compiled path took them."""
    loop = asyncio.new_event_loop()
    calls = []

    class CountingHost(eager._HostTask):
        __slots__ = ()

        def start(self, coro):
            calls.append(1)
            return super().start(coro)

    async def main() -> None:
        host = CountingHost(loop)
        start = _eager.Starter(host, eager._enter_task, eager._leave_task)
        for _ in range(20):
            loop.call_soon(start, finishes([]))
            await asyncio.sleep(0)
        host.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert calls == [1]


def test_the_connection_uses_the_starter():
    loop = asyncio.new_event_loop()
    try:
        start, close = eager.eager_starter(loop)
        assert type(start) is _eager.Starter
        close()
    finally:
        loop.close()


def test_no_leak():
    def many() -> None:
        run_scenario(True, [finishes] * 50 + [sleeps, fails, finishes] * 5)

    grown = allocated_growth(many)
    assert grown < 64 * 1024, grown
