"""Starting shards as own-GIL subinterpreters, and checking the app can live in one.

A subinterpreter shard is a thread of the coordinator's process running
``shard.subinterpreter.main`` in a fresh interpreter.  Its control channel is a
``QueueChannel``: an interpreters queue each way plus a doorbell socketpair.  Its
listeners are dups of the coordinator's.  It cannot be killed: a stuck one can only
be asked to stop (see docs/architecture.md).

An interpreter is finalized by the thread that ran it, once its shard has ended and
the threads its app started have ended too (``shard.subinterpreter.end_threads``):
CPython aborts the process if one still runs then.  One whose threads will not end
is reported and left unfinalized; so that the process's own finalization does not
abort on it either, the process then ends with ``os._exit`` once everything else is
done (``_exit_without_finalizing``).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..errors import StartupError
from ..interpreters import prepare_queues, require

logger = logging.getLogger("shardserve.error")

# Run in the new interpreter: the same import path as ours, then the shard.
_SHARD_MAIN = """\
import sys
sys.path[:] = paths.split("\\0")
from shardserve.shard.subinterpreter import main
main(configure, listener_fds, bell_fd, inbox, outbox)
"""

# Run in it once the shard has ended, before it is finalized.
_END_THREADS = """\
from shardserve.shard.subinterpreter import end_shard_threads
end_shard_threads(configure)
"""

_PREFLIGHT = """\
import sys
sys.path[:] = paths.split("\\0")
from shardserve.importer import load_app
load_app(app, factory=factory, app_dir=app_dir)
"""

# A throwaway import has nothing to finish: its threads are ended at once.
_PREFLIGHT_END_THREADS = """\
from shardserve.shard.subinterpreter import end_threads
end_threads(0, report_overdue=False)
"""

# At the process's exit, how long a shard still serving (its loop stuck) is waited for.
STUCK_SECONDS = 1.0

_REFUSES = re.compile(r"module '?([\w.]+)'? does not support loading in subinterpreters")


class RunningInterpreter:
    """A shard's interpreter and the thread running it (coord/handles.py's
    InterpreterHandle holds one)."""

    def __init__(self) -> None:
        self.interp: Any = None
        self.thread: threading.Thread | None = None
        self.failure: str | None = None

    def close(self) -> None:
        """Destroy an interpreter whose thread never started; one that ran is
        finalized by its own thread, after its app's threads (``_finish``)."""
        if self.interp is not None and self.thread is None:
            _finish(self.interp, "an unstarted shard", None)
            self.interp = None


# Threads running a shard's interpreter ("serving") or ending it ("ending"), and
# interpreters left unfinalized because threads in them would not end (held: the
# last reference to one dropped destroys it, which would abort the process).
_hosts: dict[threading.Thread, str] = {}
_left: list[tuple[str, Any]] = []
_lock = threading.Lock()
_exit_hook = False


def _finish(interp: Any, who: str, end_threads: str | None) -> None:
    """Run ``end_threads`` in ``interp`` (the app's threads end), then finalize it;
    or leave it, with one line saying why, if they would not end."""
    api = require()
    if end_threads is not None:
        try:
            interp.exec(end_threads)
        except api.ExecutionFailed as exc:
            info = getattr(exc, "excinfo", None)
            kind = getattr(getattr(info, "type", None), "__name__", "")
            reason = info.msg if kind in ("ThreadsStopped", "ThreadsLeft") else _one_line(exc)
            if kind != "ThreadsStopped":
                logger.error(
                    "%s: %s; its interpreter is left unfinalized (the process will "
                    "exit without finalizing it).",
                    who,
                    reason,
                )
                _leave(who, interp)
                return
            logger.warning("%s: %s.", who, reason)
    try:
        interp.close()
    except Exception as exc:  # noqa: BLE001 - reported; nothing more to free
        logger.error("%s: its interpreter could not be finalized (%s).", who, exc)
        _leave(who, interp)


def _leave(who: str, interp: Any) -> None:
    _register_exit_hook()
    with _lock:
        _left.append((who, interp))


def _register_exit_hook() -> None:
    global _exit_hook
    with _lock:
        if not _exit_hook:
            atexit.register(_exit_without_finalizing)
            _exit_hook = True


def _exit_without_finalizing() -> None:
    """At the process's exit (atexit runs after threading has joined non-daemon
    threads, before subinterpreters are finalized): wait for shards still ending
    their threads, then, if an interpreter could not be finalized or a shard's
    thread is stuck in one, end the process without finalizing them."""
    with _lock:
        hosts = dict(_hosts)
    for thread, phase in hosts.items():
        # Ending: bounded by the grace time, then SystemExit's unwinding.  Still
        # serving: stuck (the supervisor has given up on it), or about to end.
        thread.join(None if phase == "ending" else STUCK_SECONDS)
    with _lock:
        left = [f"{who} (its threads)" for who, _ in _left]
        left += [f"{_who(thread.name)} (its event loop)" for thread in _hosts]
    if not left:
        return
    logger.error(
        "Exiting with status 1 without finalizing %d subinterpreter(s) that would not end: %s.",
        len(left),
        ", ".join(left),
    )
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - exiting anyway
            pass
    os._exit(1)


def _host(run: Callable[[], None], name: str) -> threading.Thread:
    """Start the thread that runs (then ends) a shard's interpreter; the process's
    exit waits for it (``_exit_without_finalizing``)."""
    _register_exit_hook()

    def hosted() -> None:
        try:
            run()
        finally:
            with _lock:
                _hosts.pop(thread, None)

    thread = threading.Thread(target=hosted, name=name, daemon=True)
    with _lock:
        _hosts[thread] = "serving"
    thread.start()
    return thread


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

    who = _who(name)

    def run() -> None:
        code, error = 0, None
        try:
            interp.exec(_SHARD_MAIN)
        except api.ExecutionFailed as exc:
            code, error = 1, _one_line(exc)
        except BaseException as exc:  # noqa: BLE001 - reported through on_end
            code, error = 1, f"{type(exc).__name__}: {exc}"
        with _lock:
            _hosts[threading.current_thread()] = "ending"
        try:
            on_end(code, error)  # (the shard is done: the supervisor need not wait)
        except RuntimeError:
            pass  # the coordinator's loop is closed: it is exiting, and waits for us
        _finish(interp, who, _END_THREADS)
        handle.interp = None

    handle.thread = _host(run, name)
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
        _finish(interp, "The app's preflight import", _PREFLIGHT_END_THREADS)


def _who(name: str) -> str:
    """A shard as the log names it, from its thread's name ("shardserve-INDEX")."""
    return f"Shard {name.rpartition('-')[2]} [subinterpreter]"


def _one_line(exc: BaseException) -> str:
    info = getattr(exc, "excinfo", None)
    if info is not None:
        return f"{info.type.__name__}: {info.msg}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
