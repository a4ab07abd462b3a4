"""WebSocket throughput: shardserve against uvicorn on one core, side by side.

    python bench/websocket.py --server-cpus 1 --load-cpus 0 --runs 3 --seconds 5

Two workloads, each server pinned to --server-cpus and the load (a websockets client
in this script's child process) to --load-cpus:

- echo: --clients connections each send a 32-byte text message and wait for its echo,
  in a loop: round trips per second;
- broadcast: --clients connections listen; one more sends a message every time the
  previous one has reached every listener: messages delivered per second.

Reported: the rate, and the server's CPU time per round trip or delivered message.
uvicorn runs with its default WebSocket implementation (`--ws auto`, the websockets
library) and with `--ws websockets-sansio`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Server, cpu_seconds, free_port, peer_python, stop  # noqa: E402

MESSAGE = "x" * 32


async def _echo_load(port: int, clients: int, seconds: float) -> int:
    from websockets.asyncio.client import connect

    deadline = time.monotonic() + seconds
    counts = [0] * clients

    async def client(i: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/echo", compression=None) as ws:
            while time.monotonic() < deadline:
                await ws.send(MESSAGE)
                await ws.recv()
                counts[i] += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return sum(counts)


async def _broadcast_load(port: int, clients: int, seconds: float) -> int:
    from websockets.asyncio.client import connect

    listeners = [
        await connect(f"ws://127.0.0.1:{port}/broadcast", compression=None) for _ in range(clients)
    ]
    delivered = 0
    try:
        async with connect(f"ws://127.0.0.1:{port}/broadcast", compression=None) as sender:
            await asyncio.sleep(0.2)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await sender.send(MESSAGE)
                await sender.recv()  # the sender is a subscriber too
                for ws in listeners:
                    await ws.recv()
                delivered += clients + 1
    finally:
        for ws in listeners:
            await ws.close()
    return delivered


def load_main() -> None:
    """Child process entry: run one workload, print the count as JSON."""
    workload, port, clients, seconds = (
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        float(sys.argv[5]),
    )
    runner = _echo_load if workload == "echo" else _broadcast_load
    count = asyncio.run(runner(port, clients, seconds))
    print(json.dumps({"count": count}))


def run_load(workload: str, port: int, load_cpus: str, clients: int, seconds: float) -> int:
    out = subprocess.run(
        ["taskset", "-c", load_cpus, sys.executable, __file__, "--load", workload, str(port)]
        + [str(clients), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["count"]


def servers() -> list[Server]:
    ports = [free_port() for _ in range(3)]
    common = ["--host", "127.0.0.1", "--no-access-log"]
    uvicorn = [peer_python(), "-m", "uvicorn", "bench.apps:websockets", *common]
    uvicorn += ["--http", "httptools", "--loop", "uvloop"]
    return [
        Server(
            "shardserve",
            [sys.executable, "-m", "shardserve", "bench.apps:websockets", *common]
            + ["--port", str(ports[0]), "--no-ws-per-message-deflate"],
            ports[0],
        ),
        Server("uvicorn", [*uvicorn, "--port", str(ports[1]), "--ws", "websockets"], ports[1]),
        Server(
            "uvicorn-sansio",
            [*uvicorn, "--port", str(ports[2]), "--ws", "websockets-sansio"],
            ports[2],
        ),
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load_main()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--load-cpus", default="0")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for run in range(args.runs):
        for workload in ("echo", "broadcast"):
            for server in servers():
                proc = server.start(args.server_cpus)
                try:
                    before = cpu_seconds(proc.pid)
                    started = time.monotonic()
                    count = run_load(
                        workload, server.port, args.load_cpus, args.clients, args.seconds
                    )
                    elapsed = time.monotonic() - started
                    used = cpu_seconds(proc.pid) - before
                finally:
                    stop(proc)
                rate = count / elapsed
                cpu = used / max(count, 1) * 1e6
                results.setdefault((workload, server.name), []).append((rate, cpu))
                print(
                    f"run {run + 1}: {workload:<9} {server.name:<15} {rate:>9.0f}/s "
                    f"{cpu:6.1f} us CPU each",
                    file=sys.stderr,
                )
    print("| workload | server | per second | server CPU us each |")
    print("|---|---|---|---|")
    for (workload, name), values in results.items():
        print(
            f"| {workload} | {name} | {statistics.median(v[0] for v in values):.0f} "
            f"| {statistics.median(v[1] for v in values):.1f} |"
        )


if __name__ == "__main__":
    main()
