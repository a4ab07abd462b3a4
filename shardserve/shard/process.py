"""A shard running as its own process, talking to the coordinator over its channel.

The process is forked from the coordinator's template process (coord/template.py)
with its control socket and listener(s) already open.  It reads its ``Configure``
and runs the hosted shard (``hosted.py``).  SIGTERM drains; SIGINT (a terminal's
Ctrl+C, sent to the whole process group) is left to the coordinator.
"""

from __future__ import annotations

import signal
import socket
import sys

from ..control import Channel, receive_blocking, send_blocking
from ..messages import Configure, MessageError, default_codec
from .hosted import run_hosted_shard


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
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sockets = [socket.socket(fileno=fd) for fd in listener_fds]

    def open_channel(loop, on_message, on_closed, on_error) -> Channel:
        return Channel(control, codec, on_message, on_closed, on_error, loop=loop)

    def setup_host(loop, shard) -> None:
        loop.add_signal_handler(signal.SIGTERM, shard.request_stop)

    def send_last(message) -> None:
        """After the loop is gone: one blocking send, if the channel is still open."""
        try:
            if control.fileno() >= 0:
                control.setblocking(True)
                send_blocking(control, codec, message, timeout=2)
        except (OSError, MessageError):
            pass

    return run_hosted_shard(configure, sockets, open_channel, send_last, setup_host)
