"""Load generators for `python -m bench`: wrk, h2load, and bench.wsload (WebSocket).

HTTP/2 workloads always run on h2load, whatever --load-generator says: h2c by prior
knowledge to an http:// URL, h2 by ALPN to an https:// one.  A run in which h2load
negotiated another protocol, or got no response at all, is a failed run; requests
that failed, errored or timed out and non-2xx responses are counted as errors, and
only 2xx responses as requests.

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
    if workload.http2:  # (wrk speaks HTTP/1.1 only)
        generator = "h2load"
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
    # HTTP/1.1: -m requests pipelined per connection; HTTP/2: -m streams in flight.
    in_flight = workload.streams if workload.http2 else workload.pipeline
    argv = ["taskset", "-c", cpus, tool, *([] if workload.http2 else ["--h1"])]
    argv += [f"-c{max(connections, threads)}", f"-t{threads}", f"-D{int(seconds)}"]
    argv += [f"-m{in_flight}", *(arg for field in workload.headers for arg in ("-H", field))]
    with tempfile.TemporaryDirectory() as tmp:
        if workload.method == "POST":
            body = Path(tmp) / "body"
            body.write_bytes(b"x" * workload.body_size)
            argv += ["-d", str(body), "-H", "content-type: application/octet-stream"]
        scheme = "https" if workload.tls else "http"
        argv.append(f"{scheme}://127.0.0.1:{port}{workload.path}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    return parse_h2load(done.stdout + done.stderr, workload.protocol)


def parse_h2load(out: str, protocol: str) -> LoadResult:
    """h2load's report (stdout and stderr) as a LoadResult; LoadError if h2load spoke
    another protocol than ``protocol`` (bench/workloads.py) or no request succeeded."""
    finished = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    counts = re.search(
        r"requests: \d+ total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    if not finished or not counts:
        raise LoadError(f"h2load gave no result: {out.strip().splitlines()[-20:]}")
    started, done, succeeded, failed, _, timeouts = map(int, counts.groups())
    spoken = set(re.findall(r"^Application protocol: (\S+)", out, re.M))
    if spoken and spoken != {protocol}:  # (e.g. an https server without h2 in its ALPN)
        raise LoadError(f"h2load negotiated {', '.join(sorted(spoken))}, not {protocol}")
    # (status codes count responses whose head arrived, finished or not when the
    # duration ended; succeeded counts finished 2xx and 3xx ones)
    statuses = re.search(r"status codes: (\d+) 2xx", out)
    ok = min(int(statuses.group(1)), succeeded) if statuses else succeeded
    if ok == 0:
        raise LoadError(
            f"h2load got no 2xx response over {protocol} ({started} requests started, "
            f"{done} done, {failed} failed, {timeouts} timed out)"
        )
    times = re.search(r"time for request:\s+(\S+)\s+(\S+)", out)
    seconds = float(finished.group(1))
    return LoadResult(
        requests=ok,
        seconds=seconds,
        rps=ok / seconds,
        p50_ms=math.nan,  # h2load reports min, max, mean and sd only
        p99_ms=math.nan,
        max_ms=duration_ms(times.group(2)) if times else math.nan,
        # (done = succeeded + failed; failed includes errored, timed out (abandoned
        # streams) and non-2xx/3xx; succeeded includes 3xx, counted here as errors)
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
