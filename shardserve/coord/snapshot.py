"""What the supervisor shows the outside: a typed snapshot, made on request.

The metrics listener (healthz/readyz, the shard count), the control socket (`shardserve
status`) and anything else that reports on the server read a ``ServerView``, never
the supervisor's own attributes, so that the supervisor can change without them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShardView:
    """One shard slot: what runs there now."""

    index: int
    pid: int | None  # None: nothing runs in the slot now
    mode: str  # process | subinterpreter
    cpus: tuple[int, ...] | None
    state: str  # starting | ready | draining | unresponsive | exited | none
    generation: int


@dataclass(frozen=True)
class ServerView:
    pid: int  # the coordinator's
    where: str  # what it listens on, e.g. http://127.0.0.1:8000
    state: str  # starting | running | stopping
    shards: tuple[ShardView, ...]

    @property
    def serving(self) -> bool:
        """For /readyz: started, and not draining."""
        return self.state == "running"

    @property
    def healthy(self) -> bool:
        """For /healthz: serving, and every shard's current generation ready."""
        return self.serving and all(shard.state == "ready" for shard in self.shards)
