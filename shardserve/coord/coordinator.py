"""The coordinator: decides where shards run, creates the listeners, runs the shards.

With the default ``--shards 1`` (and no pinning, metrics, control socket, reload or
--limit-max-rss) it hosts that one shard in its own process and main thread, like a
single uvicorn process; otherwise every shard runs under the supervisor (supervisor.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

from ..config import Config
from ..errors import ListenError
from ..shard.server import Shard
from .activation import Activation, take_activation
from .handover import Handover, take_handover
from .listeners import bind_listeners, describe
from .notify import Notifier
from .placement import Placement, resolve_placement
from .signals import StopSignals

logger = logging.getLogger("shardserve.error")


class Coordinator:
    def __init__(self, config: Config, placement: Placement | None = None) -> None:
        self.config = config
        self.placement = placement
        self.activation: Activation | None = None
        self.notifier: Notifier | None = None
        self.handover: Handover | None = None

    def run(self) -> int:
        config = self.config
        handover = self.handover = take_handover()
        activation = self.activation = take_activation()
        self.notifier = Notifier.from_environment()
        if handover is not None:
            activation = self.activation = handover.activation
            logger.info("%s", handover.describe())
        elif activation is not None:
            if config.fd is not None or config.uds is not None:
                raise ListenError(
                    "--fd and --uds cannot be used with sockets passed by systemd (LISTEN_FDS)"
                )
            logger.info("Serving %s.", activation.describe())
        if config.is_ssl:
            from ..shard.tls import create_ssl_context

            _check_tls(config, create_ssl_context)
        if not config.reload and (
            config.reload_dirs or config.reload_includes or config.reload_excludes
        ):
            logger.warning("--reload-dir, --reload-include and --reload-exclude need --reload.")
        placement, reason = resolve_placement(config, self.placement)
        if (
            self.placement is None
            and config.shards == 1
            and not config.pin
            and config.shard_mode == "process"
            and config.metrics is None  # the coordinator's view needs a supervisor
            and config.control_socket is None
            and not config.reload  # a reload replaces the shard: that is the supervisor's job
            and config.limit_max_rss is None  # so does --limit-max-rss: someone must start it
            and self.notifier is None  # systemd's Type=notify: the supervisor tells it
            and handover is None  # (our predecessor had a supervisor: so do we)
        ):
            return self._run_in_process(placement.shards[0].cpus)
        from .supervisor import Supervisor

        supervisor = Supervisor(
            config, placement, reason, self.activation, self.notifier, self.handover
        )
        return supervisor.run()

    def _run_in_process(self, cpus: tuple[int, ...] | None) -> int:
        config = self.config
        if cpus:
            os.sched_setaffinity(0, cpus)  # --cpus: before the shard starts any thread
        sockets = bind_listeners(config, count=1, activation=self.activation)
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
        StopSignals(shard.request_stop, shard.force_stop).install(loop)
        loop.add_signal_handler(signal.SIGUSR2, _no_upgrade_here)


def _no_upgrade_here() -> None:
    logger.warning(
        "SIGUSR2 ignored: an in-place upgrade needs the supervisor (run with --shards 2 "
        "or more, --control-socket, or under systemd's Type=notify)."
    )


def _check_tls(config: Config, create_ssl_context) -> None:
    from ..errors import ConfigError

    try:
        create_ssl_context(config)
    except Exception as exc:
        raise ConfigError(f"TLS: {exc}") from None
