"""The shard's event loop: uvloop, or stdlib asyncio with a shorter socket path.

Stdlib asyncio is what subinterpreter shards run on (uvloop cannot load there) and
the fallback where uvloop is missing.  Measured with callgrind on a real socket
(docs/benchmarks.md), its plain-TCP transport cost ~18,000 more instructions per
request than uvloop's, most of it Python run for every read and every write:

- each read went through two methods (``_read_ready`` only calls ``_read_ready_cb``);
- each write checked its argument's type against three classes, and on 3.12+ made a
  memoryview and a slice of it even when ``send`` took everything.

``LeanSocketTransport`` changes only those two paths.  Its loop registers the read
callback itself (one call less per read), and ``write`` hands bytes straight to
``send`` when nothing is buffered, going to the stdlib ``write`` for everything else
(buffered data, a partial send, closing, any other type), so flow control, errors
and buffering stay CPython's.  TLS transports are CPython's own.
"""

from __future__ import annotations

import asyncio
import socket
from asyncio import selector_events
from typing import Any


def new_event_loop(loop: str) -> asyncio.AbstractEventLoop:
    """uvloop for ``auto`` and ``uvloop`` (where it loads), else ``LeanEventLoop``."""
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return LeanEventLoop()


class LeanSocketTransport(selector_events._SelectorSocketTransport):
    """CPython's plain-TCP transport with a shorter read and write (module docstring)."""

    def _add_reader(self, fd: int, callback: Any, *args: Any) -> None:
        # Every reader this transport adds is its read path: register the method that
        # reads (chosen by set_protocol) rather than _read_ready, which only calls it.
        super()._add_reader(fd, self._read_ready_cb)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        super().set_protocol(protocol)
        if "_closing" not in self.__dict__:
            return  # (still being built: __init__ registers the reader, later)
        # A switch between a buffered and a plain protocol changes the read method:
        # re-register it if the old one is watching the socket.
        try:
            key = self._loop._selector.get_key(self._sock_fd)
        except (KeyError, ValueError, AttributeError):
            return
        reader = key.data[0]
        if reader is not None and reader._callback != self._read_ready_cb:
            self._add_reader(self._sock_fd, self._read_ready_cb)

    def write(self, data: Any) -> None:
        if (
            type(data) is bytes
            and not self._buffer
            and not self._conn_lost
            and not self._eof
            and self._empty_waiter is None
        ):
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)


class LeanEventLoop(asyncio.SelectorEventLoop):
    """Stdlib asyncio's loop, making LeanSocketTransports for plain TCP."""

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future | None = None,
        *,
        extra: dict | None = None,
        server: Any = None,
    ) -> asyncio.Transport:
        self._ensure_fd_no_transport(sock)
        return LeanSocketTransport(self, sock, protocol, waiter, extra, server)
