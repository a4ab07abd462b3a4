"""What stats and --metrics cost: plaintext with them and without, in one run.

    python bench/metrics.py --server-cpus 1 --load-cpus 0 --runs 5 --seconds 5
    python bench/metrics.py --against 823bc66 ...   # also a revision before shard stats

Two shards either way (both on --server-cpus), configurations alternating within each
run; while metrics are on, a scraper reads /metrics ten times a second throughout.
Shards always keep their counters (latency histogram included) and send Stats once a
second, so "metrics off" measures only the coordinator's side (aggregation,
exposition).  What the counting costs on the hot path shows against ``--against
REV``: the same server from a revision without it, run from a copy of that tree.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.harness import (  # noqa: E402
    ROOT,
    Measurement,
    Server,
    checkout_of,
    free_port,
    load_parser,
    measure,
    summarize,  # noqa: E402
)
from shardserve.coord.placement import parse_cpu_list  # noqa: E402


def scraper(port: int, stop: threading.Event) -> None:
    with httpx.Client() as client:
        while not stop.is_set():
            try:
                client.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except httpx.HTTPError:
                pass
            time.sleep(0.1)


def main() -> None:
    parser = load_parser(__doc__)
    parser.add_argument("--against", metavar="REV", help="also run this git revision")
    args = parser.parse_args()
    # The scraper (a thread of this process) runs beside wrk, off the server's CPUs.
    os.sched_setaffinity(0, parse_cpu_list(args.load_cpus))
    configs = ["metrics off", "metrics on"]
    roots = {name: ROOT for name in configs}
    if args.against:
        baseline = f"at {args.against}"
        configs.insert(0, baseline)
        roots[baseline] = checkout_of(args.against)
    results: dict[str, list[Measurement]] = {}
    for run in range(args.runs):
        # Each round starts with the next configuration: none always runs last.
        for name in configs[run % len(configs) :] + configs[: run % len(configs)]:
            port = free_port()
            argv = [sys.executable, "-m", "shardserve", "bench.apps:plaintext", "--host"]
            argv += ["127.0.0.1", "--port", str(port), "--no-access-log", "--shards", "2"]
            stop = threading.Event()
            if name == "metrics on":
                metrics_port = free_port()
                argv += ["--metrics", f"127.0.0.1:{metrics_port}"]
                threading.Thread(target=scraper, args=(metrics_port, stop), daemon=True).start()
            try:
                m = measure(
                    Server(name, argv, port, roots[name]),
                    args.server_cpus,
                    args.load_cpus,
                    args.seconds,
                    args.connections,
                )
            finally:
                stop.set()
            results.setdefault(name, []).append(m)
            print(f"run {run + 1}: {name:<16} {m.rps:>9.0f} req/s", file=sys.stderr)
    print()
    summarize(results)
    # Paired: each run's ratio against the baseline measured beside it, then the median,
    # so that drift on a shared machine (which moves both alike) cancels out.
    base = configs[0]
    for name in configs[1:]:
        pairs = list(zip(results[name], results[base], strict=True))
        rps = statistics.median(m.rps / b.rps for m, b in pairs)
        cpu = statistics.median(m.cpu_us_per_request / b.cpu_us_per_request for m, b in pairs)
        print(f"{name} / {base}: throughput {rps:.3f} (target >= 0.97), CPU/request {cpu:.3f}")


if __name__ == "__main__":
    main()
