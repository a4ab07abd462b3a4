"""The coordinator's background work, owned: no task is started and forgotten.

Every task the supervisor starts (a restart after back-off, a replacement, a roll,
the stop) goes through ``TaskSet.spawn``: the set keeps it until it ends, logs a
failure with its traceback, and hands a failure of a *critical* task (one the
server cannot go on without, such as the stop) to ``on_critical``, which stops the
server with that error instead of waiting forever for what will not come.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger("shardserve.error")


class TaskSet:
    def __init__(self, on_critical: Callable[[str, BaseException], None] | None = None) -> None:
        self.on_critical = on_critical
        self.tasks: set[asyncio.Task] = set()

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, critical: bool = False
    ) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(lambda done: self._ended(done, critical))
        return task

    def _ended(self, task: asyncio.Task, critical: bool) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        logger.error("Coordinator task %r failed", task.get_name(), exc_info=exc)
        if critical and self.on_critical is not None:
            self.on_critical(task.get_name(), exc)

    async def close(self) -> None:
        """Cancel what is still running and wait for it to end."""
        tasks = [task for task in self.tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def first_done(*futures: asyncio.Future) -> bool:
    """Wait until any of ``futures`` is done; True if the first of them is."""
    await asyncio.wait([asyncio.shield(f) for f in futures], return_when=asyncio.FIRST_COMPLETED)
    return futures[0].done()
