"""An in-place upgrade, seen from the new coordinator: what the old one hands over.

The old coordinator (upgrade.py) starts this process with its listening sockets (and
the --metrics one) as inherited file descriptors and one variable naming them,
``SHARDSERVE_HANDOVER``, plus a pipe to say "ready" on.  Taken once, first thing,
and the variable removed, like systemd's (activation.py): neither the app nor the
shards may see it.  The listeners become an ``Activation``: an SO_REUSEPORT group
(one socket per shard, as the old coordinator served them) or sockets every shard
serves (--uds, --fd, systemd's without SO_REUSEPORT).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from ..errors import ListenError
from .activation import Activation, stream_socket

VARIABLE = "SHARDSERVE_HANDOVER"


@dataclass
class Handover:
    from_pid: int  # the coordinator we replace
    activation: Activation  # its listeners
    metrics: list[socket.socket]  # its --metrics listener(s)
    ready_fd: int  # the pipe it waits on

    def describe(self) -> str:
        count = len(self.activation.sockets)
        return (
            f"Taking over {count} listener{'s' if count != 1 else ''} from coordinator "
            f"pid {self.from_pid} (upgrade)."
        )

    def announce_ready(self) -> None:
        """Every shard is ready: the old coordinator may drain its own and exit."""
        if self.ready_fd < 0:
            return
        with contextlib.suppress(OSError):  # (it may be gone: we serve alone then)
            os.write(self.ready_fd, b"ready\n")
        os.close(self.ready_fd)
        self.ready_fd = -1

    def close(self) -> None:
        """Without ready said: the old coordinator sees the pipe end and keeps serving."""
        if self.ready_fd >= 0:
            os.close(self.ready_fd)
            self.ready_fd = -1


def encode(
    from_pid: int,
    listeners: list[int],
    group: bool,
    names: list[str],
    metrics: list[int],
    ready_fd: int,
) -> str:
    """The variable's value (the one definition of its format, with ``take_handover``)."""
    return json.dumps(
        {
            "from": from_pid,
            "listeners": listeners,
            "group": group,
            "names": names,
            "metrics": metrics,
            "ready": ready_fd,
        }
    )


def take_handover(environ: MutableMapping[str, str] = os.environ) -> Handover | None:
    raw = environ.pop(VARIABLE, None)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        from_pid, group, ready = int(data["from"]), bool(data["group"]), int(data["ready"])
        listeners = [int(fd) for fd in data["listeners"]]
        metrics = [int(fd) for fd in data["metrics"]]
        names = [str(name) for name in data["names"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise ListenError(f"{VARIABLE}: not a handover from a coordinator ({exc})") from None
    if not listeners:
        raise ListenError(f"{VARIABLE}: no listener handed over")
    os.set_inheritable(ready, False)  # (shards and the app's subprocesses must not hold it)
    names = (names + [""] * len(listeners))[: len(listeners)]
    activation = Activation([_inherited(fd) for fd in listeners], names, group)
    return Handover(from_pid, activation, [_inherited(fd) for fd in metrics], ready)


def _inherited(fd: int) -> socket.socket:
    sock = stream_socket(fd, f"{VARIABLE}: fd {fd}")
    sock.set_inheritable(False)
    return sock
