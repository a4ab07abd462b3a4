"""The servers `python -m bench` compares, and how each is started with N workers.

Peers run from their own virtual environment (bench/harness.py peer_python, pinned
versions), never from shardserve's; every server serves the same ``bench.apps:app``.
With the access log on, every server writes its lines to stdout, which the bench
sends to /dev/null: the cost measured is formatting and writing them, not a disk.

Each kind names the protocols it serves (bench/workloads.py): a workload in another
is skipped for that kind, with the reason in the results.  HTTP/2 kinds serve h2c by
prior knowledge on their plain port and, given a certificate (the TLS workloads), h2
by ALPN.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import peer_python, peer_unavailable
from bench.tls import Certificate
from bench.workloads import H2_TLS, H2C, HTTP1, PROTOCOL_NAMES, Workload

# (workers, port, app, access_log, tls=None) -> argv; tls: serve over TLS with it.
Command = Callable[..., list[str]]
HTTP1_ONLY = frozenset({HTTP1})
HTTP2_ONLY = frozenset({H2C, H2_TLS})
ALL_PROTOCOLS = HTTP1_ONLY | HTTP2_ONLY


@dataclass(frozen=True)
class ServerKind:
    name: str
    description: str
    command: Command
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot run here
    pins: bool = False  # can pin worker i to one CPU (python -m bench --pin)
    root: Path | None = None  # another revision's tree (--against); None: this one
    baseline: str | None = None  # --against: the kind this one is measured against
    protocols: frozenset[str] = HTTP1_ONLY  # what it serves (bench/workloads.py)
    paths: frozenset[str] | None = None  # the only request paths it answers (the floor)

    def cannot_serve(self, workload: Workload) -> str | None:
        """Why this kind does not serve ``workload``, or None if it does."""
        if self.paths is not None and (workload.path not in self.paths or workload.websocket):
            return f"answers GET {', '.join(sorted(self.paths))} only"
        if workload.protocol in self.protocols:
            return None
        serves = " and ".join(PROTOCOL_NAMES[p].split(" ")[0] for p in sorted(self.protocols))
        return f"serves {serves} only, not {PROTOCOL_NAMES[workload.protocol]}"


def _uvicorn_tls(tls: Certificate | None) -> list[str]:
    """uvicorn's TLS flags, which shardserve shares."""
    if tls is None:
        return []
    return ["--ssl-certfile", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile)]


def _shardserve(*options: str) -> Command:
    def command(count: int, port: int, app: str, access_log: bool,
                tls: Certificate | None = None) -> list[str]:  # fmt: skip
        argv = [sys.executable, "-m", "shardserve", app, "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--shards", str(count), *options, *_uvicorn_tls(tls)]
        return argv + ([] if access_log else ["--no-access-log"])

    return command


def _subinterpreters_unavailable() -> str | None:
    from shardserve.interpreters import unavailable_reason

    reason = unavailable_reason()
    return None if reason is None else f"{reason} (run python -m bench with that Python)"


def _zttp_unavailable() -> str | None:
    return peer_unavailable("zttp", "uvicorn.protocols.http.auto_zttp_impl")


def _uvicorn(*options: str) -> Command:
    def command(count: int, port: int, app: str, access_log: bool,
                tls: Certificate | None = None) -> list[str]:  # fmt: skip
        argv = [peer_python(), "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
        argv += [*options, *_uvicorn_tls(tls), *([] if access_log else ["--no-access-log"])]
        return argv + (["--workers", str(count)] if count > 1 else [])

    return command


def _granian(*options: str) -> Command:
    def command(count: int, port: int, app: str, access_log: bool,
                tls: Certificate | None = None) -> list[str]:  # fmt: skip
        argv = [peer_python(), "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", str(count), *options]
        if tls is not None:  # (granian reads PKCS#8 keys only: bench/tls.py writes those)
            argv += ["--ssl-certificate", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile)]
        return argv + (["--access-log"] if access_log else []) + [app]

    return command


def _floor(loop: str) -> Command:
    def command(count: int, port: int, app: str, access_log: bool,
                tls: Certificate | None = None) -> list[str]:  # fmt: skip
        del app, access_log, tls  # (it has no app, no log, no TLS)
        return [sys.executable, "-m", "bench.floor", "--port", str(port),
                "--workers", str(count), "--loop", loop]  # fmt: skip

    return command


def _hypercorn(count: int, port: int, app: str, access_log: bool,
               tls: Certificate | None = None) -> list[str]:  # fmt: skip
    argv = [peer_python(), "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}"]
    if tls is not None:
        argv += ["--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile)]
    return argv + ["--workers", str(count)] + (["--access-logfile", "-"] if access_log else [])


SERVERS: dict[str, ServerKind] = {
    kind.name: kind
    for kind in (
        # The reference every ratio needs (bench/floor.py): no ASGI, a canned response.
        ServerKind(
            "floor",
            "the floor: a bare uvloop + httptools protocol, a canned response, no ASGI",
            _floor("uvloop"),
            paths=frozenset({"/"}),
        ),
        ServerKind(
            "floor-asyncio",
            "the floor on stdlib asyncio (httptools still parses)",
            _floor("asyncio"),
            paths=frozenset({"/"}),
        ),
        ServerKind(
            "shardserve",
            "process shards (httptools, uvloop; HTTP/2 on h2: h2c and ALPN h2)",
            _shardserve(),
            pins=True,
            protocols=ALL_PROTOCOLS,
        ),
        ServerKind(
            "shardserve-h11",
            "process shards on h11 and stdlib asyncio (the old fallback)",
            _shardserve("--http", "h11", "--loop", "asyncio"),
            pins=True,
            protocols=ALL_PROTOCOLS,
        ),
        ServerKind(
            "shardserve-python",
            "process shards on the pure-Python parser and stdlib asyncio (no C extensions)",
            _shardserve("--http", "python", "--loop", "asyncio"),
            pins=True,
            protocols=ALL_PROTOCOLS,
        ),
        ServerKind(
            "shardserve-python-uvloop",
            "process shards on the pure-Python parser (and its compiled head splitter) and uvloop",
            _shardserve("--http", "python", "--loop", "uvloop"),
            pins=True,
            protocols=ALL_PROTOCOLS,
        ),
        ServerKind(
            "shardserve-subinterpreter",
            "own-GIL subinterpreter shards (pure-Python parser, asyncio)",
            _shardserve("--shard-mode", "subinterpreter"),
            _subinterpreters_unavailable,
            pins=True,
            protocols=ALL_PROTOCOLS,
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
        # Both end an HTTP/2 connection after a number of streams, and h2load does not
        # reconnect: zttp 0.0.35 after 4096 (GOAWAY ENHANCE_YOUR_CALM, "flood detected"),
        # hypercorn after 1000 (keep_alive_max_requests).  At 64 connections and a few
        # seconds per run neither is reached here; past it the rest show as errors.
        ServerKind(
            "uvicorn-zttp",
            "uvicorn --workers --http zttp --http2 (zttp's Zig HTTP/1.1 and HTTP/2)",
            _uvicorn("--http", "zttp", "--http2"),
            _zttp_unavailable,
            protocols=ALL_PROTOCOLS,
        ),
        ServerKind(
            "granian",
            "granian --workers --interface asgi (--http auto: HTTP/1.1, h2c, ALPN h2)",
            _granian(),
            protocols=ALL_PROTOCOLS,
        ),
        ServerKind(
            "granian-h2",
            "granian --workers --interface asgi --http 2 (HTTP/2 only)",
            _granian("--http", "2"),
            protocols=HTTP2_ONLY,
        ),
        ServerKind(
            "hypercorn",
            "hypercorn --workers (h2 library: h2c and ALPN h2)",
            _hypercorn,
            protocols=ALL_PROTOCOLS,
        ),
    )
}
