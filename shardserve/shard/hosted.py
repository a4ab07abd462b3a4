"""A shard under a coordinator, whatever hosts it: a process or a subinterpreter.

Both hosts run this: pin, configure logging, run the ``Shard`` with the control
channel wired to it (Ready, a Heartbeat and Stats every second, Retire at
--limit-max-requests, Fatal if it fails; Drain, Stop and Adopt from the
coordinator), then send its last words.  A host only supplies how its channel is
opened and how a message is sent once the event loop is gone (``shard/process.py``,
``shard/subinterpreter.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..counters import COUNTED, COUNTS, IDENTITY
from ..errors import StartupError
from ..messages import (
    Adopt,
    Configure,
    Drain,
    Fatal,
    Heartbeat,
    Ready,
    Retire,
    Stats,
    Stop,
    safe_text,
)
from ..procfs import rss_bytes
from .server import Shard

logger = logging.getLogger("shardserve.error")

# open_channel(loop, on_message, on_closed, on_error) -> a channel with send()
OpenChannel = Callable[[Any, Callable, Callable, Callable], Any]


def run_hosted_shard(
    configure: Configure,
    sockets: list[socket.socket],
    open_channel: OpenChannel,
    send_last: Callable[[Any], None],
    setup_host: Callable[[Any, Shard], None] | None = None,
    mode: str = "process",
) -> int:
    """Serve until told to stop; returns the exit code.

    ``mode`` is "process" or "subinterpreter": it decides how the shard measures its
    own CPU and memory (a subinterpreter shares its process with others).
    """
    index, generation = configure.index, configure.generation
    identity = ShardIdentity(index, generation, mode)
    config = Config(**configure.config).replace(limit_max_requests=configure.max_requests)
    if configure.cpus:
        # Before any thread starts; in a subinterpreter this pins only its thread.
        os.sched_setaffinity(0, configure.cpus)
    from ..logs import configure_logging

    configure_logging(config)
    shard = Shard(config, sockets, index=index)
    ready = False
    channel = None

    def on_message(message) -> None:
        if isinstance(message, Drain):
            shard.request_stop(message.close_idle, message.keep_websockets)
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
        channel = open_channel(loop, on_message, on_closed, on_error)
        if setup_host is not None:
            setup_host(loop, shard)

    def on_ready(_shard: Shard) -> None:
        nonlocal ready
        ready = True
        channel.send(Ready(index=index, pid=os.getpid(), generation=generation))

    def on_second(_shard: Shard) -> None:
        channel.send(Heartbeat(index=index, generation=generation))
        channel.send(identity.stats(shard))

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
        send_last(Fatal(index, generation, safe_text(error), starting=not ready, exit_code=code))
        return code
    send_last(identity.stats(shard))
    logger.info("Finished shard %d [%d]", index, os.getpid())
    return report.exit_code


class ShardIdentity:
    """Who the shard is and what it costs, for its Stats."""

    def __init__(self, index: int, generation: int, mode: str) -> None:
        self.index = index
        self.generation = generation
        self.mode = mode
        self.pid = os.getpid()
        self.started = time.monotonic()
        # A process shard's CPU is its process's; a subinterpreter shard runs on one
        # thread of the coordinator's process, so its CPU is that thread's.
        self.cpu_clock = time.process_time if mode == "process" else time.thread_time

    def stats(self, shard: Shard) -> Stats:
        state = shard.state
        counters = state.counters
        # The counter table's entries: the shard's own attribute, or what it derives.
        counts = {
            count.name: getattr(counters, count.name)
            if count.source == COUNTED
            else count.source(counters, state)
            for count in COUNTS
            if count.source != IDENTITY
        }
        return Stats(
            index=self.index,
            generation=self.generation,
            **counts,
            responses=counters.responses_by_method(),
            latency=list(counters.latency),
            pid=self.pid,
            mode=self.mode,
            cpu_seconds=self.cpu_clock(),  # (the table's IDENTITY entry)
            # (a subinterpreter's memory is not separable from the process it shares)
            rss_bytes=rss_bytes() if self.mode == "process" else None,
            uptime_seconds=round(time.monotonic() - self.started, 3),
        )
