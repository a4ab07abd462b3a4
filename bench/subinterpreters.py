"""Process shards against subinterpreter shards, same Python, same pure-Python pipeline.

    .venv313/bin/python bench/subinterpreters.py --server-cpus 1 --load-cpus 0 --runs 3

Run it with Python 3.13+ (CI's .venv313).  Both modes serve the plaintext app on
stdlib asyncio with the pure-Python parser (all a subinterpreter can load), so the
comparison is the hosting alone:

- server CPU per request: 2 shards, the whole server pinned to --server-cpus, wrk on
  --load-cpus, modes alternating within each run (medians);
- memory: the server's total PSS and USS over its process tree with 1 and with 3
  shards; what one more shard costs is half the difference;
- time from start to the first 200 response (median of --starts).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.harness import (  # noqa: E402
    Measurement,
    Server,
    free_port,
    load_parser,
    measure,
    stop,
    summarize,
    tree_memory,
)

MODES = {
    # --pin keeps even one process shard out of the in-process mode.
    "process": ["--shard-mode", "process"],
    "subinterpreter": ["--shard-mode", "subinterpreter"],
}
PIPELINE = ["--http", "python", "--loop", "asyncio", "--no-access-log"]


def argv(mode: str, port: int, shards: int) -> list[str]:
    extra = ["--pin"] if mode == "process" and shards == 1 else []
    return [
        sys.executable, "-m", "shardserve", "bench.apps:plaintext", "--host", "127.0.0.1",
        "--port", str(port), "--shards", str(shards), *MODES[mode], *PIPELINE, *extra,
    ]  # fmt: skip


def server_memory(mode: str, shards: int, requests: int) -> dict[str, int]:
    port = free_port()
    proc = Server(mode, argv(mode, port, shards), port).start("0-1023")
    try:
        with httpx.Client() as client:
            for _ in range(requests):
                client.get(f"http://127.0.0.1:{port}/", headers={"connection": "close"})
        time.sleep(0.5)
        return tree_memory(proc.pid)
    finally:
        stop(proc)


def time_to_first_response(mode: str, shards: int) -> float:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        argv(mode, port, shards), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = started + 30
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                if response.status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                time.sleep(0.005)
        raise RuntimeError(f"{mode}: no response within 30 s")
    finally:
        stop(proc)


def main() -> None:
    parser = load_parser(__doc__)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    if sys.version_info < (3, 13):
        sys.exit("run with Python 3.13 or newer (e.g. .venv313/bin/python)")

    results: dict[str, list[Measurement]] = {}
    for run in range(args.runs):
        for mode in MODES:
            port = free_port()
            m = measure(
                Server(mode, argv(mode, port, 2), port),
                args.server_cpus,
                args.load_cpus,
                args.seconds,
                args.connections,
            )
            results.setdefault(mode, []).append(m)
            cpu = m.cpu_us_per_request
            print(f"run {run + 1}: {mode:<15} {cpu:.1f} us CPU/req", file=sys.stderr)
    print("\nServer CPU per request, 2 shards on one CPU:\n")
    medians = summarize(results)
    ratio = medians["subinterpreter"]["cpu"] / medians["process"]["cpu"]
    print(f"\nsubinterpreter / process: {ratio:.2f}x (target <= 1.20x)")

    print("\nMemory (whole server, all processes; kB), after requests:\n")
    print("| mode | 1 shard PSS | 3 shards PSS | per extra shard PSS | per extra shard USS |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        one = server_memory(mode, 1, args.requests)
        three = server_memory(mode, 3, args.requests)
        pss, uss = (three["pss_kb"] - one["pss_kb"]) // 2, (three["uss_kb"] - one["uss_kb"]) // 2
        print(f"| {mode} | {one['pss_kb']} | {three['pss_kb']} | {pss} | {uss} |")

    print(f"\nStart to first response (median of {args.starts}), seconds:\n")
    print("| mode | 1 shard | 4 shards |")
    print("|---|---|---|")
    for mode in MODES:
        cells = []
        for shards in (1, 4):
            times = [time_to_first_response(mode, shards) for _ in range(args.starts)]
            cells.append(f"{statistics.median(times):.3f}")
        print(f"| {mode} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
