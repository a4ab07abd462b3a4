"""The coordinator: creates the listeners and runs the shards.

With one shard it hosts that shard in its own process and main thread, forwarding
signals to it; multi-shard supervision builds on this.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

from ..config import Config
from ..shard.server import Shard
from .listeners import bind_listeners, describe

logger = logging.getLogger("shardserve.error")


class Coordinator:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.signals_seen = 0

    def run(self) -> int:
        config = self.config
        if config.is_ssl:
            from ..shard.tls import create_ssl_context

            _check_tls(config, create_ssl_context)
        sockets = bind_listeners(config, count=1)
        where = describe(sockets[0], config.is_ssl)
        shard = Shard(config, sockets, index=0, app=config.app)

        def ready(_: Shard) -> None:
            logger.info("shardserve running on %s (Press CTRL+C to quit)", where)

        shard.on_ready = ready
        try:
            report = shard.run(setup=self._install_signal_handlers)
        finally:
            for sock in sockets:
                sock.close()
            if config.uds:
                with contextlib.suppress(OSError):
                    os.unlink(config.uds)
        logger.info("Finished shard 0 [%d]", os.getpid())
        logger.debug("Shard 0 report: %s", report.counters)
        return report.exit_code

    def _install_signal_handlers(self, loop, shard: Shard) -> None:
        def on_signal(signum: int) -> None:
            self.signals_seen += 1
            if self.signals_seen == 1:
                logger.info("Shutting down (%s)", signal.Signals(signum).name)
                shard.request_stop()
            else:
                logger.info("Forcing shutdown")
                shard.force_stop()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)


def _check_tls(config: Config, create_ssl_context) -> None:
    from ..errors import ConfigError

    try:
        create_ssl_context(config)
    except Exception as exc:
        raise ConfigError(f"TLS: {exc}") from None
