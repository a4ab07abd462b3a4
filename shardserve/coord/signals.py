"""SIGINT/SIGTERM for whoever hosts shards: the first stops gracefully, a second forces."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

logger = logging.getLogger("shardserve.error")


class StopSignals:
    def __init__(self, graceful: Callable[[], None], forced: Callable[[], None]) -> None:
        self.graceful = graceful
        self.forced = forced
        self.seen = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._received, signum)

    def _received(self, signum: int) -> None:
        self.seen += 1
        if self.seen == 1:
            logger.info("Shutting down (%s)", signal.Signals(signum).name)
            self.graceful()
        else:
            logger.info("Forcing shutdown")
            self.forced()
