"""The servers `python -m bench` compares, and how each is started with N workers.

Peers run from their own virtual environment (bench/harness.py peer_python, pinned
versions), never from shardserve's; every server serves the same ``bench.apps:app``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from bench.harness import peer_python


@dataclass(frozen=True)
class ServerKind:
    name: str
    description: str
    command: Callable[[int, int, str], list[str]]  # (workers, port, app) -> argv
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot run here
    pins: bool = False  # can pin worker i to one CPU (python -m bench --pin)


def _shardserve(mode: str) -> Callable[[int, int, str], list[str]]:
    def command(count: int, port: int, app: str) -> list[str]:
        argv = [sys.executable, "-m", "shardserve", app, "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--no-access-log", "--shards", str(count)]
        return argv + (["--shard-mode", mode] if mode != "process" else [])

    return command


def _subinterpreters_unavailable() -> str | None:
    from shardserve.interpreters import unavailable_reason

    reason = unavailable_reason()
    return None if reason is None else f"{reason} (run python -m bench with that Python)"


def _uvicorn(count: int, port: int, app: str) -> list[str]:
    argv = [peer_python(), "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    return argv + ["--no-access-log"] + (["--workers", str(count)] if count > 1 else [])


def _granian(count: int, port: int, app: str) -> list[str]:
    argv = [peer_python(), "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"]
    return argv + ["--port", str(port), "--workers", str(count), app]


def _hypercorn(count: int, port: int, app: str) -> list[str]:
    argv = [peer_python(), "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}"]
    return argv + ["--workers", str(count)]


SERVERS: dict[str, ServerKind] = {
    kind.name: kind
    for kind in (
        ServerKind(
            "shardserve",
            "process shards (httptools, uvloop)",
            _shardserve("process"),
            pins=True,
        ),
        ServerKind(
            "shardserve-subinterpreter",
            "own-GIL subinterpreter shards (pure-Python parser, asyncio)",
            _shardserve("subinterpreter"),
            _subinterpreters_unavailable,
            pins=True,
        ),
        ServerKind("uvicorn", "uvicorn --workers (httptools, uvloop)", _uvicorn),
        ServerKind("granian", "granian --workers --interface asgi", _granian),
        ServerKind("hypercorn", "hypercorn --workers", _hypercorn),
    )
}
