"""Start each request's coroutine eagerly: its first step runs at once, inside a task.

Most requests finish without ever waiting (the app sends its response straight
away), so scheduling a new ``asyncio.Task`` for each one would cost more than
everything else the shard does per request.  Python 3.12 added eager tasks for
this; on 3.11 a connection keeps one parked *host* task instead: a request's first
step runs synchronously with the host marked as the current task (so anyio,
``asyncio.timeout`` and ``current_task()`` behave as in a task), and only if the
coroutine suspends does the host task wake up to drive it to the end.  Each
request runs in its own copy of the context, as it would in its own task.

One request at a time per connection uses the host; when it is busy (the app is
still running after its response), the next request gets an ordinary task.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Callable, Coroutine
from contextvars import copy_context
from typing import Any

StartFn = Callable[[Coroutine[Any, Any, None]], Any]


def eager_starter(loop: asyncio.AbstractEventLoop) -> tuple[StartFn, Callable[[], None]]:
    """Return (start, close) for one connection."""
    if sys.version_info >= (3, 12):
        task_class = asyncio.Task

        def start_eager_task(coro):
            return task_class(coro, loop=loop, eager_start=True)

        return start_eager_task, _nothing
    host = _HostTask(loop)
    return host.start, host.close


def _nothing() -> None:
    return None


@types.coroutine
def _drive(coro, context, yielded):
    """Carry on a coroutine suspended outside any task: re-yield what it waits on."""
    run = context.run
    while True:
        try:
            value = yield yielded
        except BaseException as exc:  # noqa: BLE001 - cancellation and friends go inside
            try:
                yielded = run(coro.throw, exc)
            except StopIteration:
                return
        else:
            try:
                yielded = run(coro.send, value)
            except StopIteration:
                return


class _HostTask:
    """Python 3.11: one parked task per connection that eager steps run inside."""

    __slots__ = ("loop", "task", "handoff", "busy")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.busy = False
        self.handoff = None
        self.task = None

    def start(self, coro) -> Any:
        """Call only from protocol callbacks (outside any task), as the connection does."""
        loop = self.loop
        if self.busy:
            return loop.create_task(coro)
        task = self.task
        if task is None or task.done():
            self.handoff = loop.create_future()
            task = self.task = loop.create_task(self._park())
        context = copy_context()
        _enter_task(loop, task)
        try:
            yielded = context.run(coro.send, None)
        except StopIteration:
            return None
        finally:
            _leave_task(loop, task)
        self.busy = True
        self.handoff.set_result((coro, context, yielded))
        return task

    async def _park(self) -> None:
        # Cancelled while parked (the connection closed, the loop is shutting down,
        # or code kept a finished request's task and cancelled it): the host ends,
        # and the next request on this connection makes a new one.
        while True:
            coro, context, yielded = await self.handoff
            try:
                await _drive(coro, context, yielded)
            finally:
                self.busy = False
                self.handoff = self.loop.create_future()

    def close(self) -> None:
        task = self.task
        if task is not None and not self.busy:
            task.cancel()


if sys.version_info < (3, 12):
    from asyncio.tasks import _enter_task, _leave_task  # private, stable through 3.11
