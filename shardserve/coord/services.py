"""The coordinator's own endpoints beside the shards: --metrics, the control socket
(status, reload, stop, upgrade), and --reload's source watcher.  They read the
supervisor's typed snapshot (snapshot.py) and the stats book, and call back only
through the commands given.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import Config
from ..errors import ListenError
from .control_socket import ControlSocket, status_report
from .metrics import MetricsCollector, MetricsServer
from .reloader import Reloader
from .snapshot import ServerView
from .stats import StatsBook

logger = logging.getLogger("shardserve.error")


class Services:
    def __init__(
        self,
        config: Config,
        book: StatsBook,
        view: Callable[[], ServerView],
        reload: Callable[[], Any],
        stop: Callable[[], Any],
        upgrade: Callable[[], Awaitable[dict]],
        on_source_change: Callable[[], Awaitable[None]],
    ) -> None:
        self.config = config
        self.book = book
        self.view = view
        self.commands = {"status": self._status, "reload": reload, "stop": stop, "upgrade": upgrade}
        self.on_source_change = on_source_change
        self.metrics: MetricsServer | None = None
        self.control: ControlSocket | None = None
        self.reloader: Reloader | None = None

    async def start(self, inherited_metrics: list | None = None, upgrading: bool = False) -> None:
        """Start what the config asks for (``upgrading``: for the coordinator that
        replaces another, on the metrics listeners it handed over, and with the
        control socket's path taken only once it serves: ``claim``)."""
        config = self.config
        if config.metrics is not None:
            view = self.view
            metrics = MetricsServer(
                config.metrics,
                MetricsCollector(self.book, lambda: len(view().shards)),
                healthy=lambda: view().healthy,
                ready=lambda: view().serving,
            )
            try:
                await metrics.start(inherited_metrics)
            except OSError as exc:
                raise ListenError(f"--metrics {config.metrics}: {exc.strerror or exc}") from None
            self.metrics = metrics
        control = ControlSocket(config.control_socket, self.commands, deferred=upgrading)
        try:
            await control.start()
        except OSError as exc:
            if config.control_socket is not None:
                raise ListenError(f"--control-socket {control.path}: {exc}") from None
            logger.warning("No control socket (%s): %s", control.path, exc)
        else:
            self.control = control
        if config.reload:
            self.reloader = Reloader(config, self.on_source_change)
            self.reloader.start()

    def claim(self) -> None:
        """This coordinator serves: its control socket takes its predecessor's path."""
        if self.control is not None:
            try:
                self.control.claim()
            except OSError as exc:
                logger.warning("Control socket %s: %s", self.control.path, exc)

    @property
    def metrics_sockets(self) -> list:
        """For the coordinator that replaces us (an in-place upgrade)."""
        return self.metrics.sockets if self.metrics is not None else []

    async def close_metrics(self) -> None:
        """Handed over: only the new coordinator answers scrapes (its shards' figures)."""
        if self.metrics is not None:
            await self.metrics.close()
            self.metrics = None

    def _status(self) -> dict:
        return status_report(self.view(), self.book)

    async def close(self) -> None:
        if self.reloader is not None:
            await self.reloader.close()
        if self.metrics is not None:
            await self.metrics.close()
        if self.control is not None:
            await self.control.close()
