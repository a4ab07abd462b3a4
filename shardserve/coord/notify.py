"""systemd readiness (``Type=notify``): sd_notify's few lines over ``$NOTIFY_SOCKET``,
an AF_UNIX datagram socket (no dependency needed).

What the coordinator says: ``READY=1`` once every shard is ready (and again after a
rolling restart), ``RELOADING=1`` with ``MONOTONIC_USEC`` while one (or an in-place
upgrade) runs, ``MAINPID=`` of the new coordinator once an upgrade is done,
``STOPPING=1``, ``STATUS=`` (shards and requests per second, refreshed every few
seconds), and ``WATCHDOG=1`` at half of ``WATCHDOG_USEC`` while the coordinator's loop
runs and no shard is stuck.  ``NOTIFY_SOCKET`` and the watchdog variables are taken
out of the environment at start: only the coordinator (the service's main process)
may notify, so neither the shards nor the app see them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping

logger = logging.getLogger("shardserve.error")

STATUS_SECONDS = 5.0


class Notifier:
    def __init__(self, address: str, watchdog_seconds: float | None) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_seconds = watchdog_seconds
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.failed = False
        self.handed_over = False  # another process is the service's main one now

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier | None:
        address = environ.pop("NOTIFY_SOCKET", None)
        usec = environ.pop("WATCHDOG_USEC", None)
        pid = environ.pop("WATCHDOG_PID", None)
        if not address or address[0] not in "/@":
            return None
        watchdog = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1e6
        return cls(address, watchdog)

    def send(self, *fields: str) -> None:
        if self.handed_over:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self.failed:  # (once: systemd may be gone, or the socket full)
                self.failed = True
                logger.warning("Could not notify systemd at %s: %s", self.address, exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def hand_over(self, pid: int, status: str) -> None:
        """An in-place upgrade is done: ``pid`` is the main process from now on (sent
        by us, the main process until now, so that NotifyAccess=main accepts it), and
        we say nothing more (not even STOPPING=1 as we drain)."""
        self.send(f"MAINPID={pid}", "READY=1", f"STATUS={status}")
        self.handed_over = True

    def reloading(self, status: str = "Rolling restart") -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=Stopping")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        self.sock.close()


async def keep_notifying(
    notifier: Notifier,
    status: Callable[[], str],
    stuck: Callable[[], bool],
    reloading: Callable[[], bool],
) -> None:
    """STATUS= every few seconds (not while ``reloading``: it says so); WATCHDOG=1 at
    half of systemd's interval, while this loop runs and no shard is ``stuck``
    (systemd restarts the service otherwise)."""
    watchdog = notifier.watchdog_seconds
    interval = min(STATUS_SECONDS, watchdog / 2) if watchdog else STATUS_SECONDS
    last_status = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        if watchdog and not stuck():
            notifier.watchdog()
        if time.monotonic() - last_status >= STATUS_SECONDS and not reloading():
            last_status = time.monotonic()
            notifier.status(status())
