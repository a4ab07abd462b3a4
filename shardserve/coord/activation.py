"""systemd socket activation (``sd_listen_fds``): the listening sockets systemd, or
``systemd-socket-activate``, passed to this process.

Taken once, first thing, and the variables removed from the environment so that
neither the app nor the shards see them (a shard or a subprocess of the app must
not take the sockets for its own).  Connections made before we started wait in the
sockets' queues and are served once the shards are up.

One passed TCP socket with SO_REUSEPORT on (``ReusePort=yes``) becomes the first of
an SO_REUSEPORT group that every other shard's listener joins, as with our own
sockets; otherwise (no SO_REUSEPORT, a UNIX socket, several sockets) every shard
serves every passed socket, as with ``--fd``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from ..errors import ListenError

FIRST_FD = 3  # SD_LISTEN_FDS_START
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@dataclass
class Activation:
    """Listening sockets this process was given rather than bound: by systemd, or by
    the coordinator it replaces (an in-place upgrade, handover.py)."""

    sockets: list[socket.socket]
    names: list[str]
    group: bool | None = None  # (a handover says; for systemd's, ``reuseport`` finds out)

    @property
    def reuseport(self) -> bool:
        """The sockets are an SO_REUSEPORT group shards take one each of, joined by
        shards beyond its size: one TCP socket with SO_REUSEPORT on, from systemd."""
        if self.group is not None:
            return self.group
        if len(self.sockets) != 1:
            return False
        sock = self.sockets[0]
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))

    def describe(self) -> str:
        count = len(self.sockets)
        names = f" ({', '.join(self.names)})" if any(self.names) else ""
        how = (
            "shards join its SO_REUSEPORT group"
            if self.reuseport
            else ("every shard serves it" if count == 1 else "every shard serves them all")
        )
        return f"{count} socket{'s' if count != 1 else ''} passed by systemd{names}: {how}"


def take_activation(environ: MutableMapping[str, str] = os.environ) -> Activation | None:
    """The passed sockets, or None when this process was given none; the variables
    are removed either way."""
    pid, fds, names = (environ.pop(name, None) for name in VARIABLES)
    if fds is None or pid is None:
        return None
    if not pid.isdigit() or int(pid) != os.getpid():
        return None  # meant for another process (ours is a child of the one it named)
    if not fds.isdigit():
        raise ListenError(f"LISTEN_FDS={fds!r}: expected a number of sockets")
    count = int(fds)
    if count == 0:
        return None
    sockets = []
    for fd in range(FIRST_FD, FIRST_FD + count):
        sockets.append(_listening_socket(fd))
    labels = names.split(":") if names else []
    labels += [""] * (count - len(labels))
    return Activation(sockets, labels[:count])


def stream_socket(fd: int, what: str) -> socket.socket:
    """The stream socket on an inherited ``fd`` (``what`` names it in errors: --fd N,
    or systemd's LISTEN_FDS)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenError(f"{what}: not a usable socket ({exc.strerror})") from None
    if sock.type != socket.SOCK_STREAM:
        raise ListenError(f"{what}: not a stream socket")
    return sock


def _listening_socket(fd: int) -> socket.socket:
    sock = stream_socket(fd, f"LISTEN_FDS: fd {fd}")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ListenError(f"LISTEN_FDS: fd {fd}: not listening")
    sock.set_inheritable(False)  # (the shards get theirs from the launcher)
    return sock
