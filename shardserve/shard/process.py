"""A shard running as its own process, talking to the coordinator over its channel.

The process is forked from the coordinator's template process (coord/template.py)
with its control socket and listener(s) already open.  It reads its ``Configure``,
pins itself, then runs the same ``Shard`` as any other host: Ready, a Heartbeat and
Stats every second, Retire at --limit-max-requests, Fatal if it fails.  Drain and
Stop come from the coordinator; SIGTERM drains too; SIGINT (a terminal's Ctrl+C,
sent to the whole process group) is left to the coordinator.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import traceback

from ..config import Config
from ..control import Channel, receive_blocking, send_blocking
from ..errors import StartupError
from ..messages import (
    Adopt,
    Configure,
    Drain,
    Fatal,
    Heartbeat,
    MessageError,
    Ready,
    Retire,
    Stats,
    Stop,
    default_codec,
    safe_text,
)
from .server import Shard

logger = logging.getLogger("shardserve.error")


def run_shard_process(control_fd: int, listener_fds: list[int]) -> int:
    """The body of a shard process; returns its exit code."""
    codec = default_codec()
    control = socket.socket(fileno=control_fd)
    try:
        configure = receive_blocking(control, codec, timeout=30)
    except (OSError, EOFError, MessageError) as exc:
        print(f"shardserve shard: no configuration from the coordinator: {exc}", file=sys.stderr)
        return 1
    if not isinstance(configure, Configure):
        print("shardserve shard: expected a configuration message first", file=sys.stderr)
        return 1
    index, generation = configure.index, configure.generation
    config = Config(**configure.config).replace(limit_max_requests=configure.max_requests)
    if configure.cpus:
        os.sched_setaffinity(0, configure.cpus)  # before any thread starts
    _configure_logging(config)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    sockets = [socket.socket(fileno=fd) for fd in listener_fds]
    shard = Shard(config, sockets, index=index)
    ready = False
    channel: Channel | None = None

    def on_message(message) -> None:
        if isinstance(message, Drain):
            shard.request_stop(close_idle=message.close_idle)
        elif isinstance(message, Stop):
            shard.force_stop()
        elif isinstance(message, Adopt):
            shard.adopt(socket.socket(fileno=message.fds[0]))

    def on_closed() -> None:
        # The coordinator is gone: nobody will send work here for long.
        logger.warning("Shard %d: control channel closed; stopping.", index)
        shard.request_stop()

    def on_error(exc: Exception) -> None:
        logger.error("Shard %d: bad control message (%s); stopping.", index, exc)
        shard.request_stop()

    def setup(loop, _shard: Shard) -> None:
        nonlocal channel
        channel = Channel(control, codec, on_message, on_closed, on_error, loop=loop)
        loop.add_signal_handler(signal.SIGTERM, shard.request_stop)

    def on_ready(_shard: Shard) -> None:
        nonlocal ready
        ready = True
        channel.send(Ready(index=index, pid=os.getpid(), generation=generation))

    def on_second(_shard: Shard) -> None:
        channel.send(Heartbeat(index=index, generation=generation))
        channel.send(_stats(shard, generation))

    def on_max_requests(_shard: Shard) -> None:
        reason = f"served {config.limit_max_requests} requests"
        channel.send(Retire(index=index, generation=generation, reason=reason))

    shard.on_ready = on_ready
    shard.on_second = on_second
    shard.on_max_requests = on_max_requests
    try:
        report = shard.run(setup)
    except BaseException as exc:  # noqa: BLE001 - reported to the coordinator, then exit
        code = exc.exit_code if isinstance(exc, StartupError) else 1
        if isinstance(exc, StartupError):
            error = str(exc)
        else:
            error = "".join(traceback.format_exception_only(exc)).strip()
            logger.error("Shard %d failed", index, exc_info=exc)
        fatal = Fatal(index, generation, safe_text(error), starting=not ready, exit_code=code)
        _send_last(control, codec, fatal)
        return code
    _send_last(control, codec, _stats(shard, generation))
    logger.info("Finished shard %d [%d]", index, os.getpid())
    return report.exit_code


def _stats(shard: Shard, generation: int) -> Stats:
    state = shard.state
    counters = state.counters
    return Stats(
        index=shard.index,
        generation=generation,
        requests=counters.requests,
        connections=counters.connections,
        rejected=counters.rejected,
        app_errors=counters.app_errors,
        timeouts=counters.timeouts,
        open_connections=len(state.connections),
        active_requests=state.active_requests,
    )


def _send_last(control: socket.socket, codec, message) -> None:
    """After the loop is gone: one blocking send, if the channel is still open."""
    try:
        if control.fileno() >= 0:
            control.setblocking(True)
            send_blocking(control, codec, message, timeout=2)
    except (OSError, MessageError):
        pass


def _configure_logging(config: Config) -> None:
    from ..logs import configure_logging

    configure_logging(config)
