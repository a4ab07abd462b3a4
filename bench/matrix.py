"""Run a matrix of servers x worker counts x workloads, side by side, and keep every run.

Rounds, not blocks: each round measures every cell once, starting one cell further
along each time, so drift on a shared machine touches every cell alike.  A cell's
figures are its runs' median with their minimum and maximum.  A cell whose server kind
cannot run here, or does not serve its workload's protocol (an HTTP/1.1-only server on
an HTTP/2 workload), is skipped, with the reason kept in the results.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from bench.harness import ROOT, Server, cpu_seconds, free_port, stop, tree_memory
from bench.loadgen import SATURATED, run_load
from bench.servers import ServerKind
from bench.tls import Certificate
from bench.workloads import Workload

APP = "bench.apps:app"
FIGURES = ("rps", "p50_ms", "p99_ms", "max_ms", "cpu_us_per_request", "pss_mb_per_worker")


@dataclass
class Settings:
    server_cpus: list[int]
    load_cpus: list[int]
    generator: str = "wrk"
    runs: int = 3
    seconds: float = 5.0
    warmup: float = 1.0
    connections: int = 64
    pin: bool = False  # shard i pinned to the i-th server CPU (shardserve --pin --cpus)
    access_log: bool = False  # every server logs each request (to /dev/null)


@dataclass
class Cell:
    server: str
    workers: int
    workload: str
    runs: list[dict] = field(default_factory=list)
    skipped: str | None = None  # why this cell was not run

    def summary(self) -> dict:
        """Median, min and max of every figure; whether the load generator was the limit."""
        if self.skipped is not None:
            return {"skipped": self.skipped}
        result: dict = {}
        for name in FIGURES:
            values = [r[name] for r in self.runs if r[name] == r[name]]  # (NaN: unknown)
            if values:
                result[name] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                }
        result["errors"] = sum(r["errors"] for r in self.runs)
        share = statistics.median(r["load_cpu_share"] for r in self.runs)
        result["load_cpu_share"] = share
        result["load_bound"] = share >= SATURATED
        return result


class Progress:
    """One line on stderr, rewritten: where the matrix is and what the last run gave."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, label: str, outcome: str) -> None:
        self.done += 1
        width = 24
        filled = width * self.done // self.total
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        line = f"[{bar}] {self.done}/{self.total} {label}: {outcome} (~{left:.0f} s left)"
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line)
            if self.done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def skip_reason(
    kind: ServerKind, workload: Workload, unavailable: dict[str, str | None]
) -> str | None:
    """Why ``kind`` is not run on ``workload``, or None; ``unavailable``: kind name ->
    ServerKind.unavailable() (asked once per kind)."""
    why = unavailable.get(kind.name)
    if why is not None:
        return f"unavailable: {why}"
    return kind.cannot_serve(workload)


def measure(kind: ServerKind, workers: int, workload: Workload, settings: Settings,
            tls: Certificate | None = None) -> dict:  # fmt: skip
    """Start the server, warm it up, load it, and read its CPU and memory; one run.
    ``tls``: the certificate a TLS workload's server is given."""
    port = free_port()
    if workload.tls and tls is None:
        raise ValueError(f"{workload.name} needs a certificate (bench/tls.py)")
    argv = kind.command(workers, port, APP, settings.access_log, tls=tls if workload.tls else None)
    if settings.pin:
        argv += ["--pin", "--cpus", ",".join(map(str, settings.server_cpus[:workers]))]
    server = Server(kind.name, argv, port, kind.root or ROOT)
    proc = server.start(",".join(map(str, settings.server_cpus)))
    try:
        time.sleep(0.5)  # (the port answers once one worker listens; let the rest start)
        warmup = max(settings.warmup, 1.0)
        run_load(settings.generator, workload, port, settings.load_cpus, warmup,
                 settings.connections)  # fmt: skip
        before = cpu_seconds(proc.pid)
        load = run_load(
            settings.generator,
            workload,
            port,
            settings.load_cpus,
            settings.seconds,
            settings.connections,
        )
        used = cpu_seconds(proc.pid) - before
        pss_mb = tree_memory(proc.pid)["pss_kb"] / 1024
    finally:
        stop(proc)
    return {
        "rps": load.rps,
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "max_ms": load.max_ms,
        "cpu_us_per_request": used / max(load.requests, 1) * 1e6,
        "pss_mb_per_worker": pss_mb / workers,
        "errors": load.errors,
        "requests": load.requests,
        "load_cpu_share": load.load_cpu_share,
    }


def run_matrix(
    kinds: list[ServerKind],
    counts: list[int],
    workloads: list[Workload],
    settings: Settings,
    tls: Certificate | None = None,
    unavailable: dict[str, str | None] | None = None,
) -> list[Cell]:
    """Every cell, run ``settings.runs`` times in rounds; ``tls``: the certificate for
    the TLS workloads; ``unavailable``: kind name -> why it cannot run (skipped)."""
    cells = [
        (kind, count, workload, Cell(kind.name, count, workload.name,
                                     skipped=skip_reason(kind, workload, unavailable or {})))
        for workload in workloads
        for kind in kinds
        for count in counts
    ]  # fmt: skip
    runnable = [entry for entry in cells if entry[3].skipped is None]
    progress = Progress(max(len(runnable) * settings.runs, 1))
    for round_ in range(settings.runs if runnable else 0):
        shift = round_ % len(runnable)
        for kind, count, workload, cell in runnable[shift:] + runnable[:shift]:
            label = f"run {round_ + 1} {kind.name} x{count} {workload.name}"
            try:
                result = measure(kind, count, workload, settings, tls)
            except Exception as exc:  # noqa: BLE001 - a failed run is reported, not fatal
                result = {name: float("nan") for name in FIGURES}
                result.update(errors=1, requests=0, load_cpu_share=0.0, failed=str(exc)[:200])
                progress.step(label, f"failed: {exc}")
            else:
                errors = f", {result['errors']} errors" if result["errors"] else ""
                progress.step(label, f"{result['rps']:.0f} req/s{errors}")
            cell.runs.append(result)
    return [cell for *_, cell in cells]
