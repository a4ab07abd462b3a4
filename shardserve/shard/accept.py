"""Accepting connections: a burst at once, and without spinning when out of
descriptors.  Every shard accepts through a ``Listener``, on either loop, because
neither loop's own ``create_server`` does both:

- CPython's accept loop (``BaseSelectorEventLoop._accept_connection``, 3.11 to 3.13)
  does not stop at EMFILE: it goes on calling ``accept()`` up to the backlog, logs a
  traceback for each failure and schedules as many retries, so a shard at its fd
  limit burns every CPU and floods the log while new clients wait (measured: ~800k
  lines and both CPUs busy in 11 s under ``ulimit -n 256``).
- uvloop's libuv (1.45 on, libuv PR 3696) accepts one connection per loop iteration.
  A busy shard's iteration serves every ready connection first, so a burst of new
  clients waits one whole iteration each: 64 HTTP/2 clients arriving while 64 others
  were served took 1.7 s to be accepted, their first requests 0.5-1.8 s.

A ``Listener`` accepts up to ``ACCEPT_BATCH`` each time the socket is ready.  Out of
descriptors (or kernel memory), it stops watching the socket for ``PAUSE_SECONDS``,
logs once per ``LOG_SECONDS`` and tries again, while connections wait in the
kernel's queue.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl
from collections.abc import Callable

logger = logging.getLogger("shardserve.error")

# New connections taken each time the socket is ready: a burst at once, yet a flood
# of them cannot hold up the connections already being served for long.
ACCEPT_BATCH = 128
PAUSE_SECONDS = 0.5
LOG_SECONDS = 10.0
# accept() errors that say "not now" rather than "never": pause and try again.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Connection set-ups (and TLS handshakes) that failed because of the client.
_CLIENT_FAILURES = (OSError, ssl.SSLError, EOFError, TimeoutError)


class Listener:
    """Serve one listening socket (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None,
        backlog: int,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.ssl_context = ssl_context
        self.backlog = backlog
        self.watching = False
        self.closed = False
        self.resume_handle: asyncio.TimerHandle | None = None
        self.setups: set[asyncio.Task] = set()  # connections being set up (TLS handshakes)
        self.paused_since_log = 0
        self.last_log = -LOG_SECONDS

    def start(self) -> None:
        sock = self.sock
        sock.setblocking(False)
        sock.listen(self.backlog)  # (as create_server does: --fd sockets get our backlog)
        self._watch()

    def _watch(self) -> None:
        self.resume_handle = None
        if not self.closed and not self.watching:
            self.watching = True
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        sock = self.sock
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(exc)
                else:
                    logger.error("accept() failed on %s: %s", _name(sock), exc)
                return
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        setup = self.loop.create_task(
            self.loop.connect_accepted_socket(self.protocol_factory, conn, ssl=self.ssl_context)
        )
        self.setups.add(setup)
        setup.add_done_callback(lambda task: self._set_up(task, conn))

    def _set_up(self, task: asyncio.Task, conn: socket.socket) -> None:
        self.setups.discard(task)
        if task.cancelled():
            conn.close()
            return
        exc = task.exception()
        if exc is not None:
            conn.close()
            if isinstance(exc, _CLIENT_FAILURES):
                logger.debug("Connection set-up failed: %r", exc)
            else:
                logger.error("Connection set-up failed", exc_info=exc)

    def _pause(self, exc: OSError) -> None:
        """Stop accepting for a moment: the queued connections wait in the kernel."""
        self.loop.remove_reader(self.sock.fileno())
        self.watching = False
        self.resume_handle = self.loop.call_later(PAUSE_SECONDS, self._watch)
        self.paused_since_log += 1
        now = self.loop.time()
        if now - self.last_log >= LOG_SECONDS:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            logger.warning(
                "Not accepting connections for %.1f s: %s (open file descriptors limit %d; "
                "%d pause%s since the last message); raise it (ulimit -n, or LimitNOFILE= "
                "under systemd).",
                PAUSE_SECONDS,
                exc.strerror or exc,
                soft,
                self.paused_since_log,
                "" if self.paused_since_log == 1 else "s",
            )
            self.last_log = now
            self.paused_since_log = 0

    def close(self) -> None:
        """Stop accepting and close this shard's copy of the socket."""
        if self.closed:
            return
        self.closed = True
        if self.watching:
            self.loop.remove_reader(self.sock.fileno())
            self.watching = False
        if self.resume_handle is not None:
            self.resume_handle.cancel()
        self.sock.close()


def _name(sock: socket.socket) -> str:
    try:
        return str(sock.getsockname())
    except OSError:
        return "a listener"
