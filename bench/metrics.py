"""What --metrics costs: plaintext with the coordinator's metrics listener on and off.

    python bench/metrics.py --server-cpus 1 --load-cpus 0 --runs 5 --seconds 5

Two shards either way (both on --server-cpus), configurations alternating within each
run; while metrics are on, a scraper reads /metrics ten times a second throughout.
The shards send the same Stats once a second in both cases: this measures the
coordinator's side (aggregation, exposition) and that nothing reached the hot path.
"""

from __future__ import annotations

import sys
import threading
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
    summarize,  # noqa: E402
)


def scraper(port: int, stop: threading.Event) -> None:
    with httpx.Client() as client:
        while not stop.is_set():
            try:
                client.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except httpx.HTTPError:
                pass
            time.sleep(0.1)


def main() -> None:
    args = load_parser(__doc__).parse_args()
    results: dict[str, list[Measurement]] = {}
    for run in range(args.runs):
        for name in ("metrics off", "metrics on"):
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
                    Server(name, argv, port),
                    args.server_cpus,
                    args.load_cpus,
                    args.seconds,
                    args.connections,
                )
            finally:
                stop.set()
            results.setdefault(name, []).append(m)
            print(f"run {run + 1}: {name:<12} {m.rps:>9.0f} req/s", file=sys.stderr)
    print()
    medians = summarize(results)
    ratio = medians["metrics on"]["rps"] / medians["metrics off"]["rps"]
    print(f"\nthroughput with metrics / without: {ratio:.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
