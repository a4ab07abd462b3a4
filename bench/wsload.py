"""The WebSocket load client of `python -m bench`: one process per load CPU.

    python -m bench.wsload echo PORT --connections 64 --seconds 5 --cpus 0-3

One Python client process saturates its CPU before a server does, so the load is
spread over one child per load CPU, each pinned there with its share of the
connections.  The children connect, say so, and start together when the parent says
go; the parent sums their counts, merges their latency samples and prints one JSON
object.  Modes, named after the ``bench.apps:app`` path they use:

- echo: each connection sends a 32-byte text message and waits for its echo, in a
  loop: round trips per second, and each round trip's latency;
- broadcast: every connection subscribes; one per child also sends, keeping a few
  messages on their way: messages delivered (received by any subscriber) per second.
  The app fans out to the subscribers of its own worker.

Compression is off (no per-message-deflate offered), as in every server's default
handshake with such a client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT  # noqa: E402
from shardserve.coord.placement import parse_cpu_list  # noqa: E402

MODES = ("echo", "broadcast")
MESSAGE = "x" * 32
IN_FLIGHT = 4  # broadcast messages a sender has sent and not yet seen come back


# One child: its share of the connections on one CPU -------------------------------------


async def _echo(ws: Any, counts: list[int], i: int, latencies_us: list[int]) -> None:
    while True:
        started = time.perf_counter_ns()
        await ws.send(MESSAGE)
        await ws.recv()
        latencies_us.append((time.perf_counter_ns() - started) // 1000)
        counts[i] += 1


async def _listen(ws: Any, counts: list[int], i: int) -> None:
    while True:
        await ws.recv()
        counts[i] += 1


async def _send(ws: Any, counts: list[int], i: int) -> None:
    """Keep IN_FLIGHT messages on their way: send a new one each time one of this
    sender's comes back (counting all it reads), so the server sets the pace, not a
    round trip."""
    tag = f"{os.getpid()}:"
    sent = 0
    while True:
        while sent < IN_FLIGHT:
            await ws.send(f"{tag}{counts[i]}:".ljust(len(MESSAGE), "x"))
            sent += 1
        if (await ws.recv()).startswith(tag):
            sent -= 1
        counts[i] += 1


async def _child(mode: str, port: int, connections: int, seconds: float) -> dict:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}/{mode}"
    sockets = [await connect(url, compression=None) for _ in range(connections)]
    print("ready", flush=True)
    sys.stdin.readline()  # go (the loop has nothing else to do meanwhile)
    counts = [0] * connections
    latencies_us: list[int] = []
    if mode == "echo":
        jobs = [_echo(ws, counts, i, latencies_us) for i, ws in enumerate(sockets)]
    else:
        jobs = [_send(sockets[0], counts, 0)]
        jobs += [_listen(ws, counts, i) for i, ws in enumerate(sockets) if i]
    tasks = [asyncio.ensure_future(job) for job in jobs]
    started, cpu = time.monotonic(), time.process_time()
    ended, _ = await asyncio.wait(tasks, timeout=seconds)  # (a task ends only on error)
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    closing = asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    try:
        await asyncio.wait_for(closing, 5)
    except TimeoutError:
        pass
    return {
        "count": sum(counts),
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "errors": len(ended),
        "latencies_us": latencies_us,
    }


def _run_child(mode: str, port: int, connections: int, seconds: float) -> None:
    try:
        import uvloop  # a cheaper client loop: more load per load CPU
    except ImportError:
        result = asyncio.run(_child(mode, port, connections, seconds))
    else:
        result = uvloop.run(_child(mode, port, connections, seconds))
    # The whole line, however many writes it takes: a pipe write can be cut short
    # (seen here at 64 KiB, the pipe's size), and print then loses the rest.
    data = json.dumps(result).encode() + b"\n"
    while data:
        data = data[os.write(sys.stdout.fileno(), data) :]


# The parent: one child per CPU, started together, figures merged -------------------------


def _percentile_ms(ordered: list[int], q: float) -> float | None:
    """Nearest-rank percentile of sorted microsecond samples, in milliseconds."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1000


def run(mode: str, port: int, connections: int, seconds: float, cpus: list[int]) -> dict:
    """Load 127.0.0.1:``port`` from one child per CPU in ``cpus``; the merged figures."""
    cpus = cpus[:connections]  # (every child gets at least one connection)
    shares = [connections // len(cpus) + (i < connections % len(cpus)) for i in range(len(cpus))]
    children = [
        subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, "-m", "bench.wsload", "--child"]
            + [mode, str(port), f"--connections={share}", f"--seconds={seconds}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for cpu, share in zip(cpus, shares, strict=True)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                _, err = child.communicate(timeout=10)
                raise SystemExit(f"bench.wsload: a client did not connect: {_last(err)}")
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, err = child.communicate(timeout=seconds + 30)
            if child.returncode != 0:
                raise SystemExit(f"bench.wsload: a client failed: {_last(err)}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    ordered = sorted(sample for r in results for sample in r["latencies_us"])
    return {
        "mode": mode,
        "count": sum(r["count"] for r in results),
        "rate": sum(r["count"] / r["seconds"] for r in results),
        "seconds": max(r["seconds"] for r in results),
        "p50_ms": _percentile_ms(ordered, 0.50),
        "p99_ms": _percentile_ms(ordered, 0.99),
        "max_ms": _percentile_ms(ordered, 1.0),
        "errors": sum(r["errors"] for r in results),
        # Busy share of the load CPUs while measuring (not starting up): near 1, the
        # client was the bottleneck.
        "load_cpu_share": sum(r["cpu_seconds"] for r in results)
        / sum(r["seconds"] for r in results),
        "processes": [{"cpu": cpu, "connections": share, "count": r["count"]}
                      for cpu, share, r in zip(cpus, shares, results, strict=True)],
    }  # fmt: skip


def _last(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else "no error output"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.wsload", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cpus", default="0", help="one client process per CPU, pinned there")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.connections < 1 or args.seconds <= 0:
        parser.error("--connections and --seconds must be positive")
    if args.child:
        _run_child(args.mode, args.port, args.connections, args.seconds)
        return
    try:
        cpus = parse_cpu_list(args.cpus)
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(run(args.mode, args.port, args.connections, args.seconds, cpus)))


if __name__ == "__main__":
    main()
