"""The shard's event loop: uvloop, or stdlib asyncio with a shorter socket path.

Stdlib asyncio is what subinterpreter shards run on (uvloop cannot load there) and
the fallback where uvloop is missing.  Measured with callgrind on a real socket
(docs/benchmarks.md), its plain-TCP transport cost ~18,000 more instructions per
request than uvloop's, most of it Python run for every read and every write:

- each read went through two methods (``_read_ready`` only calls ``_read_ready_cb``);
- each write checked its argument's type against three classes, and on 3.12+ made a
  memoryview and a slice of it even when ``send`` took everything.

``LeanSocketTransport`` changes only those two paths.  Its loop registers the read
callback itself (one call less per read; for a plain protocol, where it is built, the
C twin of CPython's method, ``_transport.c``), and ``write`` hands bytes straight to
``send`` when nothing is buffered, going to the stdlib ``write`` for everything else
(buffered data, a partial send, closing, any other type), so flow control, errors
and buffering stay CPython's.  TLS transports are CPython's own.  ``LeanEventLoop``
saves a few more Python calls per request: one per ready socket to ``_add_callback``,
and the C Task's to ``get_debug`` and ``is_running``, which become attributes.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
from asyncio import selector_events
from collections.abc import Callable
from typing import Any

from .http import compiled

# The read method CPython's transport uses for a plain protocol, and its C twin
# (_transport.c's read_ready), or None to use it as it is.
PLAIN_READ = selector_events._SelectorSocketTransport._read_ready__data_received
_transport = compiled.load("_transport")
compiled_read_ready = None if _transport is None else _transport.read_ready


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

    def reader(self) -> tuple[Callable[..., object], tuple]:
        """The read callback and its arguments: the read method set_protocol chose
        (for a plain protocol, its C twin where _transport.c is built)."""
        method = self._read_ready_cb
        if compiled_read_ready is not None and getattr(method, "__func__", None) is PLAIN_READ:
            return compiled_read_ready, (self,)
        return method, ()

    def _add_reader(self, fd: int, callback: Any, *args: Any) -> None:
        # Every reader this transport adds is its read path: register the method that
        # reads rather than _read_ready, which only calls it.
        callback, args = self.reader()
        super()._add_reader(fd, callback, *args)

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
        handle = key.data[0]
        if handle is not None and (handle._callback, handle._args) != self.reader():
            self._add_reader(self._sock_fd, None)

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
    """Stdlib asyncio's loop, making LeanSocketTransports for plain TCP, with three
    Python calls fewer per request (module docstring)."""

    # The C Task asks its loop get_debug() as it is made and is_running() as it starts
    # eagerly (3.12+), once each per request: as attributes holding a C callable, set
    # where the values change, they run no Python frame.
    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        self.get_debug = True.__bool__ if self._debug else False.__bool__

    def _run_forever_setup(self) -> None:  # (3.12+; 3.11 keeps the method)
        super()._run_forever_setup()
        self.is_running = True.__bool__

    def _run_forever_cleanup(self) -> None:
        super()._run_forever_cleanup()
        self.is_running = False.__bool__

    def _process_events(self, event_list: list) -> None:
        # As CPython's, with the ready handles appended here rather than through a
        # call to _add_callback for each (which checks _cancelled a second time).
        ready = self._ready
        for key, mask in event_list:
            reader, writer = key.data
            if reader is not None and mask & selectors.EVENT_READ:
                if reader._cancelled:
                    self._remove_reader(key.fileobj)
                else:
                    ready.append(reader)
            if writer is not None and mask & selectors.EVENT_WRITE:
                if writer._cancelled:
                    self._remove_writer(key.fileobj)
                else:
                    ready.append(writer)

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
