"""Starting shards as own-GIL subinterpreters, and checking the app can live in one.

A subinterpreter shard is a thread of the coordinator's process running
``shard.subinterpreter.main`` in a fresh interpreter.  Its control channel is a
``QueueChannel``: an interpreters queue each way plus a doorbell socketpair.  Its
listeners are dups of the coordinator's.  It cannot be killed: a stuck one can only
be asked to stop (see docs/architecture.md).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..errors import StartupError
from ..interpreters import prepare_queues, require

# Run in the new interpreter: the same import path as ours, then the shard.
_SHARD_MAIN = """\
import sys
sys.path[:] = paths.split("\\0")
from shardserve.shard.subinterpreter import main
main(configure, listener_fds, bell_fd, inbox, outbox)
"""

_PREFLIGHT = """\
import sys
sys.path[:] = paths.split("\\0")
from shardserve.importer import load_app
load_app(app, factory=factory, app_dir=app_dir)
"""

_REFUSES = re.compile(r"module '?([\w.]+)'? does not support loading in subinterpreters")


class RunningInterpreter:
    """A shard's interpreter and the thread running it (coord/handles.py's
    InterpreterHandle holds one)."""

    def __init__(self) -> None:
        self.interp: Any = None
        self.thread: threading.Thread | None = None
        self.failure: str | None = None

    def close(self) -> None:
        """Destroy the interpreter once its thread has ended."""
        if self.interp is not None and (self.thread is None or not self.thread.is_alive()):
            try:
                self.interp.close()
            except Exception:  # noqa: BLE001 - already gone, or still busy: nothing to free
                pass
            self.interp = None


def start_interpreter_shard(
    configure_payload: bytes,
    listeners: list[socket.socket],
    on_end: Callable[[int, str | None], None],
    name: str,
) -> tuple[RunningInterpreter, Any, Any, socket.socket]:
    """Start a shard in a new interpreter; ``on_end(code, error)`` is called from its
    thread when it ends.  Returns the handle, the queues (to shard, to coordinator)
    and the coordinator's end of the doorbell."""
    api = require()
    handle = RunningInterpreter()
    to_shard, to_coordinator = api.create_queue(), api.create_queue()
    ours, theirs = socket.socketpair()
    fds = [os.dup(sock.fileno()) for sock in listeners]
    bell_fd = os.dup(theirs.fileno())
    theirs.close()
    try:
        interp = handle.interp = api.create()
        prepare_queues(interp, api, inbox=to_shard, outbox=to_coordinator)
        interp.prepare_main(
            paths="\0".join(sys.path),
            configure=configure_payload,
            listener_fds=",".join(map(str, fds)),
            bell_fd=bell_fd,
        )
    except BaseException:
        for fd in [*fds, bell_fd]:
            os.close(fd)
        ours.close()
        handle.close()
        raise

    def run() -> None:
        code, error = 0, None
        try:
            interp.exec(_SHARD_MAIN)
        except api.ExecutionFailed as exc:
            code, error = 1, _one_line(exc)
        except BaseException as exc:  # noqa: BLE001 - reported through on_end
            code, error = 1, f"{type(exc).__name__}: {exc}"
        on_end(code, error)

    handle.thread = threading.Thread(target=run, name=name, daemon=True)
    handle.thread.start()
    return handle, to_shard, to_coordinator, ours


def preflight(app: str, factory: bool, app_dir: str) -> None:
    """Import the app in a throwaway interpreter before starting shards, so that an app
    that cannot live in one (a C extension refusing to load) fails with one line."""
    api = require()
    interp = api.create()
    try:
        interp.prepare_main(paths="\0".join(sys.path), app=app, factory=factory, app_dir=app_dir)
        interp.exec(_PREFLIGHT)
    except api.ExecutionFailed as exc:
        reason = _one_line(exc)
        refused = _REFUSES.search(reason)
        culprit = f"module {refused.group(1)} refuses to load there" if refused else reason
        raise StartupError(
            f"--shard-mode subinterpreter: the app {app!r} cannot be imported in a "
            f"subinterpreter ({culprit}); use --shard-mode process"
        ) from None
    finally:
        interp.close()


def _one_line(exc: BaseException) -> str:
    info = getattr(exc, "excinfo", None)
    if info is not None:
        return f"{info.type.__name__}: {info.msg}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
