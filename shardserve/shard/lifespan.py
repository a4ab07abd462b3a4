"""The ASGI lifespan protocol, run once per shard around its serving."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import LifespanFailure

logger = logging.getLogger("shardserve.error")


class Lifespan:
    def __init__(self, app: Any, mode: str, state: dict[str, Any]) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.startup_done = asyncio.Event()
        self.shutdown_done = asyncio.Event()
        self.startup_failed: str | None = None
        self.shutdown_failed: str | None = None
        self.error: BaseException | None = None
        self.task: asyncio.Task | None = None

    async def startup(self) -> None:
        logger.info("Waiting for application startup.")
        self.task = asyncio.get_running_loop().create_task(self._main())
        await self.queue.put({"type": "lifespan.startup"})
        await self.startup_done.wait()
        if self.startup_failed is not None:
            raise LifespanFailure(self.startup_failed or "startup failed")
        if self.error is not None and self.mode == "on":
            raise LifespanFailure(f"{type(self.error).__name__}: {self.error}")
        logger.info("Application startup complete.")

    async def shutdown(self) -> None:
        if self.error is not None or self.task is None or self.task.done():
            return
        logger.info("Waiting for application shutdown.")
        await self.queue.put({"type": "lifespan.shutdown"})
        await self.shutdown_done.wait()
        if self.shutdown_failed is not None:
            logger.error("Application shutdown failed: %s", self.shutdown_failed)
        else:
            logger.info("Application shutdown complete.")

    async def _main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            raise  # the shard is stopping without waiting for the app (a forced stop)
        except BaseException as exc:  # noqa: BLE001 - reported through startup()
            self.error = exc
            if self.startup_failed is not None or self.shutdown_failed is not None:
                pass
            elif self.mode == "auto" and not self.startup_done.is_set():
                logger.info("ASGI 'lifespan' protocol appears unsupported.")
            else:
                logger.error("Exception in 'lifespan' protocol", exc_info=exc)
        finally:
            self.startup_done.set()
            self.shutdown_done.set()

    async def receive(self) -> dict[str, Any]:
        return await self.queue.get()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete" and not self.startup_done.is_set():
            self.startup_done.set()
        elif kind == "lifespan.startup.failed" and not self.startup_done.is_set():
            self.startup_failed = message.get("message", "") or ""
            self.startup_done.set()
        elif kind == "lifespan.shutdown.complete" and self.startup_done.is_set():
            self.shutdown_done.set()
        elif kind == "lifespan.shutdown.failed" and self.startup_done.is_set():
            self.shutdown_failed = message.get("message", "") or ""
            self.shutdown_done.set()
        else:
            raise RuntimeError(f"Unexpected ASGI lifespan message {kind!r}")
