"""Shards under supervision: start, watch, replace, roll, resize, stop.

The supervisor owns the slots and their lifecycle; it does not launch shards
(launcher.py), decide back-off (policies.py) or serve metrics and the control
socket (services.py).  It owns every listening socket for its whole life, so a
shard that dies loses only the connections it had accepted: those queued wait for
its successor, started on the same socket.

Where shards are restarted: ``_on_exit`` (crashes, after the slot's RestartPolicy
back-off; heartbeat-watchdog kills are crashes) and ``_replace`` (a successor first,
then the old one drains: rolling restarts, --limit-max-requests, --limit-max-rss).
Signals: INT/TERM stop, HUP rolls, TTIN/TTOU add or remove a shard (the ``Resizing``
part, resizing.py), USR2 upgrades the coordinator itself (the ``Upgrading`` part,
upgrade.py); --reload rolls on a source change.  Every background task is owned by
``self.tasks``.
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
import time

from ..config import Config
from ..errors import StartupError
from ..messages import (
    Configure,
    Drain,
    Fatal,
    Heartbeat,
    MessageError,
    MsgspecCodec,
    Ready,
    Retire,
    Stats,
    Stop,
)
from .activation import Activation
from .handles import Phase, ShardHandle, Slot, Status
from .handover import Handover
from .launcher import Launcher
from .listeners import bind_listeners, describe
from .notify import Notifier, keep_notifying
from .placement import Placement
from .policies import MIB, MemoryLimit
from .resizing import Resizing
from .services import Services
from .signals import StopSignals
from .snapshot import ServerView, ShardView
from .stats import StatsBook
from .steering import attach_cpu_steering
from .tasks import TaskSet, first_done
from .upgrade import Upgrade, Upgrading

logger = logging.getLogger("shardserve.error")

EXIT_MARGIN = 5.0  # beyond the graceful timeout, before a draining shard is killed
REPLACEMENT_START_TIMEOUT = 120.0  # a successor not ready by then is given up


class ShardFailed(StartupError):
    """A shard could not start, or keeps failing: the message is the shard's error."""


class Supervisor(Resizing, Upgrading):
    def __init__(
        self,
        config: Config,
        placement: Placement,
        reason: str,
        activation: Activation | None = None,
        notifier: Notifier | None = None,
        handover: Handover | None = None,
    ) -> None:
        self.config = config
        self.activation = activation  # sockets passed by systemd or handed over, if any
        self.notifier = notifier  # $NOTIFY_SOCKET (Type=notify), if any
        self.handover = handover  # from the coordinator we replace (an in-place upgrade)
        self.upgrading: Upgrade | None = None  # our own replacement, while it starts
        self.handed_over = False  # it has: we drain and exit
        self.placement = placement
        self.reason = reason
        self.phase = Phase.STARTING
        self.slots: list[Slot] = []
        # Every listener, for the server's whole life; with one per shard, sockets[i] is
        # shard i's (its index in the SO_REUSEPORT group), even while shard i is removed.
        self.sockets: list[socket.socket] = []
        self.where = ""
        self.book = StatsBook()
        self.tasks = TaskSet(on_critical=self._critical_task_failed)
        self.launcher = Launcher(
            MsgspecCodec(), self.tasks, self._on_message, self._on_bad_message, self._ended
        )
        self.memory = MemoryLimit(config.limit_max_rss) if config.limit_max_rss else None
        self.roll_lock = asyncio.Lock()  # one rolling restart at a time
        self.stopped = asyncio.Event()  # every shard has drained
        self.source_changed = asyncio.Event()  # --reload, waiting for a fix: try again
        self.failure: str | None = None
        self.failure_code = 1
        self.services: Services | None = None
        self.config_dict = dataclasses.asdict(config)

    # Running -----------------------------------------------------------------------------

    def run(self) -> int:
        return asyncio.run(self.main())

    async def main(self) -> int:
        _become_child_subreaper()
        self._bind()
        try:
            await self._prepare()
            self._install_signal_handlers()
            self.services = Services(
                self.config,
                self.book,
                self.view,
                self._reload_command,
                self._stop_command,
                self._upgrade_command,
                self._on_source_change,
            )
            await self.services.start(self._inherited_metrics(), self.handover is not None)
            while self.phase is Phase.STARTING and await self._start_all():
                await self.source_changed.wait()  # (--reload: after a fix, or a stop)
                self.source_changed.clear()
            if self.phase is Phase.STARTING:
                self.phase = Phase.RUNNING
                self.tasks.spawn(self._watchdog(), "heartbeat watchdog")
                if self.handover is not None:
                    self.services.claim()
                    self.handover.announce_ready()  # (the old coordinator tells systemd)
                elif self.notifier is not None:
                    self.notifier.ready(self._status())
                if self.notifier is not None:
                    notifying = keep_notifying(
                        self.notifier, self._status, self._stuck, self.roll_lock.locked
                    )
                    self.tasks.spawn(notifying, "systemd status and watchdog")
            await self._shutdown()
        finally:
            await self.tasks.close()
            if self.services is not None:
                await self.services.close()
            self.launcher.close()
            self._close_listeners()
            if self.notifier is not None:
                self.notifier.close()
            if self.handover is not None:
                self.handover.close()
        if self.failure is not None:
            error = ShardFailed(self.failure)
            error.exit_code = self.failure_code
            raise error
        return 0

    def _bind(self) -> None:
        config = self.config
        count = len(self.placement)
        shared = self._shared_listener
        self.sockets = bind_listeners(config, 1 if shared else count, self.activation)
        if config.reuseport_steering == "cpu":
            attach_cpu_steering(self.sockets[0])
        for spec in self.placement.shards:
            listeners = list(self.sockets) if shared else [self.sockets[spec.index]]
            self.slots.append(Slot(spec.index, listeners, spec.cpus, spec.mode))
        if not shared:
            # A group handed over by a coordinator that had more shards: every socket
            # stays served (closing one would reset the connections queued on it).
            for sock in self.sockets[len(self.slots) :]:
                min(self.slots, key=lambda slot: len(slot.listeners)).listeners.append(sock)
        self.where = describe(self.sockets[0], config.is_ssl)

    @property
    def _shared_listener(self) -> bool:
        """--uds, --fd, and sockets passed by systemd without SO_REUSEPORT: listeners
        that every shard serves."""
        if self.activation is not None:
            return not self.activation.reuseport
        return self.config.uds is not None or self.config.fd is not None

    async def _prepare(self) -> None:
        config = self.config
        if any(slot.mode == "subinterpreter" for slot in self.slots):
            from .subinterpreters import preflight

            preflight(config.app, config.factory, config.app_dir)
        if any(slot.mode == "process" for slot in self.slots):
            await self.launcher.start_template()  # before any interpreter exists
        unmeasured = [slot.index for slot in self.slots if slot.mode == "subinterpreter"]
        if self.memory is not None and unmeasured:
            logger.warning(
                "--limit-max-rss does not apply to subinterpreter shards (%s): they "
                "share the coordinator's process.",
                ", ".join(map(str, unmeasured)),
            )

    async def _start_all(self) -> bool:
        """Start every shard; True if one failed to start and --reload waits for a fix."""
        logger.info(
            "Starting %d shard%s (%s), coordinator pid %d",
            len(self.slots),
            "s" if len(self.slots) != 1 else "",
            self.reason,
            os.getpid(),
        )
        shards = []
        for slot in self.slots:
            slot.current = await self._start(slot)
            shards.append(slot.current)
        waiting = {asyncio.ensure_future(first_done(s.ready, s.exited)) for s in shards}
        failed = None
        try:
            while waiting and self.phase is Phase.STARTING and failed is None:
                _, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                failed = next(
                    (s for s in shards if s.exited.done() and s.status is not Status.READY), None
                )
        finally:
            for task in waiting:
                task.cancel()
        if failed is not None:
            message = f"shard {failed.index} failed to start: {failed.error()}"
            if not self.config.reload or self.handover is not None:
                self._fail(message, failed)  # (an upgrade fails: the old one serves on)
                return False
            logger.error("%s", message)
            logger.info("Waiting for a change to the source to start again (--reload).")
            await self._give_up_start(shards)
            return True
        if self.phase is Phase.STARTING:
            logger.info("shardserve running on %s (Press CTRL+C to quit)", self.where)
        return False

    async def _give_up_start(self, shards: list[ShardHandle]) -> None:
        """Stop what did start, so that the next try starts every shard afresh."""
        for shard in shards:
            shard.expected_exit = True
            if not shard.exited.done():
                shard.kill("another shard failed to start")
        for shard in shards:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(shard.exited), EXIT_MARGIN)
        for slot in self.slots:
            slot.current = None
            slot.restarts.reset()

    def _fail(self, message: str, shard: ShardHandle | None = None) -> None:
        """Stop the whole server, reporting ``message`` as its one-line error."""
        if self.failure is None:
            self.failure = message
            if shard is not None and shard.fatal is not None:
                self.failure_code = shard.fatal.exit_code
        self._begin_stop(force=True)

    def _critical_task_failed(self, name: str, exc: BaseException) -> None:
        self._fail(f"internal error in the coordinator ({name}): {exc!r}")
        self.stopped.set()  # (the stop itself may be what failed: do not wait for it)

    # What the outside sees ---------------------------------------------------------------

    def view(self) -> ServerView:
        shards = []
        for slot in self.slots:
            shard = slot.current
            shards.append(
                ShardView(
                    index=slot.index,
                    pid=shard.pid if shard is not None else None,
                    mode=slot.mode,
                    cpus=slot.cpus,
                    state=str(shard.status) if shard is not None else "none",
                    generation=shard.generation if shard is not None else 0,
                )
            )
        return ServerView(os.getpid(), self.where, str(self.phase), tuple(shards))

    def _reload_command(self) -> dict:
        if self.phase is not Phase.RUNNING:
            raise RuntimeError("not running")
        self.tasks.spawn(self.rolling_restart(), "rolling restart")
        return {"reloading": True}

    def _stop_command(self) -> dict:
        logger.info("Shutting down (requested on the control socket)")
        asyncio.get_running_loop().call_soon(self._begin_stop)
        return {"stopping": True}

    async def _on_source_change(self) -> None:
        """--reload, once the changed app imports: roll the shards onto it."""
        if self.phase is Phase.STARTING:
            self.source_changed.set()  # (nothing serves yet: start again)
            return
        # After any roll under way (a SIGHUP's may have loaded older code).
        await self.rolling_restart(together=True, wait=True)

    # Starting and ending -----------------------------------------------------------------

    def _configure(self, slot: Slot) -> Configure:
        config = self.config
        max_requests = config.limit_max_requests
        if max_requests is not None and config.limit_max_requests_jitter:
            max_requests += random.randint(0, config.limit_max_requests_jitter)
        return Configure(
            index=slot.index,
            generation=slot.generation,
            config=self.config_dict,
            cpus=list(slot.cpus) if slot.cpus else None,
            max_requests=max_requests,
        )

    async def _start(self, slot: Slot) -> ShardHandle:
        """Start the slot's next generation (its handle may already say it failed)."""
        slot.generation += 1
        return await self.launcher.launch(slot, self._configure(slot))

    def _ended(self, shard: ShardHandle, code: int) -> None:
        """The launcher says ``shard`` has gone (its last words read)."""
        shard.status = Status.EXITED
        self.book.ended(shard.index, shard.generation, shard.stats)
        if not shard.ready.done():
            shard.ready.set_result(False)
        if not shard.exited.done():
            shard.exited.set_result(code)
        self._on_exit(shard, code)

    def _on_exit(self, shard: ShardHandle, code: int) -> None:
        slot = shard.slot
        if (
            self.phase is not Phase.RUNNING  # (start-up: _start_all reports it)
            or shard.expected_exit
            or slot.current is not shard
            or slot.busy  # (a replacement under way decides what runs in the slot)
        ):
            return
        cause = shard.kill_reason or shard.error(code)
        logger.warning("%s exited unexpectedly (%s); restarting it.", shard.describe(), cause)
        self.book.count_restart(shard.index, shard.restart_cause())
        served = None if shard.ready_at is None else time.monotonic() - shard.ready_at
        delay = slot.restarts.exited(served)
        if delay is None:
            failures = slot.restarts.failures
            self._fail(f"shard {slot.index} failed {failures} times in a row; last: {cause}", shard)
            return
        self.tasks.spawn(self._restart(slot, delay), f"restart shard {slot.index}")

    def _restart_later(self, slot: Slot, dead: ShardHandle) -> None:
        """A successor failed to start while its predecessor had died: try again."""
        delay = slot.restarts.failed()
        if delay is None:
            failures = slot.restarts.failures
            self._fail(f"shard {slot.index} failed {failures} times in a row", dead)
            return
        self.tasks.spawn(self._restart(slot, delay), f"restart shard {slot.index}")

    async def _restart(self, slot: Slot, delay: float) -> None:
        slot.busy = True
        try:
            if delay:
                logger.info("Restarting shard %d in %.1f s.", slot.index, delay)
                await asyncio.sleep(delay)
            if self.phase is Phase.STOPPING or slot not in self.slots:
                return
            shard = slot.current = await self._start(slot)
            if slot not in self.slots:  # removed meanwhile
                await self._drain(shard, close_idle=False)
                return
        finally:
            slot.busy = False
        if shard.exited.done():  # could not even start, or died at once
            self._on_exit(shard, shard.exited.result())

    async def _replace(self, slot: Slot, cause: str | None = None) -> bool:
        """Start a successor on the same listeners; once it is ready, drain the old one.
        With a ``cause``, the replacement is counted as a restart for that cause."""
        if slot.busy or self.phase is Phase.STOPPING:
            return False
        slot.busy = True
        try:
            old = slot.current
            new = await self._start(slot)
            try:
                started = await asyncio.wait_for(
                    first_done(new.ready, new.exited), REPLACEMENT_START_TIMEOUT
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
                    new.error(),
                    old.describe() if old else "none",
                )
                new.expected_exit = True
                if old is not None and old.exited.done():
                    self._restart_later(slot, old)  # the old one died meanwhile
                return False
            slot.current = new
            if cause is not None:
                self.book.count_restart(slot.index, cause)
            if old is not None and not old.exited.done():
                await self._drain(old, close_idle=False)
            return True
        finally:
            slot.busy = False

    async def _drain(self, shard: ShardHandle, close_idle: bool, upgrade: bool = False) -> None:
        """Let ``shard`` finish its requests and exit; kill it after the grace time
        (``upgrade``: its WebSocket sessions go on until then, too)."""
        shard.expected_exit = True
        if not shard.exited.done():
            shard.status = Status.DRAINING
        shard.send(Drain(close_idle=close_idle, keep_websockets=upgrade))
        grace = self.config.timeout_graceful_shutdown
        timeout = None if grace is None else grace + EXIT_MARGIN
        try:
            await asyncio.wait_for(asyncio.shield(shard.exited), timeout)
            return
        except TimeoutError:
            logger.warning("%s did not stop in time; killing it.", shard.describe())
        shard.kill("did not drain in time")
        if shard.killable:
            await shard.exited
            return
        try:
            await asyncio.wait_for(asyncio.shield(shard.exited), EXIT_MARGIN)
        except TimeoutError:
            logger.error("%s is stuck and cannot be killed; leaving it.", shard.describe())

    # Messages ----------------------------------------------------------------------------

    def _on_message(self, shard: ShardHandle, message) -> None:
        if (
            getattr(message, "index", None) != shard.index
            or getattr(message, "generation", None) != shard.generation
        ):
            self._on_bad_message(shard, MessageError(f"unexpected {message!r}"))
            return
        now = time.monotonic()
        if isinstance(message, Heartbeat):
            shard.last_beat = now
        elif isinstance(message, Stats):
            try:
                self.book.record(message)
            except MessageError as exc:
                self._on_bad_message(shard, exc)
                return
            shard.stats = message
            shard.last_beat = now
            if self.memory is not None:
                self._check_memory(shard, message, now)
        elif isinstance(message, Ready):
            if message.pid != shard.pid:
                self._on_bad_message(shard, MessageError(f"ready from pid {message.pid}"))
                return
            shard.status = Status.READY
            shard.ready_at = shard.last_beat = now
            if not shard.ready.done():
                shard.ready.set_result(True)
        elif isinstance(message, Retire):
            if shard.slot.current is shard and self.phase is not Phase.STOPPING:
                logger.info("Replacing %s: it %s.", shard.describe(), message.reason)
                self.tasks.spawn(self._replace(shard.slot), f"replace shard {shard.index}")
        elif isinstance(message, Fatal):
            shard.fatal = message
        else:
            self._on_bad_message(shard, MessageError(f"a shard may not send {message.TAG!r}"))

    def _on_bad_message(self, shard: ShardHandle, exc: Exception) -> None:
        logger.error(
            "%s sent a malformed control message (%s); replacing it.", shard.describe(), exc
        )
        shard.kill("malformed control message")

    def _check_memory(self, shard: ShardHandle, stats: Stats, now: float) -> None:
        """--limit-max-rss: replace a shard whose RSS stays above the limit (policies.py
        counts the samples), as a rolling restart replaces it."""
        memory = self.memory
        over = memory.sample(shard.rss, stats.rss_bytes)
        slot = shard.slot
        if (
            not over
            or not memory.due(shard.rss, now)
            or shard.status is not Status.READY
            or slot.current is not shard
            or slot.busy  # (being restarted or rolled: it is replaced anyway)
            or self.phase is not Phase.RUNNING
        ):
            return
        logger.warning(
            "Replacing %s: RSS %d MB above --limit-max-rss %d MB for %d s.",
            shard.describe(),
            math.ceil(stats.rss_bytes / MIB),
            memory.limit_mb,
            shard.rss.over,
        )
        shard.rss.replacing = True
        self.tasks.spawn(self._replace_for_memory(slot, shard), f"replace shard {slot.index}")

    async def _replace_for_memory(self, slot: Slot, shard: ShardHandle) -> None:
        if await self._replace(slot, cause="memory") or slot.current is not shard:
            return
        self.memory.replacement_failed(shard.rss, time.monotonic())
        if self.phase is not Phase.STOPPING and not shard.exited.done():
            logger.info(
                "%s stays; replacing it again in %.0f s if its RSS is still above the limit.",
                shard.describe(),
                self.memory.retry_seconds,
            )

    async def _watchdog(self) -> None:
        limit = self.config.timeout_shard_heartbeat
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            for slot in self.slots:
                shard = slot.current
                if shard is None or shard.status is not Status.READY:
                    continue
                if now - shard.last_beat > limit:
                    logger.error(
                        "%s sent no heartbeat for %.0f s (its event loop is stuck); killing it.",
                        shard.describe(),
                        now - shard.last_beat,
                    )
                    shard.status = Status.UNRESPONSIVE
                    shard.kill(f"no heartbeat for {limit:g} s")

    def _stuck(self) -> bool:
        """Whether a ready shard has sent no heartbeat for the heartbeat timeout."""
        limit = self.config.timeout_shard_heartbeat
        now = time.monotonic()
        return any(
            slot.current is not None
            and slot.current.status in (Status.READY, Status.UNRESPONSIVE)
            and now - slot.current.last_beat > limit
            for slot in self.slots
        )

    def _status(self) -> str:
        now = time.monotonic()
        rps = sum(self.book.recent(slot.index, now)["rps"] or 0.0 for slot in self.slots)
        count = len(self.slots)
        return f"{count} shard{'s' if count != 1 else ''}, {rps:.0f} req/s"

    # Rolling restart -----------------------------------------------------------------------

    async def rolling_restart(self, together: bool = False, wait: bool = False) -> None:
        """Replace every shard, one at a time (or ``together``: --reload, where waiting
        for each in turn would serve old and new code side by side for longer).  One
        roll at a time: another is refused, or (``wait``) runs after it."""
        if self.roll_lock.locked() and not wait:
            logger.info("A rolling restart is already under way.")
            return
        async with self.roll_lock:
            if self.phase is not Phase.RUNNING:
                return
            self.book.count_reload()
            logger.info("Rolling restart of %d shards.", len(self.slots))
            if self.notifier is not None:
                self.notifier.reloading()
            try:
                await self._roll(together)
            finally:
                if self.notifier is not None and self.phase is Phase.RUNNING:
                    self.notifier.ready(self._status())

    async def _roll(self, together: bool) -> None:
        if together:
            slots = [slot for slot in self.slots if not slot.busy]
            replaced = await asyncio.gather(*(self._replace(slot) for slot in slots))
            if all(replaced):
                logger.info("Rolling restart complete.")
            return
        for slot in list(self.slots):
            if self.phase is Phase.STOPPING:
                return
            if slot not in self.slots or slot.busy:
                continue  # (removed, or restarting: its new shard loads the new code)
            if not await self._replace(slot):
                logger.error("Rolling restart stopped at shard %d.", slot.index)
                return
        logger.info("Rolling restart complete.")

    # Stopping ------------------------------------------------------------------------------

    def _begin_stop(self, force: bool = False, handed_over: bool = False) -> None:
        """Stop every shard: ``force`` at once, or drain them (``handed_over``: as an
        in-place upgrade's old coordinator, see Upgrading.upgrade)."""
        if self.upgrading is not None:
            self.upgrading.abort()  # (our successor must not outlive us half-started)
        if self.phase is not Phase.STOPPING:
            self.phase = Phase.STOPPING
            if self.notifier is not None:
                self.notifier.stopping()
            self.launcher.closing = True
            self.source_changed.set()  # (no longer waiting for a fix)
            for slot in self.slots:
                if slot.current is not None:
                    slot.current.expected_exit = True
            self.tasks.spawn(self._stop_all(force, handed_over), "stop every shard", critical=True)
        elif force:
            self._force_all()

    async def _stop_all(self, force: bool, handed_over: bool) -> None:
        try:
            if force:
                self._force_all()
            shards = [slot.current for slot in self.slots if slot.current is not None]
            live = [shard for shard in shards if not shard.exited.done()]
            # Handed over: idle keep-alive connections get `connection: close` on their
            # next response (as in a roll), not a close that could cross a request.
            drains = (self._drain(shard, not handed_over, handed_over) for shard in live)
            await asyncio.gather(*drains)
        finally:
            self.stopped.set()

    def _force_all(self) -> None:
        for slot in self.slots:
            shard = slot.current
            if shard is not None and not shard.exited.done():
                shard.send(Stop())
                asyncio.get_running_loop().call_later(1.0, shard.kill, "forced stop")

    async def _shutdown(self) -> None:
        """Serve until every shard has drained after a stop (a signal, the control
        socket, a failure)."""
        await self.stopped.wait()
        book = self.book
        logger.debug("Coordinator totals: %s; restarts %s", book.totals().values, book.restarts)

    def _close_listeners(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.config.uds and not self.handed_over:  # (else our successor's now)
            with contextlib.suppress(OSError):
                os.unlink(self.config.uds)

    # Signals -------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        StopSignals(self._begin_stop, lambda: self._begin_stop(force=True)).install(loop)
        loop.add_signal_handler(signal.SIGHUP, self._on_signal, self.rolling_restart, "roll")
        loop.add_signal_handler(signal.SIGTTIN, self._on_signal, self.add_shard, "add a shard")
        loop.add_signal_handler(signal.SIGTTOU, self._on_signal, self.remove_shard, "remove one")
        loop.add_signal_handler(signal.SIGUSR2, self._on_signal, self._upgrade_on_signal, "upgrade")

    def _on_signal(self, action, name: str) -> None:
        if self.phase is Phase.RUNNING:
            self.tasks.spawn(action(), name)


def _become_child_subreaper() -> None:
    """Orphaned shards (forked by the template) become our children, to wait for."""
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        logger.warning("Could not become a child subreaper; shard exits may be missed.")
