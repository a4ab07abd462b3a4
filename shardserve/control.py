"""The control channel: length-prefixed messages over a Unix socketpair, both ends.

One implementation for the coordinator's end and the shard's end.  A frame is a
4-byte big-endian length and a payload (one encoded message, see ``messages.py``).
File descriptors (``Adopt``) travel as SCM_RIGHTS with the first byte of their
frame, so the channel works on raw sockets with ``loop.add_reader`` rather than on
asyncio streams, which cannot carry them.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from .messages import MessageError

logger = logging.getLogger("shardserve.error")

MAX_FRAME = 1 << 20
_HEADER = struct.Struct(">I")
_MAX_FDS = 16


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Sans-I/O: bytes in, complete payloads out; oversized frames are an error."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames = []
        buffer = self.buffer
        while len(buffer) >= 4:
            (size,) = _HEADER.unpack_from(buffer)
            if size > MAX_FRAME:
                raise MessageError(f"frame of {size} bytes exceeds {MAX_FRAME}")
            if len(buffer) < 4 + size:
                break
            frames.append(bytes(buffer[4 : 4 + size]))
            del buffer[: 4 + size]
        return frames


class ChannelEnd:
    """What both kinds of channel end share: callbacks, received fds, and how
    payloads become messages.

    ``on_message(message)`` gets each decoded message; ``on_error(exc)`` a malformed
    one (the channel stops reading); ``on_closed()`` the peer's end.
    """

    def __init__(
        self,
        codec: Any,
        on_message: Callable[[Any], None],
        on_closed: Callable[[], None],
        on_error: Callable[[Exception], None],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.codec = codec
        self.on_message = on_message
        self.on_closed = on_closed
        self.on_error = on_error
        self.loop = loop or asyncio.get_running_loop()
        self.fds: deque[int] = deque()
        self.closed = False

    def _deliver(self, payloads: list[bytes]) -> None:
        try:
            for payload in payloads:
                message = self.codec.decode(payload)
                _attach_fds(message, self.fds)
                self.on_message(message)
                if self.closed:
                    return
        except MessageError as exc:
            self._stop_reading()
            self.on_error(exc)

    def _fail(self, exc: MessageError) -> None:
        self._stop_reading()
        self.on_error(exc)

    def _lost(self) -> None:
        if not self.closed:
            self.close()
            self.on_closed()

    def _close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def _stop_reading(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Channel(ChannelEnd):
    """One end of a control socketpair, driven by an event loop."""

    def __init__(
        self,
        sock: socket.socket,
        codec: Any,
        on_message: Callable[[Any], None],
        on_closed: Callable[[], None],
        on_error: Callable[[Exception], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(codec, on_message, on_closed, on_error, loop)
        self.sock = sock
        self.reader = FrameReader()
        self.outgoing: deque[tuple[memoryview, list[int]]] = deque()
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    # Receiving -------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        self.fds.extend(_fds_from(ancillary))
        if len(self.fds) > _MAX_FDS:
            self._fail(MessageError("file descriptors no message asked for"))
            return
        if not data:
            self._lost()
            return
        try:
            payloads = self.reader.feed(data)
        except MessageError as exc:
            self._fail(exc)
            return
        self._deliver(payloads)

    def read_remaining(self) -> None:
        """Take in whatever the peer sent before it went away."""
        while not self.closed:
            before = len(self.reader.buffer)
            try:
                self._readable()
            except Exception:  # noqa: BLE001 - a dead peer's last bytes, best effort
                return
            if self.closed or len(self.reader.buffer) == before:
                return

    # Sending ---------------------------------------------------------------------------

    def send(self, message: Any, fds: list[int] | None = None) -> None:
        """Queue a message (and file descriptors) for the peer; never blocks."""
        if self.closed:
            return
        self.outgoing.append((memoryview(frame(self.codec.encode(message))), list(fds or ())))
        if len(self.outgoing) == 1:
            self._writable()

    def _writable(self) -> None:
        while self.outgoing:
            data, fds = self.outgoing[0]
            try:
                if fds:
                    sent = self.sock.sendmsg(
                        [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    )
                else:
                    sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.outgoing.clear()
                self._lost()
                return
            if sent == len(data):
                self.outgoing.popleft()
            else:
                self.outgoing[0] = (data[sent:], [])
                break
        if self.outgoing:
            self.loop.add_writer(self.sock.fileno(), self._writable)
        else:
            self.loop.remove_writer(self.sock.fileno())

    # Closing ---------------------------------------------------------------------------

    def _stop_reading(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fileno = self.sock.fileno()
        if fileno >= 0:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(fileno)
            with contextlib.suppress(Exception):
                self.loop.remove_writer(fileno)
        self._close_fds()
        self.sock.close()


class QueueChannel(ChannelEnd):
    """One end of a control channel between interpreters of one process: encoded
    messages through an interpreters queue each way, and a socketpair *doorbell*
    that wakes the reader's event loop (``loop.add_reader``), so nobody polls.

    Same interface and message handling as ``Channel``.  File descriptors travel as
    numbers next to the payload: dups of the sender's, which the receiver owns.
    """

    def __init__(
        self,
        inbox: Any,
        outbox: Any,
        bell: socket.socket,
        codec: Any,
        on_message: Callable[[Any], None],
        on_closed: Callable[[], None],
        on_error: Callable[[Exception], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(codec, on_message, on_closed, on_error, loop)
        self.inbox = inbox
        self.outbox = outbox
        self.bell = bell
        bell.setblocking(False)
        self.loop.add_reader(bell.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            rung = self.bell.recv(4096)
        except (BlockingIOError, InterruptedError):
            rung = None
        except OSError:
            rung = b""
        self._take()
        if rung == b"":
            self._lost()

    def _take(self) -> None:
        payloads = []
        while not self.closed:
            try:
                item = self.inbox.get_nowait()
            except Exception:  # noqa: BLE001 - QueueEmpty, whichever module defines it
                break
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes)):
                self._fail(MessageError("malformed queue item"))
                return
            payload, fds = item
            if len(payload) > MAX_FRAME:
                self._fail(MessageError(f"message of {len(payload)} bytes exceeds {MAX_FRAME}"))
                return
            self.fds.extend(fds)
            payloads.append(payload)
        self._deliver(payloads)

    def read_remaining(self) -> None:
        """Take in whatever the peer sent before it went away."""
        if not self.closed:
            self._take()

    def send(self, message: Any, fds: list[int] | None = None) -> None:
        """Queue a message (and file descriptors) for the peer; never blocks."""
        if self.closed:
            return
        try:
            # Dups, as SCM_RIGHTS would make: the receiver owns what it gets.
            post(
                self.outbox, self.bell, self.codec.encode(message), [os.dup(fd) for fd in fds or ()]
            )
        except OSError:
            self._lost()

    def _stop_reading(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.bell.fileno())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_reading()
        self._close_fds()
        self.bell.close()


def post(outbox: Any, bell: socket.socket, payload: bytes, fds: list[int] | None = None) -> None:
    """Put one encoded message in ``outbox`` and ring; needs no event loop (a shard's
    last words are posted after its loop is gone)."""
    outbox.put_nowait((payload, tuple(fds or ())))
    try:
        bell.send(b"\0")
    except (BlockingIOError, InterruptedError):
        pass  # the bell is already ringing: the peer will look at the queue


# Blocking helpers, for the moments a process has no event loop ---------------------------


def send_blocking(sock: socket.socket, codec: Any, message: Any, timeout: float = 5.0) -> None:
    sock.settimeout(timeout)
    sock.sendall(frame(codec.encode(message)))


def receive_blocking(sock: socket.socket, codec: Any, timeout: float | None = None) -> Any:
    """One message, with any file descriptors it carries."""
    sock.settimeout(timeout)
    fds: deque[int] = deque()
    header = _receive_exactly(sock, 4, fds)
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise MessageError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    message = codec.decode(_receive_exactly(sock, size, fds))
    _attach_fds(message, fds)
    return message


def _receive_exactly(sock: socket.socket, size: int, fds: deque[int]) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk, ancillary, _, _ = sock.recvmsg(size - len(chunks), _ANCILLARY)
        fds.extend(_fds_from(ancillary))
        if not chunk:
            raise EOFError("control channel closed")
        chunks += chunk
    return bytes(chunks)


_ANCILLARY = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)


def _fds_from(ancillary) -> list[int]:
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    return list(fds)


def _attach_fds(message: Any, fds: deque[int]) -> None:
    wanted = getattr(message, "wanted_fds", 0)
    if wanted:
        if len(fds) < wanted:
            raise MessageError(f"{message.TAG} without its file descriptors")
        message.fds = [fds.popleft() for _ in range(wanted)]
