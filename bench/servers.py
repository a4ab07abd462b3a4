"""The servers `python -m bench` compares, and how each is started with N workers.

Peers run from their own virtual environment (bench/harness.py peer_python, pinned
versions), never from shardserve's; every server serves the same ``bench.apps:app``.
With the access log on, every server writes its lines to stdout, which the bench
sends to /dev/null: the cost measured is formatting and writing them, not a disk.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import peer_python

# (workers, port, app, access_log) -> argv
Command = Callable[[int, int, str, bool], list[str]]


@dataclass(frozen=True)
class ServerKind:
    name: str
    description: str
    command: Command
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot run here
    pins: bool = False  # can pin worker i to one CPU (python -m bench --pin)
    root: Path | None = None  # another revision's tree (--against); None: this one
    baseline: str | None = None  # --against: the kind this one is measured against


def _shardserve(*options: str) -> Command:
    def command(count: int, port: int, app: str, access_log: bool) -> list[str]:
        argv = [sys.executable, "-m", "shardserve", app, "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--shards", str(count), *options]
        return argv + ([] if access_log else ["--no-access-log"])

    return command


def _subinterpreters_unavailable() -> str | None:
    from shardserve.interpreters import unavailable_reason

    reason = unavailable_reason()
    return None if reason is None else f"{reason} (run python -m bench with that Python)"


def _uvicorn(*options: str) -> Command:
    def command(count: int, port: int, app: str, access_log: bool) -> list[str]:
        argv = [peer_python(), "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
        argv += [*options, *([] if access_log else ["--no-access-log"])]
        return argv + (["--workers", str(count)] if count > 1 else [])

    return command


def _granian(count: int, port: int, app: str, access_log: bool) -> list[str]:
    argv = [peer_python(), "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", str(count)]
    return argv + (["--access-log"] if access_log else []) + [app]


def _hypercorn(count: int, port: int, app: str, access_log: bool) -> list[str]:
    argv = [peer_python(), "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}"]
    return argv + ["--workers", str(count)] + (["--access-logfile", "-"] if access_log else [])


SERVERS: dict[str, ServerKind] = {
    kind.name: kind
    for kind in (
        ServerKind(
            "shardserve",
            "process shards (httptools, uvloop)",
            _shardserve(),
            pins=True,
        ),
        ServerKind(
            "shardserve-h11",
            "process shards on h11 and stdlib asyncio (the old fallback)",
            _shardserve("--http", "h11", "--loop", "asyncio"),
            pins=True,
        ),
        ServerKind(
            "shardserve-python",
            "process shards on the pure-Python parser and stdlib asyncio (no C extensions)",
            _shardserve("--http", "python", "--loop", "asyncio"),
            pins=True,
        ),
        ServerKind(
            "shardserve-subinterpreter",
            "own-GIL subinterpreter shards (pure-Python parser, asyncio)",
            _shardserve("--shard-mode", "subinterpreter"),
            _subinterpreters_unavailable,
            pins=True,
        ),
        ServerKind("uvicorn", "uvicorn --workers (its defaults: httptools, uvloop)", _uvicorn()),
        # uvicorn's two WebSocket implementations by name (0.54's --ws auto picks sansio).
        ServerKind(
            "uvicorn-sansio",
            "uvicorn --workers --ws websockets-sansio",
            _uvicorn("--ws", "websockets-sansio"),
        ),
        ServerKind(
            "uvicorn-websockets",
            "uvicorn --workers --ws websockets (the legacy asyncio implementation)",
            _uvicorn("--ws", "websockets"),
        ),
        ServerKind("granian", "granian --workers --interface asgi", _granian),
        ServerKind("hypercorn", "hypercorn --workers", _hypercorn),
    )
}
