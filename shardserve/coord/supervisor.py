"""Process shards under supervision: start, watch, replace, roll, resize, stop.

The supervisor owns every listening socket for its whole life (so a shard that dies
loses only the connections it had accepted; those queued wait for its replacement),
forks shards through the template process, and speaks to each over its control
channel.  Where shards are restarted: ``_on_exit`` (crashes, with backoff),
``_replace`` (rolling restart, --limit-max-requests, --limit-max-rss from
``_check_memory``; heartbeat watchdog kills are crashes).  Signals: INT/TERM stop,
HUP rolls, TTIN/TTOU add or remove a shard; --reload rolls on a source change
(reloader.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import deque

from ..config import Config
from ..control import Channel, QueueChannel
from ..errors import ListenError, StartupError
from ..messages import (
    Adopt,
    Configure,
    Drain,
    Fatal,
    Heartbeat,
    MessageError,
    MsgspecCodec,
    Ready,
    Retire,
    Spawn,
    Spawned,
    Stats,
    Stop,
)
from .control_socket import ControlSocket, status_report
from .listeners import add_listener, bind_listeners, describe
from .metrics import MetricsCollector, MetricsServer
from .placement import Placement
from .reloader import Reloader
from .signals import StopSignals
from .stats import StatsBook
from .steering import attach_cpu_steering

logger = logging.getLogger("shardserve.error")

# A shard that dies this soon after starting counts towards the crash loop.
STABLE_SECONDS = 10.0
MAX_CONSECUTIVE_FAILURES = 5
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
EXIT_MARGIN = 5.0  # beyond the graceful timeout, before a draining shard is killed
REPLACEMENT_START_TIMEOUT = 120.0  # a successor not ready by then is given up
MIB = 2**20  # --limit-max-rss counts MB as `shardserve status` shows them: MiB
RSS_SAMPLES = 3  # consecutive Stats (one a second) above --limit-max-rss: replace the shard
RSS_RETRY_SECONDS = 30.0  # after a memory replacement failed to start, before trying again


class ShardFailed(StartupError):
    """A shard could not start, or keeps failing: the message is the shard's error."""


class ShardProcess:
    """One generation of one shard: a forked process and its control channel."""

    def __init__(self, slot: Slot, generation: int) -> None:
        loop = asyncio.get_running_loop()
        self.slot = slot
        self.index = slot.index
        self.generation = generation
        self.pid = 0
        self.pidfd = -1
        self.channel: Channel | None = None
        self.state = "starting"
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self.last_beat = self.started
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.expected_exit = False
        self.reaped = False
        self.fatal: Fatal | None = None
        self.stats: Stats | None = None
        self.kill_reason = ""
        self.rss_over = 0  # consecutive Stats with rss_bytes above --limit-max-rss
        self.rss_replacing = False  # a replacement for memory is under way
        self.rss_retry_at = 0.0  # (monotonic) not before: the last one failed to start

    def send(self, message) -> None:
        if self.channel is not None:
            self.channel.send(message)

    def kill(self, reason: str) -> None:
        if self.pid and not self.reaped:
            self.kill_reason = reason
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def describe(self) -> str:
        return f"shard {self.index} [{self.pid}]"


class ShardInterpreter(ShardProcess):
    """One generation of a subinterpreter shard: a thread of this process."""

    def __init__(self, slot: Slot, generation: int) -> None:
        super().__init__(slot, generation)
        self.pid = os.getpid()
        self.handle = None  # coord.subinterpreters.InterpreterShard

    def kill(self, reason: str) -> None:
        # A thread cannot be killed: ask its loop to stop at once.  One that is stuck
        # stays stuck (and is logged as such by whoever waits for it).
        if not self.reaped:
            self.kill_reason = reason
            self.send(Stop())

    def describe(self) -> str:
        return f"shard {self.index} [subinterpreter]"


@dataclasses.dataclass
class Slot:
    """A shard's place: its index, its listeners and CPUs, and its current process."""

    index: int
    listeners: list[socket.socket]
    cpus: tuple[int, ...] | None
    mode: str = "process"
    generation: int = 0
    current: ShardProcess | None = None
    failures: int = 0
    busy: bool = False  # a replacement or a restart is under way: it decides what runs


class Supervisor:
    def __init__(self, config: Config, placement: Placement, reason: str) -> None:
        self.config = config
        self.placement = placement
        self.reason = reason
        self.codec = MsgspecCodec()
        self.slots: list[Slot] = []
        self.orphans: list[socket.socket] = []  # listeners of removed shards, kept open
        self.sockets: list[socket.socket] = []
        self.template: subprocess.Popen | None = None
        self.template_channel: Channel | None = None
        self.spawn_waiters: deque[asyncio.Future[Spawned]] = deque()
        self.stopping = False
        self.running = False
        self.stopped: asyncio.Event | None = None
        self.exit_code = 0
        self.failure: str | None = None
        self.failure_code = 1
        self.rolling = False
        self.book = StatsBook()
        self.metrics: MetricsServer | None = None
        self.control: ControlSocket | None = None
        self.reloader: Reloader | None = None
        self.source_changed: asyncio.Event | None = None  # --reload: try starting again
        self.config_dict = dataclasses.asdict(config)

    # Running -----------------------------------------------------------------------------

    def run(self) -> int:
        return asyncio.run(self.main())

    async def main(self) -> int:
        self.stopped = asyncio.Event()
        _become_child_subreaper()
        self._bind()
        try:
            if any(slot.mode == "subinterpreter" for slot in self.slots):
                from .subinterpreters import preflight

                config = self.config
                preflight(config.app, config.factory, config.app_dir)
            if any(slot.mode == "process" for slot in self.slots):
                await self._start_template()  # before any interpreter: see BRIEF
            unmeasured = [slot.index for slot in self.slots if slot.mode == "subinterpreter"]
            if self.config.limit_max_rss is not None and unmeasured:
                logger.warning(
                    "--limit-max-rss does not apply to subinterpreter shards (%s): they "
                    "share the coordinator's process.",
                    ", ".join(map(str, unmeasured)),
                )
            self._install_signal_handlers()
            if self.config.metrics is not None:
                self.metrics = MetricsServer(
                    self.config.metrics,
                    MetricsCollector(self.book, lambda: len(self.slots)),
                    healthy=self._all_ready,
                    ready=lambda: self.running and not self.stopping,
                )
                try:
                    await self.metrics.start()
                except OSError as exc:
                    self.metrics = None
                    raise ListenError(
                        f"--metrics {self.config.metrics}: {exc.strerror or exc}"
                    ) from None
            self.control = ControlSocket(
                self.config.control_socket,
                {"status": self._status, "reload": self._reload, "stop": self._stop},
            )
            try:
                await self.control.start()
            except OSError as exc:
                path, self.control = self.control.path, None
                if self.config.control_socket is not None:
                    raise ListenError(f"--control-socket {path}: {exc}") from None
                logger.warning("No control socket (%s): %s", path, exc)
            if self.config.reload:
                self.source_changed = asyncio.Event()
                self.reloader = Reloader(self.config, self._on_source_change)
                self.reloader.start()
            while not self.stopping and await self._start_all():
                await self.source_changed.wait()  # (--reload: after a fix, or a stop)
                self.source_changed.clear()
            if not self.stopping:
                self.running = True
                watchdog = asyncio.create_task(self._watchdog())
                await self.stopped.wait()
                watchdog.cancel()
            await self._shutdown()
        finally:
            if self.reloader is not None:
                await self.reloader.close()
            if self.metrics is not None:
                await self.metrics.close()
            if self.control is not None:
                await self.control.close()
            self._close()
        if self.failure is not None:
            error = ShardFailed(self.failure)
            error.exit_code = self.failure_code
            raise error
        return self.exit_code

    def _bind(self) -> None:
        config = self.config
        count = len(self.placement)
        shared = config.uds is not None or config.fd is not None
        self.sockets = bind_listeners(config, count=1 if shared else count)
        if config.reuseport_steering == "cpu":
            attach_cpu_steering(self.sockets[0])
        for spec in self.placement.shards:
            listeners = [self.sockets[0]] if shared else [self.sockets[spec.index]]
            self.slots.append(Slot(spec.index, listeners, spec.cpus, spec.mode))
        self.where = describe(self.sockets[0], config.is_ssl)

    async def _start_all(self) -> bool:
        """Start every shard; True if one failed to start and --reload waits for a fix."""
        logger.info(
            "Starting %d shard%s (%s), coordinator pid %d",
            len(self.slots),
            "s" if len(self.slots) != 1 else "",
            self.reason,
            os.getpid(),
        )
        procs = []
        for slot in self.slots:
            proc = await self._spawn(slot)
            slot.current = proc
            procs.append(proc)
        pending = {asyncio.ensure_future(_first(proc.ready, proc.exited)) for proc in procs}
        failed = None
        while pending and not self.stopping and failed is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            failed = next((p for p in procs if p.exited.done() and p.state != "ready"), None)
        for task in pending:
            task.cancel()
        if failed is not None:
            message = f"shard {failed.index} failed to start: {_error_of(failed)}"
            if not self.config.reload:
                self._fail(message, failed)
                return False
            logger.error("%s", message)
            logger.info("Waiting for a change to the source to start again (--reload).")
            await self._give_up_start(procs)
            return True
        if not self.stopping:
            logger.info("shardserve running on %s (Press CTRL+C to quit)", self.where)
        return False

    async def _give_up_start(self, procs: list[ShardProcess]) -> None:
        """Stop what did start, so that the next try starts every shard afresh."""
        for proc in procs:
            proc.expected_exit = True
            if not proc.exited.done():
                proc.kill("another shard failed to start")
        for proc in procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.exited), EXIT_MARGIN)
        for slot in self.slots:
            slot.current = None
            slot.failures = 0

    async def _on_source_change(self) -> None:
        """--reload, once the changed app imports: roll the shards onto it."""
        if not self.running:
            if self.source_changed is not None:
                self.source_changed.set()  # (nothing serves yet: start again)
            return
        while self.rolling and not self.stopping:
            await asyncio.sleep(0.05)  # (a SIGHUP's roll may have loaded older code)
        if not self.stopping:
            await self.rolling_restart(together=True)

    def _status(self) -> dict:
        return status_report(self)

    def _reload(self) -> dict:
        if not self.running or self.stopping:
            raise RuntimeError("not running")
        self._spawn_task(self.rolling_restart)
        return {"reloading": True}

    def _stop(self) -> dict:
        logger.info("Shutting down (requested on the control socket)")
        asyncio.get_running_loop().call_soon(self._begin_stop)
        return {"stopping": True}

    def _all_ready(self) -> bool:
        """For /healthz: serving, and every shard's current generation ready."""
        return self.running and all(
            slot.current is not None and slot.current.state == "ready" for slot in self.slots
        )

    def _fail(self, message: str, proc: ShardProcess | None = None) -> None:
        """Stop the whole server, reporting ``message`` as its one-line error."""
        if self.failure is None:
            self.failure = message
            if proc is not None and proc.fatal is not None:
                self.failure_code = proc.fatal.exit_code
        self._begin_stop(force=True)

    # Template ---------------------------------------------------------------------------

    async def _start_template(self) -> None:
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

    def _on_template_message(self, message) -> None:
        if isinstance(message, Spawned) and self.spawn_waiters:
            waiter = self.spawn_waiters.popleft()
            if not waiter.done():
                waiter.set_result(message)

    def _on_template_closed(self) -> None:
        while self.spawn_waiters:
            waiter = self.spawn_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(OSError("the template process exited"))
        if not self.stopping:
            logger.error("The template process exited; starting a new one.")
            asyncio.ensure_future(self._start_template())

    # Spawning --------------------------------------------------------------------------

    def _configure(self, slot: Slot, proc: ShardProcess) -> Configure:
        config = self.config
        max_requests = config.limit_max_requests
        if max_requests is not None and config.limit_max_requests_jitter:
            max_requests += random.randint(0, config.limit_max_requests_jitter)
        return Configure(
            index=slot.index,
            generation=proc.generation,
            config=self.config_dict,
            cpus=list(slot.cpus) if slot.cpus else None,
            max_requests=max_requests,
        )

    def _could_not_start(self, proc: ShardProcess, error: str) -> ShardProcess:
        proc.fatal = Fatal(proc.index, proc.generation, error, True)
        proc.exited.set_result(1)
        proc.ready.set_result(False)
        return proc

    def _spawn_interpreter(self, slot: Slot) -> ShardProcess:
        from .subinterpreters import start_interpreter_shard

        proc = ShardInterpreter(slot, slot.generation)
        loop = asyncio.get_running_loop()

        def on_end(code: int, error: str | None) -> None:
            loop.call_soon_threadsafe(self._interpreter_ended, proc, code, error)

        try:
            proc.handle, to_shard, to_us, bell = start_interpreter_shard(
                self.codec.encode(self._configure(slot, proc)),
                slot.listeners,
                on_end,
                f"shardserve-{slot.index}",
            )
        except Exception as exc:  # noqa: BLE001 - reported as this shard's failure
            return self._could_not_start(proc, f"could not start a subinterpreter: {exc}")
        proc.channel = QueueChannel(
            to_us,
            to_shard,
            bell,
            self.codec,
            lambda message: self._on_message(proc, message),
            lambda: None,
            lambda exc: self._on_bad_message(proc, exc),
        )
        return proc

    def _interpreter_ended(self, proc: ShardInterpreter, code: int, error: str | None) -> None:
        proc.reaped = True
        if proc.channel is not None:
            proc.channel.read_remaining()  # its last words: final Stats, or Fatal
            proc.channel.close()
        if proc.handle is not None:
            proc.handle.close()
        if error is not None and proc.fatal is None:
            proc.fatal = Fatal(proc.index, proc.generation, error, proc.ready_at is None)
        if proc.fatal is not None:
            code = code or proc.fatal.exit_code
        self._ended(proc, code)

    async def _spawn(self, slot: Slot) -> ShardProcess:
        slot.generation += 1
        if slot.mode == "subinterpreter":
            return self._spawn_interpreter(slot)
        proc = ShardProcess(slot, slot.generation)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            waiter = asyncio.get_running_loop().create_future()
            self.spawn_waiters.append(waiter)
            self.template_channel.send(
                Spawn(slot.index, proc.generation, len(slot.listeners)),
                fds=[theirs.fileno(), *(sock.fileno() for sock in slot.listeners)],
            )
            spawned = await asyncio.wait_for(waiter, 30)
        except (TimeoutError, OSError) as exc:
            ours.close()
            return self._could_not_start(proc, f"could not fork: {exc}")
        finally:
            theirs.close()
        if spawned.pid <= 0:
            ours.close()
            return self._could_not_start(proc, "the template could not fork")
        proc.pid = spawned.pid
        self._watch_exit(proc)
        proc.channel = Channel(
            ours,
            self.codec,
            lambda message: self._on_message(proc, message),
            lambda: None,
            lambda exc: self._on_bad_message(proc, exc),
        )
        proc.send(self._configure(slot, proc))
        return proc

    def _watch_exit(self, proc: ShardProcess) -> None:
        try:
            proc.pidfd = os.pidfd_open(proc.pid)
        except ProcessLookupError:
            self._reaped(proc)
            return
        asyncio.get_running_loop().add_reader(proc.pidfd, self._reaped, proc)

    def _reaped(self, proc: ShardProcess) -> None:
        proc.reaped = True  # from now on its pid may belong to someone else
        if proc.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(proc.pidfd)
            os.close(proc.pidfd)
            proc.pidfd = -1
        code = 1
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(proc.pid, os.WNOHANG)
            code = os.waitstatus_to_exitcode(status)
        if proc.channel is not None:
            proc.channel.read_remaining()  # its last words: final Stats, or Fatal
            proc.channel.close()
        self._ended(proc, code)

    def _ended(self, proc: ShardProcess, code: int) -> None:
        proc.state = "exited"
        self.book.ended(proc.index, proc.generation, proc.stats)
        if not proc.ready.done():
            proc.ready.set_result(False)
        if not proc.exited.done():
            proc.exited.set_result(code)
        self._on_exit(proc, code)

    # Messages ----------------------------------------------------------------------------

    def _on_message(self, proc: ShardProcess, message) -> None:
        if (
            getattr(message, "index", None) != proc.index
            or getattr(message, "generation", None) != proc.generation
        ):
            self._on_bad_message(proc, MessageError(f"unexpected {message!r}"))
            return
        now = time.monotonic()
        if isinstance(message, Heartbeat):
            proc.last_beat = now
        elif isinstance(message, Stats):
            try:
                self.book.record(message)
            except MessageError as exc:
                self._on_bad_message(proc, exc)
                return
            proc.stats = message
            proc.last_beat = now
            if self.config.limit_max_rss is not None:
                self._check_memory(proc, message, now)
        elif isinstance(message, Ready):
            if message.pid != proc.pid:
                self._on_bad_message(proc, MessageError(f"ready from pid {message.pid}"))
                return
            proc.state = "ready"
            proc.ready_at = proc.last_beat = now
            if not proc.ready.done():
                proc.ready.set_result(True)
        elif isinstance(message, Retire):
            if proc.slot.current is proc and not self.stopping:
                logger.info("Replacing %s: it %s.", proc.describe(), message.reason)
                asyncio.ensure_future(self._replace(proc.slot))
        elif isinstance(message, Fatal):
            proc.fatal = message
        else:
            self._on_bad_message(proc, MessageError(f"a shard may not send {message.TAG!r}"))

    def _check_memory(self, proc: ShardProcess, stats: Stats, now: float) -> None:
        """--limit-max-rss: replace a shard whose RSS stays above the limit for
        RSS_SAMPLES consecutive Stats (as a rolling restart replaces it)."""
        limit = self.config.limit_max_rss
        if stats.rss_bytes is None:  # (a subinterpreter shard: no memory of its own)
            return
        if stats.rss_bytes <= limit * MIB:
            proc.rss_over = 0
            return
        proc.rss_over += 1
        slot = proc.slot
        if (
            proc.rss_over < RSS_SAMPLES
            or proc.rss_replacing
            or now < proc.rss_retry_at
            or proc.state != "ready"
            or slot.current is not proc
            or slot.busy  # (being restarted or rolled: it is replaced anyway)
            or not self.running
            or self.stopping
        ):
            return
        logger.warning(
            "Replacing %s: RSS %d MB above --limit-max-rss %d MB for %d s.",
            proc.describe(),
            math.ceil(stats.rss_bytes / MIB),
            limit,
            proc.rss_over,
        )
        proc.rss_replacing = True
        asyncio.ensure_future(self._replace_for_memory(slot, proc))

    async def _replace_for_memory(self, slot: Slot, proc: ShardProcess) -> None:
        if await self._replace(slot, cause="memory") or slot.current is not proc:
            return
        proc.rss_replacing = False
        proc.rss_retry_at = time.monotonic() + RSS_RETRY_SECONDS
        if not self.stopping and not proc.exited.done():
            logger.info(
                "%s stays; replacing it again in %.0f s if its RSS is still above the limit.",
                proc.describe(),
                RSS_RETRY_SECONDS,
            )

    def _on_bad_message(self, proc: ShardProcess, exc: Exception) -> None:
        logger.error(
            "%s sent a malformed control message (%s); replacing it.", proc.describe(), exc
        )
        proc.kill("malformed control message")

    # Exits and restarts --------------------------------------------------------------------

    def _on_exit(self, proc: ShardProcess, code: int) -> None:
        slot = proc.slot
        if self.stopping or proc.expected_exit or slot.current is not proc or slot.busy:
            return  # (a replacement under way decides what runs in the slot)
        if not self.running:
            return  # start-up: _start_all reports it
        cause = proc.kill_reason or _error_of(proc, code)
        logger.warning("%s exited unexpectedly (%s); restarting it.", proc.describe(), cause)
        self.book.count_restart(proc.index, _cause_label(proc))
        if proc.ready_at is not None and time.monotonic() - proc.ready_at >= STABLE_SECONDS:
            slot.failures = 0
        slot.failures += 1
        if slot.failures > MAX_CONSECUTIVE_FAILURES:
            self._fail(
                f"shard {slot.index} failed {slot.failures} times in a row; last: {cause}", proc
            )
            return
        asyncio.ensure_future(self._restart(slot, slot.failures))

    async def _restart(self, slot: Slot, failures: int) -> None:
        delay = 0.0 if failures <= 1 else min(BACKOFF_FIRST * 2 ** (failures - 2), BACKOFF_MAX)
        slot.busy = True
        try:
            if delay:
                logger.info("Restarting shard %d in %.1f s.", slot.index, delay)
                await asyncio.sleep(delay)
            if self.stopping or slot not in self.slots:
                return
            proc = await self._spawn(slot)
            slot.current = proc
            if slot not in self.slots:  # removed meanwhile
                await self._drain(proc, close_idle=False)
                return
        finally:
            slot.busy = False
        if proc.exited.done():  # could not even fork, or died at once
            self._on_exit(proc, proc.exited.result())

    async def _replace(self, slot: Slot, cause: str | None = None) -> bool:
        """Start a successor on the same listeners; once it is ready, drain the old one.
        With a ``cause``, the replacement is counted as a restart for that cause."""
        if slot.busy or self.stopping:
            return False
        slot.busy = True
        try:
            old = slot.current
            new = await self._spawn(slot)
            try:
                started = await asyncio.wait_for(
                    _first(new.ready, new.exited), REPLACEMENT_START_TIMEOUT
                )
            except TimeoutError:
                new.kill(f"not ready after {REPLACEMENT_START_TIMEOUT:g} s")
                started = False
            started = started and new.ready.result()
            if slot not in self.slots:  # removed meanwhile (SIGTTOU): nothing to replace
                if started:
                    await self._drain(new, close_idle=False)
                return False
            if not started:
                logger.error(
                    "Shard %d's replacement failed to start (%s); keeping %s.",
                    slot.index,
                    _error_of(new),
                    old.describe() if old else "none",
                )
                new.expected_exit = True
                if old is not None and old.exited.done():
                    self._schedule_restart(slot, old)  # the old one died meanwhile
                return False
            slot.current = new
            if cause is not None:
                self.book.count_restart(slot.index, cause)
            if old is not None and not old.exited.done():
                await self._drain(old, close_idle=False)
            return True
        finally:
            slot.busy = False

    def _schedule_restart(self, slot: Slot, dead: ShardProcess) -> None:
        slot.failures += 1
        if slot.failures > MAX_CONSECUTIVE_FAILURES:
            self._fail(f"shard {slot.index} failed {slot.failures} times in a row", dead)
            return
        asyncio.ensure_future(self._restart(slot, slot.failures))

    async def _drain(self, proc: ShardProcess, close_idle: bool) -> None:
        proc.expected_exit = True
        proc.state = "draining"
        proc.send(Drain(close_idle=close_idle))
        grace = self.config.timeout_graceful_shutdown
        timeout = None if grace is None else grace + EXIT_MARGIN
        try:
            await asyncio.wait_for(asyncio.shield(proc.exited), timeout)
        except TimeoutError:
            logger.warning("%s did not stop in time; killing it.", proc.describe())
            proc.kill("did not drain in time")
            if isinstance(proc, ShardInterpreter):
                try:
                    await asyncio.wait_for(asyncio.shield(proc.exited), EXIT_MARGIN)
                except TimeoutError:
                    logger.error("%s is stuck and cannot be killed; leaving it.", proc.describe())
                return
            await proc.exited

    async def _watchdog(self) -> None:
        limit = self.config.timeout_shard_heartbeat
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            for slot in self.slots:
                proc = slot.current
                if proc is not None and proc.state == "ready" and now - proc.last_beat > limit:
                    logger.error(
                        "%s sent no heartbeat for %.0f s (its event loop is stuck); killing it.",
                        proc.describe(),
                        now - proc.last_beat,
                    )
                    proc.state = "unresponsive"
                    proc.kill(f"no heartbeat for {limit:g} s")

    # Rolling restart and resizing ---------------------------------------------------------

    async def rolling_restart(self, together: bool = False) -> None:
        """Replace every shard, one at a time (or ``together``: --reload, where waiting
        for each in turn would serve old and new code side by side for longer)."""
        if self.rolling:
            logger.info("A rolling restart is already under way.")
            return
        self.rolling = True
        self.book.count_reload()
        logger.info("Rolling restart of %d shards.", len(self.slots))
        try:
            if together:
                slots = [slot for slot in self.slots if not slot.busy]
                replaced = await asyncio.gather(*(self._replace(slot) for slot in slots))
                if all(replaced):
                    logger.info("Rolling restart complete.")
                return
            for slot in list(self.slots):
                if self.stopping:
                    return
                if slot not in self.slots:
                    continue
                if slot.busy:
                    continue  # restarting already: its new process loads the new code
                if not await self._replace(slot):
                    logger.error("Rolling restart stopped at shard %d.", slot.index)
                    return
            logger.info("Rolling restart complete.")
        finally:
            self.rolling = False

    async def add_shard(self) -> None:
        index = len(self.slots)
        cpus = None
        if self.placement.pinned:
            used = {cpu for slot in self.slots for cpu in (slot.cpus or ())}
            free = [cpu for cpu in sorted(os.sched_getaffinity(0)) if cpu not in used]
            if not free:
                logger.warning("No CPU left to pin another shard to; not adding one.")
                return
            cpus = (free[0],)
        if self.config.uds is not None or self.config.fd is not None:
            listeners = [self.sockets[0]]
        elif self.orphans:
            listeners = [self.orphans.pop(0)]
        else:
            listeners = [add_listener(self.sockets[0], self.config.backlog)]
            self.sockets.append(listeners[0])
        slot = Slot(index, listeners, cpus, self.config.shard_mode)
        self.slots.append(slot)
        proc = await self._spawn(slot)
        slot.current = proc
        if await _first(proc.ready, proc.exited) and proc.ready.result():
            logger.info("Added shard %d; %d shards now.", index, len(self.slots))

    async def remove_shard(self) -> None:
        if len(self.slots) <= 1:
            logger.warning("Only one shard left; not removing it.")
            return
        slot = self.slots.pop()
        proc = slot.current
        shared = self.config.uds is not None or self.config.fd is not None
        if not shared:
            # Its listener stays open (closing it would reset the connections queued
            # on it): another shard serves it from now on.
            heir = min(self.slots, key=lambda s: len(s.listeners))
            for sock in slot.listeners:
                heir.listeners.append(sock)
                if heir.current is not None and heir.current.channel is not None:
                    heir.current.channel.send(Adopt(listener=slot.index), fds=[sock.fileno()])
        logger.info("Removing shard %d; %d shards now.", slot.index, len(self.slots))
        if proc is not None:
            await self._drain(proc, close_idle=False)

    # Stopping ------------------------------------------------------------------------------

    def _begin_stop(self, force: bool = False) -> None:
        if not self.stopping:
            self.stopping = True
            if self.source_changed is not None:
                self.source_changed.set()  # (no longer waiting for a fix)
            for slot in self.slots:
                if slot.current is not None:
                    slot.current.expected_exit = True
            asyncio.ensure_future(self._stop_all(force))
        elif force:
            self._force_all()

    async def _stop_all(self, force: bool) -> None:
        if force:
            self._force_all()
        procs = [slot.current for slot in self.slots if slot.current is not None]
        procs = [proc for proc in procs if not proc.exited.done()]
        await asyncio.gather(*(self._drain(proc, close_idle=True) for proc in procs))
        self.stopped.set()

    def _force_all(self) -> None:
        for slot in self.slots:
            proc = slot.current
            if proc is not None and not proc.exited.done():
                proc.send(Stop())
                asyncio.get_running_loop().call_later(1.0, proc.kill, "forced stop")

    async def _shutdown(self) -> None:
        if not self.stopping:
            self._begin_stop()
        await self.stopped.wait()
        book = self.book
        logger.debug("Coordinator totals: %s; restarts %s", book.totals().values, book.restarts)

    def _close(self) -> None:
        if self.template_channel is not None:
            self.template_channel.close()
        if self.template is not None:
            try:
                self.template.wait(5)
            except subprocess.TimeoutExpired:
                self.template.kill()
                self.template.wait()
        for sock in self.sockets + self.orphans:
            sock.close()
        if self.config.uds:
            with contextlib.suppress(OSError):
                os.unlink(self.config.uds)

    # Signals -------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        StopSignals(self._begin_stop, lambda: self._begin_stop(force=True)).install(loop)
        loop.add_signal_handler(signal.SIGHUP, self._spawn_task, self.rolling_restart)
        loop.add_signal_handler(signal.SIGTTIN, self._spawn_task, self.add_shard)
        loop.add_signal_handler(signal.SIGTTOU, self._spawn_task, self.remove_shard)

    def _spawn_task(self, action) -> None:
        if not self.running or self.stopping:
            return
        asyncio.ensure_future(action())


def _cause_label(proc: ShardProcess) -> str:
    """A small, fixed set of causes, fit for a metric label."""
    reason = proc.kill_reason
    if reason.startswith("no heartbeat"):
        return "heartbeat"
    if reason == "malformed control message":
        return "protocol"
    if reason:
        return "killed"
    if proc.fatal is not None:
        return "error"
    code = proc.exited.result() if proc.exited.done() else None
    return "signal" if code is not None and code < 0 else "exit"


async def _first(*futures: asyncio.Future) -> bool:
    """Wait until any of ``futures`` is done; True if the first of them is."""
    await asyncio.wait([asyncio.shield(f) for f in futures], return_when=asyncio.FIRST_COMPLETED)
    return futures[0].done()


def _error_of(proc: ShardProcess, code: int | None = None) -> str:
    if proc.fatal is not None:
        return proc.fatal.error
    if code is None and proc.exited.done():
        code = proc.exited.result()
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _become_child_subreaper() -> None:
    """Orphaned shards (forked by the template) become our children, to wait for."""
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        logger.warning("Could not become a child subreaper; shard exits may be missed.")
