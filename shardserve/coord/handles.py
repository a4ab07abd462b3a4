"""What the supervisor holds for each shard: a slot, and a handle per generation (and
the server's own phase).

A *slot* is a shard's place (its index, listeners and CPUs); each time a shard is
started in it, a new *generation* runs, seen through a ``ShardHandle``.  One
interface, two kinds: ``ProcessHandle`` (a process forked by the template, which can
be killed) and ``InterpreterHandle`` (a subinterpreter on a thread of this process,
which can only be asked to stop).  The supervisor never asks which kind it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..messages import Fatal, Stats, Stop
from .policies import RestartPolicy, RssWatch


class Status(enum.StrEnum):
    """Where a generation is in its life (`shardserve status` shows these words)."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"  # told to finish its requests and exit
    UNRESPONSIVE = "unresponsive"  # no heartbeat: being killed
    EXITED = "exited"


class Phase(enum.StrEnum):
    """The server's phase (`shardserve status` shows these words)."""

    STARTING = "starting"  # (with --reload, also: waiting for code that imports)
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass(eq=False)
class Slot:
    """A shard's place: its index, its listeners and CPUs, and what runs there now."""

    index: int
    listeners: list[socket.socket]
    cpus: tuple[int, ...] | None
    mode: str = "process"
    generation: int = 0
    current: ShardHandle | None = None
    restarts: RestartPolicy = field(default_factory=RestartPolicy)
    busy: bool = False  # a replacement or a restart is under way: it decides what runs


class ShardHandle:
    """One generation of one shard."""

    mode: ClassVar[str]
    killable: ClassVar[bool]  # kill() ends it for sure (a process), or only asks

    def __init__(self, slot: Slot, generation: int, pid: int) -> None:
        loop = asyncio.get_running_loop()
        self.slot = slot
        self.index = slot.index
        self.generation = generation
        self.pid = pid
        self.channel: Any = None  # control.Channel or control.QueueChannel
        self.status = Status.STARTING
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self.last_beat = self.started
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.expected_exit = False  # stopped or replaced on purpose: not a crash
        self.ended = False  # gone: from now on its pid may belong to someone else
        self.fatal: Fatal | None = None
        self.stats: Stats | None = None
        self.kill_reason = ""
        self.rss = RssWatch()

    def send(self, message: Any, fds: list[int] | None = None) -> None:
        if self.channel is not None:
            self.channel.send(message, fds=fds)

    def kill(self, reason: str) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def could_not_start(self, error: str) -> ShardHandle:
        """Mark a generation that never ran (no fork, no interpreter)."""
        self.fatal = Fatal(self.index, self.generation, error, True)
        self.status = Status.EXITED
        self.exited.set_result(1)
        self.ready.set_result(False)
        return self

    def error(self, code: int | None = None) -> str:
        """Why it ended, in words: its own error, a signal, or an exit code."""
        if self.fatal is not None:
            return self.fatal.error
        if code is None and self.exited.done():
            code = self.exited.result()
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def restart_cause(self) -> str:
        """Why it ended, as one of a few fixed words fit for a metric label."""
        reason = self.kill_reason
        if reason.startswith("no heartbeat"):
            return "heartbeat"
        if reason == "malformed control message":
            return "protocol"
        if reason:
            return "killed"
        if self.fatal is not None:
            return "error"
        code = self.exited.result() if self.exited.done() else None
        return "signal" if code is not None and code < 0 else "exit"


class ProcessHandle(ShardHandle):
    """A process shard, forked by the template (coord/launcher.py)."""

    mode = "process"
    killable = True

    def __init__(self, slot: Slot, generation: int) -> None:
        super().__init__(slot, generation, pid=0)
        self.pidfd = -1

    def kill(self, reason: str) -> None:
        if self.pid and not self.ended:
            self.kill_reason = reason
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def describe(self) -> str:
        return f"shard {self.index} [{self.pid}]"


class InterpreterHandle(ShardHandle):
    """A subinterpreter shard: a thread of this process running its own interpreter."""

    mode = "subinterpreter"
    killable = False

    def __init__(self, slot: Slot, generation: int) -> None:
        super().__init__(slot, generation, pid=os.getpid())
        self.interpreter: Any = None  # coord.subinterpreters.RunningInterpreter

    def kill(self, reason: str) -> None:
        # A thread cannot be killed: ask its loop to stop at once.  One that is stuck
        # stays stuck (and is reported by whoever waits for it).
        if not self.ended:
            self.kill_reason = reason
            self.send(Stop())

    def describe(self) -> str:
        return f"shard {self.index} [subinterpreter]"
