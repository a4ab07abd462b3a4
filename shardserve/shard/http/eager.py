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

``_HostTask.start`` is the reference; where ``_eager.c`` is built, a connection's
``start`` is its Starter, which runs the common case (an idle host, a request that
finishes in its first step) without a Python frame or a StopIteration.
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
    if _compiled is not None:
        return _compiled.Starter(host, _enter_task, _leave_task), host.close
    return host.start, host.close


def _nothing() -> None:
    return None


@types.coroutine
def _drive(coro, context, yielded, cancelled):
    """Carry on a coroutine suspended outside any task: re-yield what it waits on."""
    run = context.run
    if cancelled:
        # Its task was cancelled during the first step: as a task would, cancel what it
        # waits on and raise CancelledError where it waits.
        if isinstance(yielded, asyncio.Future):
            yielded.cancel()
        try:
            yielded = run(coro.throw, asyncio.CancelledError())
        except StopIteration:
            return
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
    """Python 3.11: a parked task that a connection's eager first steps run inside.

    A host is reused only while nobody can tell it is shared: a request that finishes
    in its first step and leaves no new reference to the task (compared with
    ``sys.getrefcount``) and no pending cancel.  A request that keeps the task (for
    anyio, a timer, a later cancel) retires the host; a request that suspends takes
    the host with it, and the next request gets a new one.
    """

    __slots__ = ("loop", "task", "handoff")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task | None = None
        self.handoff: asyncio.Future | None = None

    def start(self, coro) -> Any:
        """Call only from protocol callbacks (outside any task), as the connection does."""
        loop = self.loop
        task = self.task
        if task is None or task.cancelling():
            task = self._new_host()
        context = copy_context()
        references = getrefcount(task)
        _enter_task(loop, task)
        try:
            yielded = context.run(coro.send, None)
        except StopIteration:
            yielded = _FINISHED
        finally:
            _leave_task(loop, task)
        if yielded is _FINISHED:
            if getrefcount(task) > references or task.cancelling():
                self._retire()
            return None
        return self.suspended(task, coro, context, yielded)

    def suspended(self, task: asyncio.Task, coro, context, yielded) -> asyncio.Task:
        """The first step waits on ``yielded``: this host drives the request to its
        end, then finishes (``_eager.c``'s Starter calls this too)."""
        cancelled = task.cancelling() > 0  # the request cancelled its own task
        if cancelled:
            self._retire()
            task = self._new_host()
        self.task = None
        self.handoff.set_result((coro, context, yielded, cancelled))
        return task

    def _new_host(self) -> asyncio.Task:
        handoff = self.handoff = self.loop.create_future()
        task = self.task = self.loop.create_task(_park(handoff))
        return task

    def _retire(self) -> None:
        task = self.task
        self.task = None
        if task is not None:
            task.cancel()

    def close(self) -> None:
        self._retire()


async def _park(handoff: asyncio.Future) -> None:
    # Cancelled while parked (retired, the connection closed, the loop shutting down):
    # the host simply ends.
    coro, context, yielded, cancelled = await handoff
    await _drive(coro, context, yielded, cancelled)


_FINISHED = object()


if sys.version_info < (3, 12):
    from asyncio.tasks import _enter_task, _leave_task  # private, stable through 3.11
    from sys import getrefcount

    from . import compiled

    # _eager.c's Starter: start's common case compiled (no StopIteration, no frame).
    _compiled = compiled.load("_eager")
