"""The template process: forks process shards that share its preloaded memory.

The coordinator starts it with ``subprocess`` (a fresh interpreter, so the
coordinator itself never forks, and may host subinterpreters).  It imports what
every shard runs (shardserve's shard code, uvloop, httptools, h11, msgspec), freezes
those objects out of the garbage collector's reach, and then forks one shard per
``Spawn`` request.  Pages it loaded stay shared between all shards until written,
which is what keeps a shard's private memory small.

Each shard is forked twice over, so that the intermediate process exits at once and
the shard is re-parented to the coordinator (a child subreaper): the coordinator
waits for its own shards' exits and signals them directly.  The application is
imported by each shard, never here, so that a restarted shard loads new code.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import socket
import sys

from ..control import receive_blocking, send_blocking
from ..messages import MessageError, Spawn, Spawned, default_codec


def preload() -> None:
    import logging.config  # noqa: F401
    import ssl  # noqa: F401

    from ..shard import process, server  # noqa: F401
    from ..shard.http import parser_h11, parser_httptools  # noqa: F401
    from ..shard.ws import session  # noqa: F401  (shards load it with a first WebSocket)

    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass


def serve(control: socket.socket) -> int:
    codec = default_codec()
    while True:
        try:
            request = receive_blocking(control, codec)
        except (EOFError, ConnectionError):
            return 0  # the coordinator is gone
        except (MessageError, OSError, ValueError) as exc:
            print(f"shardserve template: bad request: {exc}", file=sys.stderr)
            return 1
        if not isinstance(request, Spawn):
            continue
        control_fd, *listener_fds = request.fds
        try:
            pid = _fork_shard(control, request.index, control_fd, listener_fds)
        except OSError as exc:
            print(f"shardserve template: fork failed: {exc}", file=sys.stderr)
            pid = 0  # the coordinator counts it as a shard that failed to start
        for fd in request.fds:
            os.close(fd)
        send_blocking(control, codec, Spawned(request.index, request.generation, pid))


def _fork_shard(
    template: socket.socket, index: int, control_fd: int, listener_fds: list[int]
) -> int:
    read_end, write_end = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        try:
            os.close(read_end)
            shard = os.fork()
            if shard == 0:
                os.close(write_end)
                template.close()
                _name_process(f"shardserve-{index}")
                _become_shard(control_fd, listener_fds)  # never returns
            os.write(write_end, b"%d" % shard)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        pid = int(pipe.read() or b"0")
    os.waitpid(intermediate, 0)
    return pid


def _name_process(name: str) -> None:
    """What ps and top show (15 bytes at most): tell shards from the template."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _become_shard(control_fd: int, listener_fds: list[int]) -> None:
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from ..shard.process import run_shard_process

        code = run_shard_process(control_fd, listener_fds)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    # The terminal's Ctrl+C reaches the whole process group: the coordinator decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=int(sys.argv[1]))
    _name_process("shardserve-tmpl")
    preload()
    gc.collect()
    gc.freeze()
    sys.exit(serve(control))


if __name__ == "__main__":
    main()
