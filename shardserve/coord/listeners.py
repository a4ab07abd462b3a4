"""Listening sockets, created by the coordinator and handed to shards.

TCP listeners join one SO_REUSEPORT group; the coordinator keeps its copy of each
for its whole life (see docs/architecture.md).  Before joining the group we check
that no one else holds the port: SO_REUSEPORT would otherwise let a stale server
(of the same user) silently share it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from ..config import Config
from ..errors import ListenError
from .activation import Activation, stream_socket


def bind_listeners(
    config: Config, count: int = 1, activation: Activation | None = None
) -> list[socket.socket]:
    """The listeners: passed by systemd or the coordinator we replace (activation.py),
    --fd, --uds, or bound here (``count`` members of one SO_REUSEPORT group; an
    inherited group may have more)."""
    if activation is not None:
        sockets = list(activation.sockets)
        if activation.reuseport:
            more = count - len(sockets)
            sockets += [add_listener(sockets[0], config.backlog) for _ in range(more)]
        return sockets
    if config.fd is not None:
        return [stream_socket(config.fd, f"--fd {config.fd}")]
    if config.uds is not None:
        return [_bind_unix(config.uds, config.backlog)]
    return _bind_tcp_group(config.host, config.port, config.backlog, count)


def add_listener(first: socket.socket, backlog: int) -> socket.socket:
    """One more member of ``first``'s SO_REUSEPORT group (index: the group's size)."""
    sock = _new_tcp_socket(first.family, reuseport=True)
    try:
        sock.bind(first.getsockname())
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def describe(sock: socket.socket, is_ssl: bool) -> str:
    """'http://127.0.0.1:8000' (or unix:/path) for the start-up log."""
    scheme = "https" if is_ssl else "http"
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"{scheme}+unix://{address}"
    host, port = address[0], address[1]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _bind_unix(path: str, backlog: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode) and not _unix_in_use(path):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(f"could not bind to unix socket {path}: {exc.strerror}") from None
    return sock


def _unix_in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _address_info(host: str, port: int) -> tuple[int, tuple]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"--host {host}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    return family, address


def _new_tcp_socket(family: int, reuseport: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return sock


def _bind_tcp_group(host: str, port: int, backlog: int, count: int) -> list[socket.socket]:
    family, address = _address_info(host, port)
    where = f"{host}:{port}"
    if port != 0:
        probe = _new_tcp_socket(family, reuseport=False)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ListenError(_bind_failure(where, exc)) from None
        finally:
            probe.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = _new_tcp_socket(family, reuseport=True)
            sockets.append(sock)
            sock.bind(address)
            if port == 0:
                address = sock.getsockname()
        for sock in sockets:  # listen() order fixes each socket's index in the group
            sock.listen(backlog)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(_bind_failure(where, exc)) from None
    return sockets


def _bind_failure(where: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"could not bind to {where}: address already in use"
    return f"could not bind to {where}: {exc.strerror or exc}"
