"""shardserve's HTTP parser back-ends side by side: server CPU per plaintext request.

    python bench/parsers.py --server-cpus 1 --load-cpus 0 --runs 3 --seconds 5
    python bench/parsers.py --browser-headers     # 12 header fields per request, not 1

One shard each, access log off; configurations alternate within each run.  The
verdict compares the pure-Python parser on stdlib asyncio (what a shard without C
extensions runs) with httptools on uvloop (the default) and with h11 on asyncio
(the fallback before the pure-Python parser existed).  ``python+uvloop`` separates
the parser's cost from the event loop's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Measurement, Server, free_port, load_parser, measure, summarize  # noqa: E402

CONFIGURATIONS = {
    "httptools+uvloop": ["--http", "httptools", "--loop", "uvloop"],
    "python+uvloop": ["--http", "python", "--loop", "uvloop"],
    "python+asyncio": ["--http", "python", "--loop", "asyncio"],
    "h11+asyncio": ["--http", "h11", "--loop", "asyncio"],
}

# What a browser sends for a page, less cookies: 12 fields, about 600 bytes.
BROWSER_HEADERS = [
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language: en-GB,en;q=0.5",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Referer: http://127.0.0.1/index.html",
    "Upgrade-Insecure-Requests: 1",
    "Sec-Fetch-Dest: document",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-Site: same-origin",
    "Sec-Fetch-User: ?1",
    "Priority: u=0, i",
]


def main() -> None:
    parser = load_parser(__doc__)
    parser.add_argument("--only", action="append", choices=list(CONFIGURATIONS))
    parser.add_argument("--browser-headers", action="store_true")
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args()
    wrk_args: tuple[str, ...] = ()
    if args.browser_headers:
        wrk_args = tuple(arg for header in BROWSER_HEADERS for arg in ("-H", header))

    names = args.only or list(CONFIGURATIONS)
    results: dict[str, list[Measurement]] = {}
    for run in range(args.runs):
        for name in names:
            port = free_port()
            argv = [sys.executable, "-m", "shardserve", "bench.apps:plaintext", "--host"]
            argv += ["127.0.0.1", "--port", str(port), "--no-access-log", *CONFIGURATIONS[name]]
            m = measure(
                Server(name, argv, port),
                args.server_cpus,
                args.load_cpus,
                args.seconds,
                args.connections,
                wrk_args=wrk_args,
            )
            results.setdefault(name, []).append(m)
            print(
                f"run {run + 1}: {name:<17} {m.rps:>9.0f} req/s  "
                f"{m.cpu_us_per_request:.1f} us CPU/req  errors {m.errors}",
                file=sys.stderr,
            )

    print()
    medians = summarize(results)
    if "python+asyncio" in medians:
        python = medians["python+asyncio"]["cpu"]
        print()
        if "httptools+uvloop" in medians:
            ratio = python / medians["httptools+uvloop"]["cpu"]
            print(f"python+asyncio / httptools+uvloop: {ratio:.2f}x (target <= 1.30x)")
        if "h11+asyncio" in medians:
            gain = medians["h11+asyncio"]["cpu"] / python
            print(f"h11+asyncio / python+asyncio: {gain:.2f}x (target >= 3.00x)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({k: [vars(m) for m in v] for k, v in results.items()}, indent=2)
        )


if __name__ == "__main__":
    main()
