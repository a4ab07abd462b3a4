"""The coordinator's control socket: `shardserve status`, `reload`, `stop` and `upgrade`
talk here.

A Unix socket created mode 0600 (only its owner may read stats or trigger a reload),
by default ``$XDG_RUNTIME_DIR/shardserve/<coordinator pid>.sock`` (or under
``/tmp/shardserve-<uid>/`` without a runtime directory).  One JSON object per line each
way: ``{"command": "status" | "reload" | "stop" | "upgrade"}`` in, a JSON reply out
(``upgrade``'s once the new coordinator is ready, or has failed).  A malformed
or oversized command gets ``{"error": ...}`` and the connection closes; serving goes on.

The default directory is used only if it is private (``check_private_directory``: a
real directory, ours, mode 0700 or narrower), as tmux and ssh-agent check theirs: in a
world-writable /tmp another user could otherwise create it first and put their own
socket where `shardserve status` looks.  Both sides check: a coordinator that finds it
unsafe serves without a control socket (with a warning), the client refuses to
connect.  A coordinator starting with the default directory removes the sockets that
SIGKILLed servers left there.  ``--control-socket PATH`` is the user's choice and is
not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..counters import COUNTS, ERRORS
from ..errors import CommandFailed
from ..procfs import rss_bytes

if TYPE_CHECKING:
    from .snapshot import ServerView
    from .stats import StatsBook

logger = logging.getLogger("shardserve.error")

MAX_COMMAND = 4096
READ_TIMEOUT = 5.0


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "shardserve"
    return Path(f"/tmp/shardserve-{os.getuid()}")


def default_path(pid: int | None = None) -> Path:
    return runtime_dir() / f"{pid or os.getpid()}.sock"


class UnsafePath(OSError):
    """The default directory, or a socket in it, may be someone else's: one line."""


def _unsafe(path: Path, problem: str) -> UnsafePath:
    return UnsafePath(f"{path} {problem}: remove it, or pass --control-socket PATH")


def check_private_directory(directory: Path) -> None:
    """Refuse (UnsafePath) a control-socket directory someone else could control.

    It must be a real directory (not a symlink), owned by us, with no group or other
    permission bits.  Raises FileNotFoundError if it does not exist.
    """
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        raise _unsafe(directory, "is a symlink, not a directory of our own")
    if not stat.S_ISDIR(info.st_mode):
        raise _unsafe(directory, "is not a directory")
    if info.st_uid != os.getuid():
        raise _unsafe(directory, f"is owned by uid {info.st_uid}, not by us (uid {os.getuid()})")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise _unsafe(directory, f"has mode {mode:04o}, open to others (expected 0700)")


def check_own_socket(path: Path) -> None:
    """Refuse (UnsafePath) a socket in the default directory that is not our own socket."""
    info = os.lstat(path)
    if not stat.S_ISSOCK(info.st_mode):
        raise _unsafe(path, "is not a socket")
    if info.st_uid != os.getuid():
        raise _unsafe(path, f"is owned by uid {info.st_uid}, not by us (uid {os.getuid()})")


def make_private_directory(directory: Path) -> None:
    """Create ``directory`` mode 0700 if missing; UnsafePath if it is not ours alone."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700, parents=True)
    check_private_directory(directory)


def remove_stale_sockets(directory: Path) -> list[Path]:
    """Remove the sockets in ``directory`` that no process listens on; return them.

    Only our own sockets that refuse a connection go; nothing else is touched: not a
    live socket, not a file that is not a socket, nor one named after a live process
    (a coordinator may be between its bind() and listen()).
    """
    removed = []
    for path in directory.glob("*.sock"):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
            continue
        if path.stem.isdigit() and _process_exists(int(path.stem)):
            continue
        if _refused(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _refused(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.setblocking(False)  # a full backlog (EAGAIN) means alive: never wait
        try:
            sock.connect(str(path))
        except OSError as exc:
            return exc.errno == errno.ECONNREFUSED
    return False


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


class ControlSocket:
    def __init__(
        self, path: str | None, handlers: dict[str, Callable[[], Any]], deferred: bool = False
    ) -> None:
        self.default = not path
        self.path = Path(path) if path else default_path()
        # An in-place upgrade's new coordinator listens beside the old one's socket and
        # takes its path (``claim``) only once it serves: if it fails, the old one's
        # socket is still there.
        self.bound = self.path
        if deferred and not self.default:
            self.bound = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        self.handlers = handlers
        self.server: asyncio.AbstractServer | None = None
        self.inode = 0

    async def start(self) -> None:
        """Listen; OSError (UnsafePath for an unsafe default directory) if it cannot."""
        if self.default:
            make_private_directory(self.path.parent)
            for path in remove_stale_sockets(self.path.parent):
                logger.info("Removed a stale control socket: %s", path)
        else:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.bound.unlink()  # a stale socket from a server that died
        old = os.umask(0o177)  # created 0600: no window where others could connect
        try:
            self.server = await asyncio.start_unix_server(self._serve, str(self.bound))
        finally:
            os.umask(old)
        os.chmod(self.bound, 0o600)
        self.inode = os.lstat(self.bound).st_ino
        later = " (once this coordinator serves)" if self.bound != self.path else ""
        logger.info("Control socket: %s%s", self.path, later)

    def claim(self) -> None:
        """Take the path over from the coordinator we replace (atomically)."""
        if self.server is not None and self.bound != self.path:
            os.rename(self.bound, self.path)
            self.bound = self.path

    async def close(self) -> None:
        if self.server is None:
            return  # never listened: nothing of ours to remove
        self.server.close()
        with contextlib.suppress(Exception):
            await self.server.wait_closed()
        with contextlib.suppress(OSError):
            if os.lstat(self.bound).st_ino == self.inode:  # (not a successor's, same path)
                self.bound.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        await self._reply(writer, {"error": "command not ended by a newline"})
                    return
                except asyncio.LimitOverrunError:
                    await self._reply(writer, {"error": "command too long"})
                    return
                if len(line) > MAX_COMMAND:
                    await self._reply(writer, {"error": "command too long"})
                    return
                reply = await self._answer(line)
                await self._reply(writer, reply)
                if "error" in reply:
                    return
        except (TimeoutError, ConnectionError):
            return
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"error": "not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"error": 'expected {"command": "..."}'}
        handler = self.handlers.get(request["command"])
        if handler is None:
            return {"error": f"unknown command {request['command']!r}"}
        try:
            result = handler()
            if inspect.isawaitable(result):  # (upgrade: answered once it is done)
                result = await result
            return {"ok": True, "result": result}
        except CommandFailed as exc:
            return {"error": f"{request['command']} failed: {exc}"}
        except Exception as exc:  # noqa: BLE001 - reported to the client, not fatal here
            logger.exception("Control command %r failed", request["command"])
            return {"error": f"{request['command']} failed: {exc}"}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()


def status_report(view: ServerView, book: StatsBook) -> dict:
    """What `shardserve status` gets: the server, one row per shard, totals."""
    totals = book.totals()
    return {
        "pid": view.pid,
        "where": view.where,
        "state": view.state,
        "coordinator_rss_bytes": rss_bytes(),
        "shards": shard_rows(view, book),
        "totals": dict(totals.values),
        "responses": totals.responses,
        "reloads": book.reloads,
        "restarts": dict(book.restarts),
    }


def shard_rows(view: ServerView, book: StatsBook) -> list[dict]:
    """One row per shard slot: what it runs now and what it did lately."""
    now = time.monotonic()
    rows = []
    for shard in view.shards:
        tally = book.shard(shard.index)
        latest = book.latest(shard.index)
        recent = book.recent(shard.index, now)
        rows.append(
            {
                "index": shard.index,
                "pid": shard.pid,
                "mode": shard.mode,
                "cpus": list(shard.cpus) if shard.cpus else None,
                "state": shard.state,
                "generation": shard.generation,
                "rps_10s": recent["rps"],
                "cpu_percent_10s": recent["cpu_percent"],
                "p50_ms_10s": _ms(recent["p50"]),
                "p99_ms_10s": _ms(recent["p99"]),
                **status_counts(tally),
                "restarts": book.restarts_of.get(shard.index, 0),
                "rss_bytes": latest.rss_bytes if latest else None,
                "uptime_s": round(latest.uptime_seconds, 1) if latest else None,
            }
        )
    return rows


def status_counts(tally: Any) -> dict[str, float]:
    """A slot's counts for its status row: the counter table's entries shown in
    `shardserve status`, by name, then "errors" (the sum of its ERRORS entries)."""
    row = {count.name: tally[count.name] for count in COUNTS if count.status not in (None, ERRORS)}
    row["errors"] = sum(tally[count.name] for count in COUNTS if count.status == ERRORS)
    return row


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
