"""python -m bench: servers side by side, on the CPUs you name, with figures to trust.

    python -m bench --servers shardserve,uvicorn,granian --workers 1,2,4 \\
        --workloads plaintext,json --server-cpus 8-15 --load-cpus 0-7 --runs 3

Every server (and all its processes) is pinned to --server-cpus, the load generator
(one wrk or h2load thread per load CPU) to --load-cpus.  Each run starts the server,
warms it up, measures, and stops it; rounds go through every cell in turn.  Writes
results.json, results.md and PNG charts to --out (default bench/results/<time>/).

HTTP/2 workloads (h2c-*, h2-tls-*) always run on h2load; the TLS ones on a self-signed
certificate made for this invocation.  A server kind that does not serve a workload's
protocol, or cannot run here (uvicorn-zttp without zttp), is skipped with the reason.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, checkout_of, peer_python  # noqa: E402
from bench.loadgen import GENERATORS, LoadError, require  # noqa: E402
from bench.matrix import Settings, run_matrix, skip_reason  # noqa: E402
from bench.report import draw_charts, write  # noqa: E402
from bench.servers import SERVERS, ServerKind  # noqa: E402
from bench.tls import CertificateError, self_signed  # noqa: E402
from bench.workloads import WORKLOADS  # noqa: E402
from shardserve.coord.placement import parse_cpu_list  # noqa: E402


def _names(text: str, known: dict, what: str) -> list:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"bench: unknown {what} {', '.join(unknown) or repr(text)}; "
                         f"choose from {', '.join(known)}")  # fmt: skip
    return [known[n] for n in names]


def revision_kinds(kinds: list[ServerKind], revision: str) -> list[ServerKind]:
    """--against REV: each shardserve kind again, run from that revision's tree."""
    try:
        root = checkout_of(revision)
    except subprocess.CalledProcessError:
        raise SystemExit(f"bench: --against {revision}: not a revision here") from None
    return [
        replace(kind, name=f"{kind.name}@{revision}", root=root, baseline=kind.name)
        for kind in kinds
        if kind.pins  # (the shardserve kinds)
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="shardserve,uvicorn", help=", ".join(SERVERS))
    parser.add_argument("--workers", default="1", help="worker (shard) counts, e.g. 1,2,4")
    parser.add_argument("--workloads", default="plaintext", help=", ".join(WORKLOADS))
    parser.add_argument("--server-cpus", default="1", help="CPUs the servers are pinned to")
    parser.add_argument("--load-cpus", default="0", help="CPUs the load generator is pinned to")
    parser.add_argument("--load-generator", choices=GENERATORS, default="wrk")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--pin", action="store_true", help="pin shard i to the i-th server CPU (shardserve only)"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="every server logs each request (to /dev/null)"
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also run each shardserve kind from this git revision, with paired ratios",
    )
    parser.add_argument(
        "--ratio-to",
        metavar="KIND",
        help="paired ratios of every other server to this one (e.g. floor)",
    )
    parser.add_argument("--out", help="directory for the results (default bench/results/<time>)")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds < 1 or args.connections < 1:
        parser.error("--runs, --seconds and --connections must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    kinds = _names(args.servers, SERVERS, "server")
    if args.ratio_to and args.ratio_to not in {kind.name for kind in kinds}:
        raise SystemExit(f"bench: --ratio-to {args.ratio_to}: not among --servers")
    if args.against:
        kinds += revision_kinds(kinds, args.against)
    workloads = _names(args.workloads, WORKLOADS, "workload")
    try:
        counts = [int(n) for n in args.workers.split(",")]
        server_cpus = parse_cpu_list(args.server_cpus)
        load_cpus = parse_cpu_list(args.load_cpus)
    except ValueError as exc:
        raise SystemExit(f"bench: {exc}") from None
    if any(n < 1 for n in counts):
        raise SystemExit("bench: --workers counts must be at least 1")
    if args.pin:
        if any(not kind.pins for kind in kinds):
            raise SystemExit("bench: --pin: only shardserve pins its workers; drop the others")
        if max(counts) > len(server_cpus):
            raise SystemExit(f"bench: --pin: {max(counts)} workers, {len(server_cpus)} server CPUs")
    if args.load_generator == "h2load" and any(w.new_connection for w in workloads):
        raise SystemExit("bench: h2load keeps its connections open: new-connection needs wrk")
    unavailable = {kind.name: kind.unavailable() for kind in kinds}
    for name, reason in unavailable.items():
        if reason is not None:
            print(f"bench: skipping {name}, which cannot run here: {reason}", file=sys.stderr)
    runnable = [
        (kind, w) for w in workloads for kind in kinds if skip_reason(kind, w, unavailable) is None
    ]
    if not runnable:
        why = "; ".join(f"{k.name} on {w.name}: {skip_reason(k, w, unavailable)}"
                        for w in workloads for k in kinds)  # fmt: skip
        raise SystemExit(f"bench: nothing to run ({why})")
    try:
        if any(not w.websocket and not w.http2 for _, w in runnable):
            require(args.load_generator)
        if any(w.http2 for _, w in runnable):
            require("h2load")
    except LoadError as exc:
        raise SystemExit(f"bench: {exc}") from None
    if set(server_cpus) & set(load_cpus):
        print("bench: warning: server and load CPUs overlap; figures will mix the two",
              file=sys.stderr)  # fmt: skip
    settings = Settings(
        server_cpus=server_cpus,
        load_cpus=load_cpus,
        generator=args.load_generator,
        runs=args.runs,
        seconds=args.seconds,
        warmup=args.warmup,
        connections=args.connections,
        pin=args.pin,
        access_log=args.access_log,
    )
    out = (
        Path(args.out) if args.out else ROOT / "bench" / "results" / time.strftime("%Y%m%d-%H%M%S")
    )
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        tls = None
        if any(w.tls for _, w in runnable):
            try:
                tls = self_signed(Path(tmp))
            except CertificateError as exc:
                raise SystemExit(f"bench: {exc}") from None
        cells = run_matrix(kinds, counts, workloads, settings, tls, unavailable)
    ratios_of = [(k.baseline, k.name) for k in kinds if k.baseline]
    if args.ratio_to:
        ratios_of += [(k.name, args.ratio_to) for k in kinds if k.name != args.ratio_to]
    write(out, cells, settings, argv, ratios_of)
    print((out / "results.md").read_text())
    if not args.no_charts:
        why_not = draw_charts(out, peer_python())
        if why_not:
            print(f"bench: no charts: {why_not}", file=sys.stderr)
    failed = sum(1 for c in cells for r in c.runs if "failed" in r)
    skipped = sum(1 for c in cells if c.skipped is not None)
    print(f"Results in {out} ({len(cells)} cells, {skipped} skipped, {failed} failed runs).")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
