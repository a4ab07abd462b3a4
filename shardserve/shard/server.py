"""One shard: handed listening sockets and a config, serves until told to stop.

The shard never handles signals itself (a subinterpreter cannot); whoever hosts it
calls ``request_stop()`` (graceful) or ``force_stop()``, from any thread.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..importer import load_app
from .accept import Listener
from .http.parser import resolve_backend
from .http.protocol import HttpConnection
from .lifespan import Lifespan
from .loop import new_event_loop
from .state import ShardState

logger = logging.getLogger("shardserve.error")

TICK_SECONDS = 0.25
TICKS_PER_SECOND = 4
WEBSOCKET_CLOSE_SECONDS = 1.0  # for kept WebSocket sessions' close handshakes, at the end


@dataclass
class ShardReport:
    """What a shard did, returned when it stops."""

    index: int
    counters: dict[str, int] = field(default_factory=dict)
    exit_code: int = 0


class Shard:
    def __init__(
        self,
        config: Config,
        sockets: list[socket.socket],
        index: int = 0,
        app: Any = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.index = index
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None
        self.state: ShardState | None = None
        self._stop: asyncio.Event | None = None
        self._force: asyncio.Event | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._ticks = 0
        self._close_idle: bool | None = None
        self._keep_websockets = False
        self._servers: list[asyncio.AbstractServer | Listener] = []
        self._serve_socket: Callable[[socket.socket], Any] | None = None
        self._adopting: set[asyncio.Task] = set()  # listeners handed over, being served
        # Hooks for whoever hosts the shard (the coordinator's process shard sets them).
        self.on_ready: Callable[[Shard], None] | None = None
        self.on_second: Callable[[Shard], None] | None = None
        # Called when --limit-max-requests is reached; by default the shard stops.
        self.on_max_requests: Callable[[Shard], None] | None = None

    # Hosting ----------------------------------------------------------------------

    def run(self, setup: Callable[[asyncio.AbstractEventLoop, Shard], None] | None = None):
        """Run the shard's own event loop until it has stopped; return its report."""
        loop = new_event_loop(self.config.loop)
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            if setup is not None:
                setup(loop, self)
            return loop.run_until_complete(self.serve())
        finally:
            try:
                _cancel_remaining(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def request_stop(self, close_idle: bool = True, keep_websockets: bool = False) -> None:
        """Begin a graceful stop; safe to call from any thread, more than once.

        ``close_idle=False`` (a shard being replaced) leaves idle keep-alive
        connections open until their next request, answered with ``connection:
        close``, or their keep-alive timeout: no client sees its idle connection
        closed under a request it is sending.  ``keep_websockets`` (an in-place
        upgrade) lets WebSocket sessions go on until the grace time is up.
        """
        if not close_idle and self._close_idle is None:
            self._close_idle = False
            self._keep_websockets = keep_websockets
        elif close_idle:
            self._close_idle = True
            self._keep_websockets = False
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)

    def force_stop(self) -> None:
        """Stop without waiting for anything (a second Ctrl+C): in-flight requests,
        a lifespan startup or shutdown that hangs."""
        if self.loop is not None and self._force is not None:
            self.loop.call_soon_threadsafe(self._force.set)
        self.request_stop()

    async def _unless_forced(self, coro) -> bool:
        """Run ``coro`` to its end unless a forced stop comes first; True if it ended."""
        task = asyncio.ensure_future(coro)
        force = asyncio.ensure_future(self._force.wait())
        try:
            await asyncio.wait((task, force), return_when=asyncio.FIRST_COMPLETED)
        finally:
            force.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False

    # Serving ------------------------------------------------------------------------

    async def serve(self) -> ShardReport:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        config = self.config
        app = self.app
        if app is None or isinstance(app, str):
            if config.reload:
                # A .pyc written now could hide an edit made within the same second.
                sys.dont_write_bytecode = True
            app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
        on_uvloop = type(loop).__module__.startswith("uvloop")
        logger.info(
            "Started shard %d [%d] (http: %s, loop: %s)",
            self.index,
            os.getpid(),
            resolve_backend(config.http),
            "uvloop" if on_uvloop else "asyncio",
        )
        state = self.state = ShardState(config, app, loop)
        state.on_max_requests = self._on_max_requests

        lifespan = None
        if config.lifespan != "off":
            lifespan = Lifespan(app, config.lifespan, state.lifespan_state)
            if not await self._unless_forced(lifespan.startup()):
                logger.info("Startup abandoned.")
                return ShardReport(index=self.index, exit_code=1)

        # The app, its framework and the server are loaded and live as long as the
        # shard: full collections need not walk them again.  (Short-lived objects,
        # several per connection, promote into the old generation fast enough under
        # a connection-per-request load to run a full collection several times a
        # second: 9-18 ms each with everything in it, a few ms without.)
        gc.collect()
        gc.freeze()

        ssl_context = None
        scheme = "http"
        if config.is_ssl:
            from .tls import create_ssl_context

            ssl_context = create_ssl_context(config)
            scheme = "https"

        def protocol_factory() -> HttpConnection:
            return HttpConnection(state, scheme)

        async def serve_socket(sock: socket.socket) -> None:
            # (not loop.create_server: on stdlib asyncio it spins at EMFILE, on uvloop
            # it takes one new connection per loop iteration; see accept.py)
            server = Listener(loop, sock, protocol_factory, ssl_context, config.backlog)
            server.start()
            self._servers.append(server)

        self._serve_socket = serve_socket
        for sock in self.sockets:
            await serve_socket(sock)
        self._ticker = loop.call_later(TICK_SECONDS, self._tick)
        if self.on_ready is not None:
            self.on_ready(self)

        await self._stop.wait()

        state.draining = True
        for server in self._servers:
            server.close()
        await self._drain(state)
        self._ticker.cancel()
        state.access_logger.flush()
        if lifespan is not None and not self._force.is_set():
            await self._unless_forced(lifespan.shutdown())
        return ShardReport(index=self.index, counters=state.counters.summary())

    def _tick(self) -> None:
        state = self.state
        state.tick()
        state.sweep_timeouts()
        self._ticks += 1
        if self.on_second is not None and self._ticks % TICKS_PER_SECOND == 0:
            self.on_second(self)
        self._ticker = self.loop.call_later(TICK_SECONDS, self._tick)

    def adopt(self, sock: socket.socket) -> None:
        """Serve one more listener from now on (the coordinator hands it over)."""
        self.sockets.append(sock)
        if self._serve_socket is not None and not self._stop.is_set():
            task = self.loop.create_task(self._serve_socket(sock))
            self._adopting.add(task)
            task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task) -> None:
        self._adopting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Shard %d could not serve an adopted listener", self.index,
                         exc_info=task.exception())  # fmt: skip

    def _on_max_requests(self) -> None:
        if self._stop.is_set():
            return
        if self.on_max_requests is not None:
            self.on_max_requests(self)
            return
        logger.info(
            "Maximum request limit of %d exceeded. Stopping.", self.config.limit_max_requests
        )
        self._stop.set()

    async def _drain(self, state: ShardState) -> None:
        """Close idle connections now; give in-flight requests until the grace timeout."""
        close_idle = self._close_idle is not False
        kept = []  # WebSocket sessions left to end by themselves (an upgrade)
        for conn in tuple(state.connections):
            if self._keep_websockets and conn.long_lived():
                kept.append(conn)
            else:
                conn.drain(close_idle)
        timeout = self.config.timeout_graceful_shutdown
        deadline = None if timeout is None else time.monotonic() + timeout
        if state.connections or state.active_requests:
            logger.info("Waiting for in-flight requests to finish.")
        if not await self._until_drained(state, deadline) and kept:
            # Grace time is up: the sessions still open get their close (1012).
            for conn in kept:
                conn.drain(close_idle)
            await self._until_drained(state, time.monotonic() + WEBSOCKET_CLOSE_SECONDS, quiet=True)
        for conn in tuple(state.connections):
            conn.abort()
        # Let cancelled exchanges and aborted transports finish their callbacks.
        for _ in range(20):
            if not state.active_requests:
                break
            await asyncio.sleep(0.01)

    async def _until_drained(
        self, state: ShardState, deadline: float | None, quiet: bool = False
    ) -> bool:
        """Wait until no connection is left (True), a forced stop, or ``deadline``."""
        while (state.connections or state.active_requests) and not self._force.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                if not quiet:
                    logger.warning("Graceful shutdown timed out; closing remaining connections.")
                return False
            await asyncio.sleep(0.05)
        return not (state.connections or state.active_requests)


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
