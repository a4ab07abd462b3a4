"""In-place upgrade of the coordinator (``shardserve upgrade``, SIGUSR2), seen from the
coordinator being replaced.

A new coordinator is started from the command line, working directory and
environment this one started with (``remember_startup``), so that it reads
--env-file again and loads whatever shardserve, app and Python are installed at
those paths now.  It is passed every listening socket (handover.py): while it
starts, both coordinators hold them and this one's shards go on serving, so no
connection is refused.  Once its shards are ready it says so on a pipe; only then
does this coordinator drain its own shards and exit (the supervisor's part).  If it
exits first, or is not ready in time, this one goes on serving and says why in one
line.  ``Upgrading`` is the supervisor's side: when, what systemd is told, and
stepping down once the new coordinator serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from ..errors import CommandFailed
from .handles import Phase
from .handover import VARIABLE, encode

logger = logging.getLogger("shardserve.error")

READY_TIMEOUT = 120.0  # for the new coordinator's shards to be ready
EXIT_TIMEOUT = 10.0  # for a new coordinator that failed, or is stopped, to exit

# Passed to this process by systemd or by the coordinator it replaced: the new one gets
# its sockets from us, and the watchdog is the main process's (systemd's MAINPID).
NOT_PASSED_ON = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID", VARIABLE)


@dataclass(frozen=True)
class Startup:
    argv: list[str]
    environ: dict[str, str]
    cwd: str


_startup: Startup | None = None


def remember_startup() -> None:
    """How this process was started, for its successor: called first thing, before
    --env-file is read and systemd's variables are taken."""
    global _startup
    _startup = _current()


def _current() -> Startup:
    return Startup(list(sys.orig_argv), dict(os.environ), os.getcwd())


class UpgradeFailed(CommandFailed):
    """Why there is no new coordinator: one line."""


class Upgrade:
    """One attempt: start the new coordinator and wait until its shards are ready."""

    def __init__(
        self,
        listeners: list[socket.socket],
        group: bool,
        names: list[str],
        metrics: list[socket.socket],
    ) -> None:
        self.listeners = listeners
        self.group = group
        self.names = names
        self.metrics = metrics
        self.proc: subprocess.Popen | None = None
        self.stopping = False

    async def run(self, timeout: float = READY_TIMEOUT) -> int:
        """The new coordinator's pid once it is ready; UpgradeFailed otherwise (it has
        exited by then)."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        try:
            proc = self.proc = self._spawn(write_fd)
        except OSError as exc:
            os.close(read_fd)
            raise UpgradeFailed(f"could not start the new coordinator: {exc}") from None
        finally:
            os.close(write_fd)
        logger.info("Upgrade: started a new coordinator (pid %d).", proc.pid)
        ready: asyncio.Future[bool] = loop.create_future()
        exited: asyncio.Future[None] = loop.create_future()
        pidfd = os.pidfd_open(proc.pid)
        loop.add_reader(read_fd, _read_ready, read_fd, ready)
        loop.add_reader(pidfd, _settle, exited, None)
        try:
            await asyncio.wait([ready, exited], timeout=timeout, return_when="FIRST_COMPLETED")
            if ready.done() and ready.result() and not self.stopping:
                return proc.pid
            timed_out = not ready.done() and not exited.done()
            await self._end(exited)
        finally:
            loop.remove_reader(read_fd)
            loop.remove_reader(pidfd)
            os.close(read_fd)
            os.close(pidfd)
        raise UpgradeFailed(self._reason(timed_out, timeout))

    def abort(self) -> None:
        """This server is stopping: the new coordinator must not outlive it."""
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def _spawn(self, ready_fd: int) -> subprocess.Popen:
        startup = _startup or _current()
        environ = {k: v for k, v in startup.environ.items() if k not in NOT_PASSED_ON}
        listeners = [sock.fileno() for sock in self.listeners]
        metrics = [sock.fileno() for sock in self.metrics]
        environ[VARIABLE] = encode(
            os.getpid(), listeners, self.group, self.names, metrics, ready_fd
        )
        return subprocess.Popen(
            startup.argv,
            env=environ,
            cwd=startup.cwd,
            pass_fds=(*listeners, *metrics, ready_fd),
        )

    async def _end(self, exited: asyncio.Future) -> None:
        """Until the new coordinator has exited: by itself, else stopped, else killed."""
        proc = self.proc
        assert proc is not None
        for action in (None, proc.terminate, proc.kill):
            if action is not None and proc.poll() is None:
                action()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), EXIT_TIMEOUT)
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1)

    def _reason(self, timed_out: bool, timeout: float) -> str:
        proc = self.proc
        assert proc is not None
        who = f"the new coordinator (pid {proc.pid})"
        if self.stopping:
            return f"this server is stopping; {who} was stopped"
        if timed_out:
            return f"{who} was not ready within {timeout:g} s, and was stopped"
        code = proc.returncode
        if code is not None and code < 0:
            return f"{who} was killed by {signal.Signals(-code).name} before it was ready"
        return f"{who} exited with code {code} before it was ready (its error is above)"


def _read_ready(fd: int, ready: asyncio.Future[bool]) -> None:
    try:
        data = os.read(fd, 64)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data.startswith(b"ready"):
        _settle(ready, True)
    elif not data:
        asyncio.get_running_loop().remove_reader(fd)  # (the pipe's end: it exits, or failed)
        _settle(ready, False)


def _settle(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


class Upgrading:
    """The supervisor's part (a mixin of ``Supervisor``): when an upgrade may start,
    what it tells systemd, and how this coordinator steps down."""

    async def _upgrade_command(self) -> dict:
        pid = await self.upgrade()
        return {"upgraded": True, "pid": pid, "previous_pid": os.getpid()}

    async def upgrade(self) -> int:
        """Replace this coordinator (``Upgrade``): a new one from the same command line
        takes the listeners over; once its shards are ready, ours drain and we exit.
        Its pid, or UpgradeFailed (logged; we go on serving)."""
        if self.upgrading is not None or self.phase is not Phase.RUNNING:
            why = "an upgrade is already under way" if self.upgrading else f"it is {self.phase}"
            logger.warning("Upgrade refused: %s.", why)
            raise UpgradeFailed(why)
        names = self.activation.names if self.activation is not None else []
        metrics = self.services.metrics_sockets if self.services is not None else []
        upgrade = Upgrade(self.sockets, not self._shared_listener, names, metrics)
        self.upgrading = upgrade
        try:
            async with self.roll_lock:  # (not beside a rolling restart)
                pid = await self._upgrade(upgrade)
        finally:
            self.upgrading = None
        logger.info(
            "Upgrade complete: coordinator pid %d serves; pid %d drains its shards and exits.",
            pid,
            os.getpid(),
        )
        if self.notifier is not None:
            self.notifier.hand_over(pid, self._status())
        self.handed_over = True
        if self.services is not None:
            await self.services.close_metrics()
        self._begin_stop(handed_over=True)
        return pid

    async def _upgrade(self, upgrade: Upgrade) -> int:
        if self.phase is not Phase.RUNNING:
            raise UpgradeFailed(f"it is {self.phase}")
        if self.notifier is not None:
            self.notifier.reloading("Upgrading the coordinator")
        try:
            return await upgrade.run()
        except UpgradeFailed as exc:
            logger.error("Upgrade failed: %s; pid %d keeps serving.", exc, os.getpid())
            if self.notifier is not None and self.phase is Phase.RUNNING:
                self.notifier.ready(self._status())
            raise

    async def _upgrade_on_signal(self) -> None:
        with contextlib.suppress(UpgradeFailed):  # (logged)
            await self.upgrade()

    def _inherited_metrics(self) -> list:
        """The --metrics listeners our predecessor handed over, if we serve metrics."""
        inherited = self.handover.metrics if self.handover is not None else []
        if self.config.metrics is None:
            for sock in inherited:
                sock.close()
            return []
        return inherited
