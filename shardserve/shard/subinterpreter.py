"""A shard running in an own-GIL subinterpreter of the coordinator's process.

The coordinator (coord/subinterpreters.py) starts an interpreter in a thread and runs
``main`` there with the shard's Configure already encoded, dups of its listeners, the
shard's end of a doorbell socketpair and the two interpreters queues of its
``QueueChannel``.  What runs is the hosted shard, as in a process shard; uvloop,
httptools and msgspec cannot load here, so ``--loop auto``/``--http auto`` fall back to
stdlib asyncio and the pure-Python parser, and messages use ``JsonCodec``.  Signals
only reach the main interpreter: the coordinator drains this shard through the bell.
"""

from __future__ import annotations

import socket
from typing import Any

from ..control import QueueChannel, post
from ..messages import Configure, JsonCodec
from .hosted import run_hosted_shard


def main(configure_payload: bytes, listener_fds: str, bell_fd: int, inbox: Any, outbox: Any) -> int:
    codec = JsonCodec()
    configure = codec.decode(configure_payload)
    if not isinstance(configure, Configure):
        raise TypeError("expected a Configure message")
    bell = socket.socket(fileno=bell_fd)
    sockets = [socket.socket(fileno=int(fd)) for fd in listener_fds.split(",")]
    channels: list[QueueChannel] = []

    def open_channel(loop, on_message, on_closed, on_error) -> QueueChannel:
        channel = QueueChannel(inbox, outbox, bell, codec, on_message, on_closed, on_error, loop)
        channels.append(channel)
        return channel

    def send_last(message) -> None:
        if bell.fileno() >= 0:
            try:
                post(outbox, bell, codec.encode(message))
            except OSError:
                pass

    try:
        return run_hosted_shard(configure, sockets, open_channel, send_last, mode="subinterpreter")
    finally:
        for channel in channels:
            channel.close()
        bell.close()
