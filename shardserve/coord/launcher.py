"""Starting shards, and hearing when they end: one place for both kinds.

Process shards are forked by the template process (coord/template.py), which never
imports the app; this module starts the template (again, if it dies), asks it for a
fork per shard with the shard's control socket and listeners, and watches each
child's exit through a pidfd.  Subinterpreter shards are started on a thread of this
process (coord/subinterpreters.py).  Either way ``launch`` returns a ``ShardHandle``
with its control channel open and its Configure sent, and ``on_ended(handle, code)``
is called once when it has gone (after its last words are read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from ..control import Channel, QueueChannel
from ..messages import Configure, Fatal, MsgspecCodec, Spawn, Spawned
from .handles import InterpreterHandle, ProcessHandle, ShardHandle, Slot
from .tasks import TaskSet

logger = logging.getLogger("shardserve.error")

FORK_TIMEOUT = 30.0


class Launcher:
    def __init__(
        self,
        codec: MsgspecCodec,
        tasks: TaskSet,
        on_message: Callable[[ShardHandle, Any], None],
        on_bad_message: Callable[[ShardHandle, Exception], None],
        on_ended: Callable[[ShardHandle, int], None],
    ) -> None:
        self.codec = codec
        self.tasks = tasks
        self.on_message = on_message
        self.on_bad_message = on_bad_message
        self.on_ended = on_ended
        self.template: subprocess.Popen | None = None
        self.template_channel: Channel | None = None
        self.spawn_waiters: deque[asyncio.Future[Spawned]] = deque()
        self.closing = False  # the server is stopping: a template that exits stays gone

    async def launch(self, slot: Slot, configure: Configure) -> ShardHandle:
        if slot.mode == "subinterpreter":
            return self._launch_interpreter(slot, configure)
        return await self._launch_process(slot, configure)

    # Process shards -------------------------------------------------------------------

    async def start_template(self) -> None:
        """Start the process that forks shards (before any subinterpreter exists: a
        fork from a process with subinterpreters aborts on Python 3.13)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.template = subprocess.Popen(
            [sys.executable, "-m", "shardserve.coord.template", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self.template_channel = Channel(
            ours,
            self.codec,
            self._on_template_message,
            self._on_template_closed,
            lambda exc: logger.error("Template process sent a bad message: %s", exc),
        )

    def _on_template_message(self, message: Any) -> None:
        if isinstance(message, Spawned) and self.spawn_waiters:
            waiter = self.spawn_waiters.popleft()
            if not waiter.done():
                waiter.set_result(message)

    def _on_template_closed(self) -> None:
        while self.spawn_waiters:
            waiter = self.spawn_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(OSError("the template process exited"))
        if not self.closing:
            logger.error("The template process exited; starting a new one.")
            self.tasks.spawn(self.start_template(), "start the template")

    async def _launch_process(self, slot: Slot, configure: Configure) -> ShardHandle:
        handle = ProcessHandle(slot, configure.generation)
        if self.template_channel is None:
            return handle.could_not_start("could not fork: no template process")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            waiter = asyncio.get_running_loop().create_future()
            self.spawn_waiters.append(waiter)
            self.template_channel.send(
                Spawn(slot.index, handle.generation, len(slot.listeners)),
                fds=[theirs.fileno(), *(sock.fileno() for sock in slot.listeners)],
            )
            spawned = await asyncio.wait_for(waiter, FORK_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            ours.close()
            return handle.could_not_start(f"could not fork: {exc}")
        finally:
            theirs.close()
        if spawned.pid <= 0:
            ours.close()
            return handle.could_not_start("the template could not fork")
        handle.pid = spawned.pid
        self._watch_exit(handle)
        handle.channel = Channel(
            ours,
            self.codec,
            lambda message: self.on_message(handle, message),
            lambda: None,
            lambda exc: self.on_bad_message(handle, exc),
        )
        handle.send(configure)
        return handle

    def _watch_exit(self, handle: ProcessHandle) -> None:
        try:
            handle.pidfd = os.pidfd_open(handle.pid)
        except ProcessLookupError:
            self._reaped(handle)
            return
        asyncio.get_running_loop().add_reader(handle.pidfd, self._reaped, handle)

    def _reaped(self, handle: ProcessHandle) -> None:
        handle.ended = True  # from now on its pid may belong to someone else
        if handle.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(handle.pidfd)
            os.close(handle.pidfd)
            handle.pidfd = -1
        code = 1
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(handle.pid, os.WNOHANG)
            code = os.waitstatus_to_exitcode(status)
        if handle.channel is not None:
            handle.channel.read_remaining()  # its last words: final Stats, or Fatal
            handle.channel.close()
        self.on_ended(handle, code)

    # Subinterpreter shards ------------------------------------------------------------

    def _launch_interpreter(self, slot: Slot, configure: Configure) -> ShardHandle:
        from .subinterpreters import start_interpreter_shard

        handle = InterpreterHandle(slot, configure.generation)
        loop = asyncio.get_running_loop()

        def on_end(code: int, error: str | None) -> None:  # (on the shard's thread)
            loop.call_soon_threadsafe(self._interpreter_ended, handle, code, error)

        try:
            handle.interpreter, to_shard, to_us, bell = start_interpreter_shard(
                self.codec.encode(configure), slot.listeners, on_end, f"shardserve-{slot.index}"
            )
        except Exception as exc:  # noqa: BLE001 - reported as this shard's failure
            return handle.could_not_start(f"could not start a subinterpreter: {exc}")
        handle.channel = QueueChannel(
            to_us,
            to_shard,
            bell,
            self.codec,
            lambda message: self.on_message(handle, message),
            lambda: None,
            lambda exc: self.on_bad_message(handle, exc),
        )
        return handle

    def _interpreter_ended(self, handle: InterpreterHandle, code: int, error: str | None) -> None:
        handle.ended = True
        if handle.channel is not None:
            handle.channel.read_remaining()  # its last words: final Stats, or Fatal
            handle.channel.close()
        if handle.interpreter is not None:
            handle.interpreter.close()
        if error is not None and handle.fatal is None:
            handle.fatal = Fatal(handle.index, handle.generation, error, handle.ready_at is None)
        if handle.fatal is not None:
            code = code or handle.fatal.exit_code
        self.on_ended(handle, code)

    # Closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """The template exits once its channel closes; wait for it (kill if stuck)."""
        self.closing = True
        if self.template_channel is not None:
            self.template_channel.close()
        if self.template is not None:
            try:
                self.template.wait(5)
            except subprocess.TimeoutExpired:
                self.template.kill()
                self.template.wait()
