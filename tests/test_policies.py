"""The supervisor's pure decisions (coord/policies.py) and its task ownership
(coord/tasks.py), without processes: every rule exactly, no clock, no sleeps."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shardserve.coord.policies import MIB, MemoryLimit, RestartPolicy, RssWatch
from shardserve.coord.tasks import TaskSet

# RestartPolicy -----------------------------------------------------------------------------


def test_restart_delays_double_from_immediate_to_the_cap():
    policy = RestartPolicy(max_failures=8, first_delay=0.5, max_delay=4.0)
    delays = [policy.exited(served_for=None) for _ in range(8)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_a_crash_loop_gives_up_after_max_failures():
    policy = RestartPolicy(max_failures=5)
    assert all(policy.exited(served_for=1.0) is not None for _ in range(5))
    assert policy.exited(served_for=1.0) is None
    assert policy.failures == 6


def test_a_shard_that_served_long_enough_starts_a_new_count():
    policy = RestartPolicy(stable_seconds=10.0, max_failures=2)
    assert policy.exited(served_for=None) == 0.0
    assert policy.exited(served_for=9.9) == 0.5  # not stable: counts on
    assert policy.exited(served_for=10.0) == 0.0  # stable: the first failure again
    assert policy.failures == 1


def test_a_failed_successor_counts_without_the_stability_rule():
    policy = RestartPolicy(max_failures=2)
    assert policy.failed() == 0.0
    assert policy.failed() == 0.5
    assert policy.failed() is None


def test_reset_forgets_the_failures():
    policy = RestartPolicy(max_failures=1)
    policy.exited(served_for=None)
    policy.reset()
    assert policy.exited(served_for=None) == 0.0


# MemoryLimit -------------------------------------------------------------------------------


def test_three_samples_in_a_row_above_the_limit():
    limit, watch = MemoryLimit(100, samples=3), RssWatch()
    # At the limit is not above it; a sample at or below resets the count; None
    # (a subinterpreter shard, no memory of its own) counts for nothing.
    samples = [150, 150, 100, 150, None, 150, 90, 150, 150]
    assert [limit.sample(watch, mb * MIB if mb else None) for mb in samples] == [False] * 9
    assert limit.sample(watch, 150 * MIB) is True
    assert watch.over == 3
    assert limit.sample(watch, 150 * MIB) is True  # still over: the supervisor decides


def test_a_replacement_under_way_or_failed_recently_is_not_due():
    limit, watch = MemoryLimit(100, retry_seconds=30.0), RssWatch()
    assert limit.due(watch, now=1000.0)
    watch.replacing = True
    assert not limit.due(watch, now=1000.0)
    limit.replacement_failed(watch, now=1000.0)
    assert not watch.replacing
    assert not limit.due(watch, now=1029.9)
    assert limit.due(watch, now=1030.0)


# TaskSet -----------------------------------------------------------------------------------


def test_tasks_are_kept_until_they_end_and_failures_are_logged(caplog):
    critical: list[str] = []

    async def scenario():
        tasks = TaskSet(on_critical=lambda name, exc: critical.append(f"{name}: {exc}"))

        async def fail(message: str):
            await asyncio.sleep(0)
            raise RuntimeError(message)

        quiet = tasks.spawn(asyncio.sleep(0), "quiet")
        assert quiet in tasks.tasks
        tasks.spawn(fail("not critical"), "helper")
        tasks.spawn(fail("the stop failed"), "stop", critical=True)
        hanging = tasks.spawn(asyncio.sleep(3600), "hanging")
        for _ in range(5):
            await asyncio.sleep(0)
        assert tasks.tasks == {hanging}
        await tasks.close()
        assert hanging.cancelled() and not tasks.tasks

    with caplog.at_level(logging.ERROR, logger="shardserve.error"):
        asyncio.run(scenario())
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.getMessage() for r in failed] == [
        "Coordinator task 'helper' failed",
        "Coordinator task 'stop' failed",
    ]
    assert all(r.exc_info for r in failed)
    assert critical == ["stop: the stop failed"]


@pytest.mark.parametrize("critical", [False, True])
def test_a_cancelled_task_is_not_a_failure(caplog, critical):
    reported: list[str] = []

    async def scenario():
        tasks = TaskSet(on_critical=lambda name, exc: reported.append(name))
        task = tasks.spawn(asyncio.sleep(3600), "waits", critical=critical)
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not tasks.tasks

    with caplog.at_level(logging.ERROR, logger="shardserve.error"):
        asyncio.run(scenario())
    assert not caplog.records and not reported
