"""A shard running in an own-GIL subinterpreter of the coordinator's process.

The coordinator (coord/subinterpreters.py) starts an interpreter in a thread and runs
``main`` there with the shard's Configure already encoded, dups of its listeners, the
shard's end of a doorbell socketpair and the two interpreters queues of its
``QueueChannel``.  What runs is the hosted shard, as in a process shard; uvloop,
httptools and msgspec cannot load here, so ``--loop auto``/``--http auto`` fall back to
stdlib asyncio and the pure-Python parser, and messages use ``JsonCodec``.  Signals
only reach the main interpreter: the coordinator drains this shard through the bell.

Once ``main`` has returned, the coordinator runs ``end_shard_threads`` here before it
finalizes the interpreter: CPython aborts the whole process ("Fatal Python error:
Py_EndInterpreter: not the last thread") if any thread of the interpreter still runs
then, daemon or not, and blocks for ever on a non-daemon one.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

# (The shard itself is imported by ``main``: the preflight's throwaway interpreter
# runs ``end_threads`` alone, and need not load it.)


def main(configure_payload: bytes, listener_fds: str, bell_fd: int, inbox: Any, outbox: Any) -> int:
    """Serve as the shard ``configure_payload`` describes until told to stop; returns
    its exit code (the coordinator learns how it ended from its last messages)."""
    from ..control import QueueChannel, post
    from ..messages import Configure, JsonCodec
    from .hosted import run_hosted_shard

    _act_as_main_thread()
    codec = JsonCodec()
    configure = codec.decode(configure_payload)
    if not isinstance(configure, Configure):
        raise TypeError("expected a Configure message")
    bell = socket.socket(fileno=bell_fd)
    sockets = [socket.socket(fileno=int(fd)) for fd in listener_fds.split(",")]
    channels: list[QueueChannel] = []

    def open_channel(loop, on_message, on_closed, on_error) -> QueueChannel:
        channel = QueueChannel(inbox, outbox, bell, codec, on_message, on_closed, on_error, loop)
        channels.append(channel)
        return channel

    def send_last(message) -> None:
        if bell.fileno() >= 0:
            try:
                post(outbox, bell, codec.encode(message))
            except OSError:
                pass

    try:
        return run_hosted_shard(configure, sockets, open_channel, send_last, mode="subinterpreter")
    finally:
        for channel in channels:
            channel.close()
        bell.close()


def _act_as_main_thread() -> None:
    """Threads the app starts from here default to non-daemon, as from a process's
    main thread.  No ``Thread`` started this one, so ``threading`` sees a dummy,
    which counts as a daemon wherever daemon threads are allowed: every thread
    started without ``daemon=`` would be one (a private attribute: the public
    setter refuses a running thread)."""
    current = threading.current_thread()
    if isinstance(current, getattr(threading, "_DummyThread", ())):
        current._daemonic = False


# After SystemExit is raised in them, how long threads get to unwind.
UNWIND_SECONDS = 2.0
# How long non-daemon threads are waited for when --timeout-graceful-shutdown is unset
# (unlike a request, a thread cannot be cut short: a stop must end).
DEFAULT_THREAD_GRACE = 30.0


class ThreadsStopped(Exception):
    """Threads that did not end in time were ended with SystemExit: the interpreter
    can be finalized (the message says which, for the coordinator's log)."""


class ThreadsLeft(Exception):
    """Threads still run after everything: the interpreter must not be finalized."""


def end_shard_threads(configure_payload: bytes) -> None:
    """``end_threads`` for a shard whose ``main`` has returned, within its
    --timeout-graceful-shutdown."""
    from ..messages import JsonCodec

    configure = JsonCodec().decode(configure_payload)
    grace = configure.config.get("timeout_graceful_shutdown")
    _keep_this_thread_known()
    end_threads(DEFAULT_THREAD_GRACE if grace is None else grace)


def _keep_this_thread_known() -> None:
    """Keep this thread registered with ``threading`` through the interpreter's
    finalization (which runs on this thread, in a new thread state).

    No ``Thread`` started this one, so ``threading`` knows it as a dummy, which it
    forgets when a thread state's locals go (each ``exec`` has its own).  During
    finalization, concurrent.futures' exit hook joins its finished workers, and
    ``join()`` asks ``current_thread()``: a new dummy is made then, whose clean-up
    runs after the module's globals are gone and prints "Exception ignored in:
    _DeleteDummyThreadOnDel.__del__ ... TypeError" (3.13; seen with Channels).  So
    the dummy of now stays registered, without that clean-up (private names, read
    defensively)."""
    dummy = threading.current_thread()
    info = getattr(threading, "_thread_local_info", None)
    active = getattr(threading, "_active", None)
    lock = getattr(threading, "_active_limbo_lock", None)
    if info is None or active is None or lock is None:
        return
    if hasattr(info, "_track_dummy_thread_ref"):
        del info._track_dummy_thread_ref  # (its clean-up runs now: unregisters it)
    with lock:
        active[threading.get_ident()] = dummy


def end_threads(grace: float, report_overdue: bool = True) -> None:
    """End every thread this interpreter started, as a process's exit would, but
    bounded: threading's exit hooks run (they let concurrent.futures' idle workers
    go, asgiref's among them), non-daemon threads get ``grace`` seconds, then
    SystemExit is raised in daemon threads and in those still running (their
    ``finally`` blocks run; a daemon thread at a process's exit just stops).

    Raises ThreadsStopped if non-daemon threads had to be ended so (and
    ``report_overdue``), ThreadsLeft if a thread survives even that (blocked in C,
    or catching SystemExit)."""
    start = time.monotonic()
    hooks = threading.Thread(target=_run_exit_hooks, name="shardserve-exit-hooks", daemon=True)
    hooks.start()
    _join([hooks, *(t for t in _threads() if not t.daemon)], start + grace)
    overdue = [t for t in _threads() if not t.daemon and t is not hooks]
    ending = _threads()
    for thread in ending:
        _raise_in(thread, SystemExit)
    _join(ending, time.monotonic() + UNWIND_SECONDS)
    left = _threads()
    if left or not _no_threads_by(time.monotonic() + UNWIND_SECONDS):
        names = ", ".join(_describe(t) for t in left) or "threads not started by threading"
        raise ThreadsLeft(
            f"{names} still running {time.monotonic() - start:.1f} s after the shard stopped, "
            "even after SystemExit"
        )
    if overdue and report_overdue:
        names = ", ".join(_describe(t) for t in overdue)
        raise ThreadsStopped(
            f"{names} still running {grace:g} s after the shard stopped "
            "(--timeout-graceful-shutdown): ended with SystemExit"
        )


def _threads() -> list[threading.Thread]:
    """This interpreter's live threads but the current one (in a subinterpreter,
    ``main_thread()`` is the process's, and dummies stand for threads that no
    ``Thread`` started: neither can be joined)."""
    skip = (threading.current_thread(), threading.main_thread())
    dummy = getattr(threading, "_DummyThread", ())
    return [
        t
        for t in threading.enumerate()
        if t not in skip and not isinstance(t, dummy) and t.is_alive()
    ]


def _run_exit_hooks() -> None:
    # What threading._shutdown() runs before it joins threads (a private list, the
    # same on 3.13 and 3.14; the interpreter's finalization runs it again, harmlessly).
    for hook in reversed(getattr(threading, "_threading_atexits", [])):
        hook()


def _join(threads: list[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def _raise_in(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    """Raise ``exc_type`` in ``thread`` at its next Python instruction."""
    try:
        import ctypes
    except ImportError:  # (then the thread is reported as left)
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type)
    )


def _no_threads_by(deadline: float) -> bool:
    """Whether every thread the ``_thread`` module started here has ended (the count
    the interpreter's finalization depends on), waiting until ``deadline``."""
    import _thread

    while _thread._count() > 0:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _describe(thread: threading.Thread) -> str:
    return f"thread {thread.name!r} ({'daemon' if thread.daemon else 'not a daemon'})"
