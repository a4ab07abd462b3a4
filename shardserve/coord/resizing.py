"""Adding and removing shards while serving (SIGTTIN, SIGTTOU): the supervisor's
part that changes how many slots there are, and which listener each serves.

A mixin of ``Supervisor`` (supervisor.py), whose slots, sockets and replacing it uses.
"""

from __future__ import annotations

import logging
import os

from ..messages import Adopt
from .handles import Slot
from .listeners import add_listener
from .tasks import first_done

logger = logging.getLogger("shardserve.error")


class Resizing:
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
        heir = None
        if self._shared_listener:
            sock = None
        elif index < len(self.sockets):
            # The listener of a shard removed earlier, which another shard adopted:
            # it is this index's again (steering maps group index i to shard i).
            sock = self.sockets[index]
            heir = next((slot for slot in self.slots if sock in slot.listeners), None)
            if heir is not None:
                heir.listeners.remove(sock)
        else:
            sock = add_listener(self.sockets[0], self.config.backlog)
            self.sockets.append(sock)
        listeners = list(self.sockets) if sock is None else [sock]
        slot = Slot(index, listeners, cpus, self.config.shard_mode)
        self.slots.append(slot)
        shard = slot.current = await self._start(slot)
        if await first_done(shard.ready, shard.exited) and shard.ready.result():
            logger.info("Added shard %d; %d shards now.", index, len(self.slots))
        if heir is not None:
            # The heir still serves the listener it adopted: a successor started on its
            # own listeners alone takes over, so each shard serves one listener again.
            await self._replace(heir)

    async def remove_shard(self) -> None:
        if len(self.slots) <= 1:
            logger.warning("Only one shard left; not removing it.")
            return
        slot = self.slots.pop()
        shard = slot.current
        if not self._shared_listener:
            # Its listener stays open (closing it would reset the connections queued
            # on it): another shard serves it until a shard is added in its place.
            heir = min(self.slots, key=lambda s: len(s.listeners))
            for sock in slot.listeners:
                heir.listeners.append(sock)
                if heir.current is not None:
                    heir.current.send(Adopt(listener=self.sockets.index(sock)), fds=[sock.fileno()])
        logger.info("Removing shard %d; %d shards now.", slot.index, len(self.slots))
        if shard is not None:
            await self._drain(shard, close_idle=False)
