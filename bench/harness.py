"""Building blocks for side-by-side benchmarks: servers, wrk, and CPU accounting.

Numbers on shared machines drift, so every comparison runs its servers in the same
invocation, alternating, each pinned to its own CPUs with the load generator on
others; the figure to trust is the server's CPU time per request.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
PEERS_VENV = ROOT / ".bench-venv"
# The peers, pinned; matplotlib draws `python -m bench`'s charts from the same venv.
PEER_PACKAGES = [
    "uvicorn[standard]==0.54.0",
    "granian==2.8.7",
    "hypercorn==0.18.0",
    "matplotlib==3.11.2",
]
# Installed after PEER_PACKAGES, each on its own: one that does not install (zttp is a
# Zig extension, with wheels for some platforms only) makes its server kinds unavailable,
# with pip's reason, instead of stopping the bench.  zttp: uvicorn's --http zttp --http2.
OPTIONAL_PEER_PACKAGES = ["zttp==0.0.35"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# CPU accounting --------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def process_tree(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack:
        current = stack.pop()
        pids.append(current)
        stack.extend(_children(current))
    return pids


def memory(pid: int) -> dict[str, int]:
    """USS, PSS and RSS of one process (kB), from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return {
        "uss_kb": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        "pss_kb": fields.get("Pss", 0),
        "rss_kb": fields.get("Rss", 0),
    }


def tree_memory(pid: int) -> dict[str, int]:
    """USS and PSS (kB) of a process and all its descendants (live ones)."""
    total = {"uss_kb": 0, "pss_kb": 0}
    for member in process_tree(pid):
        try:
            found = memory(member)
        except OSError:
            continue
        total["uss_kb"] += found["uss_kb"]
        total["pss_kb"] += found["pss_kb"]
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants (live ones)."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def load_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every side-by-side load benchmark takes: where the server and the
    load generator run, and how long and how often to measure."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--server-cpus", default="1", help="CPUs the server is pinned to")
    parser.add_argument("--load-cpus", default="0", help="CPUs wrk is pinned to")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    return parser


# Servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout}s")


def tail(log: IO[bytes], lines: int = 5) -> str:
    """The last lines a child wrote to ``log``, as one string for an error message.
    (pread: the child shares the file's offset, so seeking would move its writes.)"""
    size = os.fstat(log.fileno()).st_size
    text = os.pread(log.fileno(), 8192, max(0, size - 8192)).decode(errors="replace")
    return " | ".join(text.strip().splitlines()[-lines:])


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    root: Path = ROOT  # the source tree it runs from (another revision: checkout_of)
    stderr: IO[bytes] | None = field(default=None, init=False, repr=False)

    def start(self, cpus: str) -> subprocess.Popen:
        """Start pinned to ``cpus`` and wait for the port.  stderr goes to a temporary
        file, not a pipe nobody reads (a chatty server would fill it and stall); a
        server that fails to start is stopped and its last stderr lines reported."""
        env = dict(os.environ, PYTHONPATH=str(self.root))
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - as long as the Server
        proc = subprocess.Popen(
            ["taskset", "-c", cpus, *self.argv],
            cwd=self.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )
        try:
            wait_for_port(self.port, proc)
        except RuntimeError as exc:
            stop(proc)
            raise RuntimeError(f"{self.name}: {exc}: {tail(self.stderr) or 'no stderr'}") from None
        return proc


def checkout_of(revision: str) -> Path:
    """This repository's tree at ``revision`` (for before/after comparisons), once."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    where = Path("/tmp") / f"shardserve-{commit[:12]}"
    if not where.exists():
        partial = where.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        archive = subprocess.run(
            ["git", "archive", commit], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive, check=True)
        partial.rename(where)
    build_compiled(where)
    return where


def build_compiled(root: Path) -> None:
    """Build a checked-out tree's optional C modules for this Python, as
    ``pip install -e .`` would have (else "before" would run the pure-Python
    references); one that does not build is left out, as there."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    include = sysconfig.get_paths()["include"]
    for source in sorted((root / "shardserve" / "shard" / "http").glob("_*.c")):
        built = source.with_name(source.stem + suffix)
        if not built.exists():
            subprocess.run(
                [
                    *compiler,
                    "-shared",
                    "-fPIC",
                    "-O2",
                    f"-I{include}",
                    str(source),
                    "-o",
                    str(built),
                ],
                check=False,
            )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def peers_wanted() -> str:
    """What .bench-venv/peer-packages.txt says once the peers are installed."""
    return "\n".join(PEER_PACKAGES + OPTIONAL_PEER_PACKAGES)


def _failure_note(package: str) -> Path:
    return PEERS_VENV / f"not-installed-{package.split('=')[0]}.txt"


def peer_python() -> str:
    """The Python of a separate venv holding the peers (never shardserve's own venv),
    created on first use and brought up to PEER_PACKAGES (and OPTIONAL_PEER_PACKAGES,
    as far as they install) when the lists change."""
    python = PEERS_VENV / "bin" / "python"
    installed = PEERS_VENV / "peer-packages.txt"
    wanted = peers_wanted()
    if not python.exists():
        print(f"creating {PEERS_VENV} for the peer servers ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    if not installed.exists() or installed.read_text() != wanted:
        print(f"installing {', '.join(PEER_PACKAGES)} into {PEERS_VENV} ...", file=sys.stderr)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
        for package in OPTIONAL_PEER_PACKAGES:
            note = _failure_note(package)
            note.unlink(missing_ok=True)
            done = subprocess.run([str(python), "-m", "pip", "install", "-q", package],
                                  capture_output=True, text=True)  # fmt: skip
            if done.returncode != 0:
                errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
                why = (errors or done.stderr.strip().splitlines() or ["pip failed"])[-1]
                note.write_text(f"{package} did not install: {why.strip()}")
                print(f"bench: {note.read_text()}", file=sys.stderr)
        installed.write_text(wanted)
    return str(python)


def peer_unavailable(package: str, module: str) -> str | None:
    """Why an optional peer cannot run: ``package`` (an OPTIONAL_PEER_PACKAGES entry)
    did not install, or ``module`` does not import in the peers' venv; None if it can."""
    python = peer_python()
    note = _failure_note(package)
    if note.exists():
        return note.read_text()
    done = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"{module} does not import in {PEERS_VENV}: {last}"
    return None


# Load generation -----------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    max_ms: float = float("nan")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def duration_ms(text: str) -> float:
    """wrk's and h2load's durations ('812.5us', '3.2ms', '1.02s') in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    return path


def run_wrk(
    url: str,
    cpus: str,
    seconds: float,
    connections: int,
    threads: int = 1,
    extra: tuple[str, ...] = (),
) -> WrkResult:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            cpus,
            require_wrk(),
            "--latency",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out).group(1))
    duration_match = re.search(r"requests in ([\d.]+)(us|ms|s|m)", out)
    duration = duration_ms(duration_match.group(1) + duration_match.group(2)) / 1000.0
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M))
    latency = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return WrkResult(
        requests=requests,
        seconds=duration,
        rps=requests / duration,
        p50_ms=duration_ms(percentiles.get("50", "nan")),
        p99_ms=duration_ms(percentiles.get("99", "nan")),
        errors=errors,
        max_ms=duration_ms(latency.group(3)) if latency else float("nan"),
    )


@dataclass
class Measurement:
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int


def measure(
    server: Server,
    server_cpus: str,
    load_cpus: str,
    seconds: float,
    connections: int,
    path: str = "/",
    threads: int = 1,
    wrk_args: tuple[str, ...] = (),
) -> Measurement:
    proc = server.start(server_cpus)
    try:
        url = f"http://127.0.0.1:{server.port}{path}"
        run_wrk(url, load_cpus, 1, connections, threads, wrk_args)  # warm-up
        before = cpu_seconds(proc.pid)
        result = run_wrk(url, load_cpus, seconds, connections, threads, wrk_args)
        used = cpu_seconds(proc.pid) - before
    finally:
        stop(proc)
    return Measurement(
        server=server.name,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_us_per_request=used / max(result.requests, 1) * 1e6,
        errors=result.errors,
    )


def summarize(results: dict[str, list[Measurement]]) -> dict[str, dict[str, float]]:
    """Medians per server (or per shard count), printed as a Markdown table."""
    import statistics

    print("| server | req/s | p50 ms | p99 ms | server CPU us/request | errors |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for name, ms in results.items():
        med = {
            "rps": statistics.median(m.rps for m in ms),
            "p50": statistics.median(m.p50_ms for m in ms),
            "p99": statistics.median(m.p99_ms for m in ms),
            "cpu": statistics.median(m.cpu_us_per_request for m in ms),
            "errors": sum(m.errors for m in ms),
        }
        medians[name] = med
        print(
            f"| {name} | {med['rps']:.0f} | {med['p50']:.2f} | {med['p99']:.2f} "
            f"| {med['cpu']:.1f} | {med['errors']} |"
        )
    return medians
