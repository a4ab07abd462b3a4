"""Load generators for `python -m bench`: wrk, h2load, and bench.wsload (WebSocket).

Each runs pinned to the load CPUs and reports, beside the server-facing figures, how
busy it was itself (its CPU time over its CPUs' time): a load generator near 100% is
the bottleneck, and its figure is not the server's.
"""

from __future__ import annotations

import json
import math
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import ROOT, duration_ms, run_wrk
from bench.workloads import Workload

GENERATORS = ("wrk", "h2load")
INSTALL = {"wrk": "apt-get install wrk", "h2load": "apt-get install nghttp2-client"}
# At or above this share of its CPUs, the load generator is the bottleneck.
SATURATED = 0.9


class LoadError(Exception):
    """One line for the user: the load could not be generated."""


@dataclass
class LoadResult:
    requests: int  # (WebSocket: round trips)
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    load_cpu_share: float  # the generator's CPU time / (its CPUs x seconds)


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LoadError(f"{tool} is not installed: {INSTALL[tool]}")
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(
    generator: str,
    workload: Workload,
    port: int,
    load_cpus: list[int],
    seconds: float,
    connections: int,
) -> LoadResult:
    """Drive ``workload`` at 127.0.0.1:``port`` for ``seconds``."""
    if workload.websocket:  # (bench.wsload measures its own share, start-up left out)
        return _websocket(workload, port, load_cpus, seconds, connections)
    cpus = ",".join(map(str, load_cpus))
    before = _children_cpu()  # (the generator is a child; its CPU counts once it exits)
    started = time.monotonic()
    if generator == "wrk":
        result = _wrk(workload, port, cpus, seconds, connections, len(load_cpus))
    else:
        result = _h2load(workload, port, cpus, seconds, connections, len(load_cpus))
    elapsed = time.monotonic() - started
    result.load_cpu_share = (_children_cpu() - before) / (elapsed * len(load_cpus))
    return result


_PIPELINE_LUA = """
init = function(args)
  local r = {}
  for i = 1, %d do r[i] = wrk.format(nil, "%s") end
  req = table.concat(r)
end
request = function() return req end
"""
_POST_LUA = """
wrk.method = "POST"
wrk.body = string.rep("x", %d)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def _wrk(workload: Workload, port: int, cpus: str, seconds: float, connections: int,
         threads: int) -> LoadResult:  # fmt: skip
    require("wrk")
    extra: list[str] = []
    script = None
    if workload.pipeline > 1:
        script = _PIPELINE_LUA % (workload.pipeline, workload.path)
    elif workload.method == "POST":
        script = _POST_LUA % workload.body_size
    if workload.new_connection:
        extra += ["-H", "Connection: close"]
    extra += [arg for field in workload.headers for arg in ("-H", field)]
    with tempfile.TemporaryDirectory() as tmp:
        if script is not None:
            path = Path(tmp) / "workload.lua"
            path.write_text(script)
            extra += ["-s", str(path)]
        url = f"http://127.0.0.1:{port}{workload.path}"
        out = run_wrk(url, cpus, seconds, connections, threads, tuple(extra))
    if workload.pipeline > 1:
        # wrk times a pipelined batch as one request (and reports zeros for some
        # servers): no latency figure is better than a wrong one.
        out.p50_ms = out.p99_ms = out.max_ms = math.nan
    return LoadResult(out.requests, out.seconds, out.rps, out.p50_ms, out.p99_ms, out.max_ms,
                      out.errors, 0.0)  # fmt: skip


def _h2load(workload: Workload, port: int, cpus: str, seconds: float, connections: int,
            threads: int) -> LoadResult:  # fmt: skip
    tool = require("h2load")
    if workload.new_connection:
        raise LoadError("h2load keeps its connections open: use --load-generator wrk")
    argv = ["taskset", "-c", cpus, tool, "--h1", f"-c{max(connections, threads)}"]
    argv += [f"-t{threads}", f"-D{int(seconds)}", f"-m{workload.pipeline}"]
    argv += [arg for field in workload.headers for arg in ("-H", field)]
    with tempfile.TemporaryDirectory() as tmp:
        if workload.method == "POST":
            body = Path(tmp) / "body"
            body.write_bytes(b"x" * workload.body_size)
            argv += ["-d", str(body), "-H", "content-type: application/octet-stream"]
        argv.append(f"http://127.0.0.1:{port}{workload.path}")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    finished = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not finished or not counts:
        raise LoadError(f"h2load gave no result: {out.strip().splitlines()[-1:]}")
    done, succeeded = int(counts.group(1)), int(counts.group(2))
    statuses = re.search(r"status codes: (\d+) 2xx", out)
    ok = int(statuses.group(1)) if statuses else succeeded
    times = re.search(r"time for request:\s+(\S+)\s+(\S+)", out)
    return LoadResult(
        requests=done,
        seconds=float(finished.group(1)),
        rps=float(finished.group(2)),
        p50_ms=math.nan,  # h2load reports min, max, mean and sd only
        p99_ms=math.nan,
        max_ms=duration_ms(times.group(2)) if times else math.nan,
        errors=done - ok,
        load_cpu_share=0.0,
    )


def _websocket(workload: Workload, port: int, load_cpus: list[int], seconds: float,
               connections: int) -> LoadResult:  # fmt: skip
    """Round trips or deliveries by bench.wsload: one client process per load CPU."""
    cpus = ",".join(map(str, load_cpus))
    argv = ["taskset", "-c", cpus, sys.executable, "-m", "bench.wsload", workload.path[1:]]
    argv += [str(port), f"--connections={connections}", f"--seconds={seconds}", f"--cpus={cpus}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT)
    if out.returncode != 0:
        raise LoadError(f"the WebSocket client failed: {out.stderr.strip().splitlines()[-1:]}")
    found = json.loads(out.stdout.strip().splitlines()[-1])
    latency = [math.nan if found[k] is None else found[k] for k in ("p50_ms", "p99_ms", "max_ms")]
    return LoadResult(found["count"], found["seconds"], found["rate"], *latency, found["errors"],
                      found["load_cpu_share"])  # fmt: skip
