"""What a shard asks of each of its connections, and the write flow they share.

A shard tracks its open connections in ``ShardState.connections``: HTTP/1.1
connections (``http/protocol.py``), HTTP/2 connections (``h2/connection.py``) and the
WebSocket sessions HTTP/1.1 hands over to (``ws/session.py``).  The shard's ticker
and its shutdown see only ``Connection``.  An HTTP/2 stream waits to write with
``DrainWaiter`` alone (its pauses come from its connection and its window).
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable


@runtime_checkable
class Connection(Protocol):
    """A member of ``ShardState.connections``."""

    def long_lived(self) -> bool:
        """A WebSocket session: it ends when its peers say so, not with a response.  A
        shard stepping down for an in-place upgrade lets these run until its grace
        time is up."""

    def check_timeouts(self, now: float) -> None:
        """The ticker's sweep, every 0.25 s: ``now`` is the shard's coarse clock
        (``ShardState.now``), the one clock every connection's timeouts use."""

    def drain(self, close_idle: bool) -> None:
        """The shard is stopping (``close_idle``: close idle connections now) or being
        replaced (leave them open until their next request or timeout)."""

    def abort(self) -> None:
        """The grace period is over: cancel the app and drop the connection."""


class DrainWaiter:
    """Lets ``send()`` wait until writing may go on: ``wait_writable()`` parks on a
    future that ``wake_writer()`` releases.  The class using it has ``loop`` and
    ``drain_waiter`` (initially None)."""

    __slots__ = ()

    loop: asyncio.AbstractEventLoop
    drain_waiter: asyncio.Future | None

    async def wait_writable(self) -> None:
        """Wait until woken (the write buffer drained, or the client left)."""
        waiter = self.drain_waiter
        if waiter is None or waiter.done():
            waiter = self.drain_waiter = self.loop.create_future()
        await waiter

    def wake_writer(self) -> None:
        """Release whoever waits in ``wait_writable``."""
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class WriteFlow(DrainWaiter):
    """The transport's write flow control, for an ``asyncio.Protocol``: the transport
    calls ``pause_writing`` when its write buffer passes the high-water mark and
    ``resume_writing`` when it drains; ``send()`` awaits ``wait_writable()`` while
    ``write_paused``.

    The class using it has ``loop``, ``write_paused`` (initially False) and
    ``drain_waiter`` (initially None), and calls ``wake_writer()`` from
    ``connection_lost`` so that no ``send()`` waits for a client that has left.
    ``writing_paused`` / ``writing_resumed`` are hooks (no-ops here).
    """

    __slots__ = ()

    write_paused: bool

    def pause_writing(self) -> None:
        self.write_paused = True
        self.writing_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.writing_resumed()
        self.wake_writer()

    def writing_paused(self) -> None:
        """Hook: the write buffer has passed its high-water mark."""

    def writing_resumed(self) -> None:
        """Hook: the write buffer has drained (called before waiting senders wake)."""
