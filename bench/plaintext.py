"""shardserve (1 shard) against uvicorn (1 worker, httptools + uvloop), plaintext hello.

    python bench/plaintext.py --server-cpus 1 --load-cpus 0 --runs 3 --seconds 5

Each server is pinned to --server-cpus and wrk to --load-cpus; servers alternate
within each run, and the table reports medians.  The verdict line compares server
CPU microseconds per request (the issue's target: shardserve <= 0.5x uvicorn).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    Measurement,
    Server,
    free_port,
    load_parser,
    measure,
    peer_python,
    summarize,
)


def servers(extra: list[str], access_log: bool) -> list[Server]:
    port_a, port_b = free_port(), free_port()
    shardserve = [sys.executable, "-m", "shardserve", "bench.apps:plaintext"]
    uvicorn = [peer_python(), "-m", "uvicorn", "bench.apps:plaintext"]
    # Access log on: both servers' defaults (lines go to /dev/null); off: the usual
    # benchmark setting.
    common = ["--host", "127.0.0.1"] + ([] if access_log else ["--no-access-log"])
    result = [
        Server("shardserve", [*shardserve, *common, "--port", str(port_a), *extra], port_a),
        Server(
            "uvicorn",
            [*uvicorn, *common, "--port", str(port_b), "--http", "httptools", "--loop", "uvloop"],
            port_b,
        ),
    ]
    return result


def main() -> None:
    parser = load_parser(__doc__)
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument(
        "--shardserve-arg", action="append", default=[], help="extra shardserve flag (repeat)"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="run both servers with their access log on"
    )
    args = parser.parse_args()

    results: dict[str, list[Measurement]] = {}
    for run in range(args.runs):
        for server in servers(args.shardserve_arg, args.access_log):
            m = measure(server, args.server_cpus, args.load_cpus, args.seconds, args.connections)
            results.setdefault(m.server, []).append(m)
            print(
                f"run {run + 1}: {m.server:<11} {m.rps:>9.0f} req/s  "
                f"p50 {m.p50_ms:.2f} ms  p99 {m.p99_ms:.2f} ms  "
                f"{m.cpu_us_per_request:.1f} us CPU/req  errors {m.errors}",
                file=sys.stderr,
            )

    print()
    medians = summarize(results)
    ratio = medians["shardserve"]["cpu"] / medians["uvicorn"]["cpu"]
    ratios = [
        a.cpu_us_per_request / b.cpu_us_per_request
        for a, b in zip(results["shardserve"], results["uvicorn"], strict=True)
    ]
    print(
        f"\nshardserve / uvicorn server CPU per request: {ratio:.2f}x of medians; "
        f"per run {', '.join(f'{r:.2f}' for r in ratios)} (target <= 0.50x)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({k: [vars(m) for m in v] for k, v in results.items()}, indent=2)
        )


if __name__ == "__main__":
    main()
