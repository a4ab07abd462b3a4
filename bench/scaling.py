"""Scaling sweep: the plaintext app with 1..N shards under the same load settings.

    python bench/scaling.py --server-cpus 1 --load-cpus 0 --shards 1,2,4 --runs 3
    python bench/scaling.py --server-cpus 8-15 --load-cpus 0-7 --shards 1,2,4,8 --pin

The server (coordinator, template and shards) is confined to --server-cpus and wrk
to --load-cpus (one wrk thread per load CPU).  With --pin, shard i is pinned to the
i-th server CPU.  Reported per shard count: requests/s, and the CPU time of the whole
server process tree per request.  On a host with fewer server CPUs than shards, the
sweep can only show that the per-request cost does not grow with the shard count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Server, free_port, measure, summarize  # noqa: E402
from shardserve.coord.placement import parse_cpu_list  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--load-cpus", default="0")
    parser.add_argument("--shards", default="1,2,4", help="comma-separated shard counts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections-per-shard", type=int, default=64)
    parser.add_argument("--pin", action="store_true", help="pin shard i to the i-th server CPU")
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args()

    server_cpus = parse_cpu_list(args.server_cpus)
    load_threads = len(parse_cpu_list(args.load_cpus))
    counts = [int(n) for n in args.shards.split(",")]
    results: dict[int, list] = {}
    for run in range(args.runs):
        for count in counts:
            port = free_port()
            argv = [sys.executable, "-m", "shardserve", "bench.apps:plaintext"]
            argv += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
            argv += ["--shards", str(count)]
            if args.pin:
                if count > len(server_cpus):
                    sys.exit(f"--pin: {count} shards but only {len(server_cpus)} server CPUs")
                argv += ["--pin", "--cpus", ",".join(map(str, server_cpus[:count]))]
            connections = max(args.connections_per_shard * count, load_threads)
            m = measure(
                Server(f"{count} shards", argv, port),
                args.server_cpus,
                args.load_cpus,
                args.seconds,
                connections,
                threads=load_threads,
            )
            results.setdefault(count, []).append(m)
            print(
                f"run {run + 1}: {count:>3} shards {m.rps:>10.0f} req/s "
                f"{m.cpu_us_per_request:6.1f} us CPU/req  errors {m.errors}",
                file=sys.stderr,
            )
    summarize({f"{count} shards": ms for count, ms in results.items()})
    if args.json:
        Path(args.json).write_text(
            json.dumps({k: [vars(m) for m in v] for k, v in results.items()}, indent=2)
        )


if __name__ == "__main__":
    main()
