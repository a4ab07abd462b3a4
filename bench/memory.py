"""Memory per shard (or worker): shardserve process shards against uvicorn --workers.

    python bench/memory.py --workers 2 --requests 500

Each server serves the plaintext hello app with N workers; after a warm-up of
requests, the private memory (USS: Private_Clean + Private_Dirty) and PSS of every
worker process are read from /proc/PID/smaps_rollup.  USS is what each extra worker
costs; PSS spreads shared pages over the processes sharing them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.harness import (  # noqa: E402
    Server,
    free_port,
    memory,
    peer_python,
    process_tree,
    stop,
)


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def measure(name: str, argv: list[str], port: int, requests: int, workers: int) -> list[dict]:
    server = Server(name, argv, port)
    proc = server.start("0-1023")
    try:
        with httpx.Client() as client:
            for _ in range(requests):
                client.get(f"http://127.0.0.1:{port}/", headers={"connection": "close"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            tree = process_tree(proc.pid)[1:]
            workers_found = [p for p in tree if _is_worker(name, p)]
            if len(workers_found) >= workers:
                break
            time.sleep(0.1)
        return [{"pid": p, "name": comm(p), **memory(p)} for p in workers_found]
    finally:
        stop(proc)


def _is_worker(server: str, pid: int) -> bool:
    try:
        name = comm(pid)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if server == "shardserve":
        return name.startswith("shardserve-") and name != "shardserve-tmpl"
    return b"spawn_main" in cmdline  # not the resource tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    n = str(args.workers)
    port_a, port_b = free_port(), free_port()
    common = ["--host", "127.0.0.1", "--no-access-log"]
    runs = {
        "shardserve": (
            [sys.executable, "-m", "shardserve", "bench.apps:plaintext", *common]
            + ["--port", str(port_a), "--shards", n],
            port_a,
        ),
        "uvicorn": (
            [peer_python(), "-m", "uvicorn", "bench.apps:plaintext", *common]
            + ["--port", str(port_b), "--workers", n, "--http", "httptools", "--loop", "uvloop"],
            port_b,
        ),
    }
    print("| server | worker | USS MB | PSS MB | RSS MB |")
    print("|---|---|---|---|---|")
    summary = {}
    for name, (argv, port) in runs.items():
        rows = measure(name, argv, port, args.requests, args.workers)
        for row in rows:
            print(
                f"| {name} | {row['name']} | {row['uss_kb'] / 1024:.1f} "
                f"| {row['pss_kb'] / 1024:.1f} | {row['rss_kb'] / 1024:.1f} |"
            )
        summary[name] = statistics.median(row["uss_kb"] for row in rows) / 1024 if rows else 0
    print()
    for name, uss in summary.items():
        print(f"{name}: median USS per worker {uss:.1f} MB")


if __name__ == "__main__":
    main()
