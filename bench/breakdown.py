"""Where one shard's time goes per request, by stage: sampled under real load.

Starts one shard (pinned to ``--server-cpu``), drives it with wrk (on
``--load-cpu``), and samples the shard with ``py-spy record --native`` (wall
clock, C frames included; py-spy pauses the shard for each sample, as --native
needs), then attributes each sample to a stage by the
innermost frame that names one:

    system calls    read/write/recv/send/epoll and the rest of the kernel's share
    event loop      uvloop/libuv, asyncio's loop and transports
    parse           the HTTP parser (httptools/llhttp or shardserve's), framing checks
    scope           building the ASGI scope, proxy headers
    request         the connection's request lifecycle, starting the app's coroutine
    app             the application itself
    send/receive    the ASGI send and receive callables
    rendering       the response head and body framing
    counting        per-request counters and latency
    other           everything else (the interpreter's own frames stay with their caller)

    python -m bench.breakdown [--http httptools] [--loop uvloop] [--seconds 10]
    python -m bench.breakdown --python .venv313/bin/python --http python --loop asyncio

Shares are of the shard's samples while it was busy; multiply by the server CPU per
request from ``python -m bench`` for microseconds.  Needs py-spy (pip install py-spy,
into the interpreter running this); its pauses add a little to every stage.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import ROOT, free_port, stop, wait_for_port

STAGES = (
    "system calls",
    "event loop",
    "parse",
    "scope",
    "request",
    "app",
    "send/receive",
    "rendering",
    "counting",
    "other",
)

# (stage, pattern on "function (file)"), innermost frame first; the first that matches
# any rule names the sample's stage.  Frames of the interpreter itself match none.
RULES: list[tuple[str, re.Pattern[str]]] = [
    (stage, re.compile(pattern))
    for stage, pattern in (
        (
            "system calls",
            r"^(__GI_)?(__libc_)?(write|writev|read|readv|recv|recvfrom|send|"
            r"sendto|sendmsg|recvmsg|epoll_wait|epoll_pwait|epoll_ctl|accept4?|"
            r"close|syscall) \((libc|linux-vdso)",
        ),  # fmt: skip
        (
            "parse",
            r"shard/http/(parser\w*|framing)\.py|httptools|llhttp|"
            r"\((parser|llhttp|api|http)\.c:",
        ),  # fmt: skip
        (
            "counting",
            r"\baccount \(|shard/(counters|state)\.py|access_log\.py|"
            r"\bresponse_done \(",
        ),  # fmt: skip
        ("scope", r"shard/http/(scope|proxy)\.py"),
        ("rendering", r"shard/http/response\.py|\b(_start|_write_body|_complete) \(.*cycle\.py"),
        ("send/receive", r"\b(send|receive|_wait) \(.*cycle\.py"),
        ("app", r"^app \(hello\.py|examples/hello\.py|bench/apps\.py"),
        ("request", r"shard/http/(protocol|cycle|eager)\.py|shard/connection\.py"),
        (
            "event loop",
            r"uvloop|libuv|\buv_\w+|asyncio/|selectors\.py|_asyncio|"
            r"shard/(accept|server)\.py|"
            r"\((loop|core|linux|stream|tcp|timer|poll|async|uv-common)\.c:",
        ),  # fmt: skip
    )
]


def stage_of(stack: list[str]) -> str:
    """``stack``: frames outermost first, as py-spy's raw output lists them."""
    for frame in reversed(stack):
        for stage, rule in RULES:
            if rule.search(frame):
                return stage
    return "other"


def tally(raw: str) -> collections.Counter[str]:
    """py-spy's raw (collapsed) output: 'frame;frame;... count' per line."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any("epoll_wait" in f or "select (" in f for f in frames[-3:]) and idle(frames):
            counts["idle"] += int(count)
            continue
        counts[stage_of(frames)] += int(count)
    return counts


def idle(frames: list[str]) -> bool:
    """Waiting in the loop's poll with nothing to do (not a request's cost)."""
    return not any(re.search(r"shard/http/|hello\.py|bench/apps", f) for f in frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__)
    parser.add_argument("--python", default=sys.executable, help="the server's interpreter")
    parser.add_argument("--http", default="httptools")
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument("--shard-mode", default="process")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--server-cpu", default="1")
    parser.add_argument("--load-cpu", default="0")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("bench.breakdown: needs py-spy (pip install py-spy)")
    port = free_port()
    argv_server = [
        "taskset", "-c", args.server_cpu, args.python, "-m", "shardserve",
        "examples.hello:app", "--port", str(port), "--no-access-log",
        "--http", args.http, "--loop", args.loop, "--shard-mode", args.shard_mode,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(argv_server, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, server)
        url = f"http://127.0.0.1:{port}/"
        warm = ["taskset", "-c", args.load_cpu, "wrk", "-t1", f"-c{args.connections}", "-d2s", url]
        subprocess.run(warm, capture_output=True, check=True)
        wrk = subprocess.Popen(
            ["taskset", "-c", args.load_cpu, "wrk", "-t1", f"-c{args.connections}",
             f"-d{args.seconds + 2:g}s", url],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.0)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "raw.txt"
            subprocess.run(
                [spy, "record", "--pid", str(server.pid), "--native",
                 "--rate", str(args.rate), "--duration", f"{args.seconds:g}",
                 "--format", "raw", "--output", str(out)],
                capture_output=True, check=True,
            )  # fmt: skip
            raw = out.read_text()
        wrk_out, _ = wrk.communicate(timeout=args.seconds + 30)
    finally:
        stop(server)
    counts = tally(raw)
    busy = sum(v for k, v in counts.items() if k != "idle")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", wrk_out)
    what = f"{args.python} --http {args.http} --loop {args.loop} --shard-mode {args.shard_mode}"
    rate = rps[1] if rps else "?"
    print(f"{what}: {busy} busy samples, {counts['idle']} idle; wrk {rate} req/s")
    print("| stage | share of busy samples |")
    print("|---|---|")
    for stage in STAGES:
        print(f"| {stage} | {counts[stage] / busy:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
