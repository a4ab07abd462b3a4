"""The coordinator's control socket: `shardserve status`, `reload` and `stop` talk here.

A Unix socket created mode 0600 (only its owner may read stats or trigger a reload),
by default ``$XDG_RUNTIME_DIR/shardserve/<coordinator pid>.sock`` (or under
``/tmp/shardserve-<uid>/`` without a runtime directory).  One JSON object per line each
way: ``{"command": "status" | "reload" | "stop"}`` in, a JSON reply out.  A malformed
or oversized command gets ``{"error": ...}`` and the connection closes; serving goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..procfs import rss_bytes

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


class ControlSocket:
    def __init__(self, path: str | None, handlers: dict[str, Callable[[], Any]]) -> None:
        self.path = Path(path) if path else default_path()
        self.handlers = handlers
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a server that died
        old = os.umask(0o177)  # created 0600: no window where others could connect
        try:
            self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        logger.info("Control socket: %s", self.path)

    async def close(self) -> None:
        if self.server is None:
            return  # never listened: nothing of ours to remove
        self.server.close()
        with contextlib.suppress(Exception):
            await self.server.wait_closed()
        with contextlib.suppress(OSError):
            self.path.unlink()

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
                reply = self._answer(line)
                await self._reply(writer, reply)
                if "error" in reply:
                    return
        except (TimeoutError, ConnectionError):
            return
        finally:
            writer.close()

    def _answer(self, line: bytes) -> dict:
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
            return {"ok": True, "result": handler()}
        except Exception as exc:  # noqa: BLE001 - reported to the client, not fatal here
            logger.exception("Control command %r failed", request["command"])
            return {"error": f"{request['command']} failed: {exc}"}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()


def status_report(supervisor: Any) -> dict:
    """What `shardserve status` gets: the server, one row per shard, totals."""
    book = supervisor.book
    totals = book.totals()
    return {
        "pid": os.getpid(),
        "where": supervisor.where,
        "state": "stopping"
        if supervisor.stopping
        else "running"
        if supervisor.running
        else "starting",
        "coordinator_rss_bytes": rss_bytes(),
        "shards": shard_rows(supervisor),
        "totals": dict(totals.values),
        "responses": totals.responses,
        "reloads": book.reloads,
        "restarts": dict(book.restarts),
    }


def shard_rows(supervisor: Any) -> list[dict]:
    """One row per shard slot: what it runs now and what it did lately."""
    now = time.monotonic()
    book = supervisor.book
    rows = []
    for slot in supervisor.slots:
        proc = slot.current
        tally = book.shard(slot.index)
        latest = book.latest(slot.index)
        recent = book.recent(slot.index, now)
        rows.append(
            {
                "index": slot.index,
                "pid": proc.pid if proc else None,
                "mode": slot.mode,
                "cpus": list(slot.cpus) if slot.cpus else None,
                "state": proc.state if proc else "none",
                "generation": proc.generation if proc else 0,
                "requests": tally["requests"],
                "rps_10s": recent["rps"],
                "cpu_percent_10s": recent["cpu_percent"],
                "p50_ms_10s": _ms(recent["p50"]),
                "p99_ms_10s": _ms(recent["p99"]),
                "open_connections": tally["open_connections"],
                "active_requests": tally["active_requests"],
                "ws_open": tally["ws_open"],
                "errors": tally["parse_errors"] + tally["app_errors"] + tally["timeouts"],
                "restarts": book.restarts_of.get(slot.index, 0),
                "rss_bytes": latest.rss_bytes if latest else None,
                "uptime_s": round(latest.uptime_seconds, 1) if latest else None,
            }
        )
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
