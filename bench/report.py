"""What `python -m bench` writes: results.json, results.md and charts (PNG)."""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from bench.matrix import Cell, Settings
from bench.workloads import PROTOCOL_NAMES, WORKLOADS


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _figure(summary: dict, name: str, digits: int = 0) -> str:
    figure = summary.get(name)
    if figure is None:
        return "-"
    median, low, high = figure["median"], figure["min"], figure["max"]
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def paired(cells: list[Cell], ratios_of: list[tuple[str, str]]) -> list[dict]:
    """Each (server, against) pair of kinds (--against: this tree's kind and the
    revision's; --ratio-to: every kind and the reference), cell by cell, run by run
    (runs of one round were measured side by side, so drift moves both alike), then
    the median ratio."""
    by_key = {(c.server, c.workers, c.workload): c for c in cells}
    pairs = []
    for (server, against), cell in itertools.product(ratios_of, cells):
        if cell.server != against:
            continue
        twin = by_key.get((server, cell.workers, cell.workload))
        if twin is None or twin.skipped is not None or cell.skipped is not None:
            continue
        ratios: dict[str, list[float]] = {"cpu_us_per_request": [], "rps": []}
        for now, then in zip(twin.runs, cell.runs, strict=True):
            for name, values in ratios.items():
                if now.get(name) == now.get(name) and then.get(name):  # (NaN: failed)
                    values.append(now[name] / then[name])
        pairs.append(
            {
                "server": twin.server,
                "against": cell.server,
                "workers": cell.workers,
                "workload": cell.workload,
                **{
                    name: {
                        "median": statistics.median(v),
                        "min": min(v),
                        "max": max(v),
                        "runs": len(v),
                    }
                    for name, v in ratios.items()
                    if v
                },
            }
        )
    return pairs


def _pairs_markdown(pairs: list[dict]) -> list[str]:
    lines = [
        "## Paired ratios",
        "",
        "| server | against | workers | workload | server CPU/request ratio | req/s ratio | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        cpu, rps = p.get("cpu_us_per_request"), p.get("rps")
        if cpu is None or rps is None:
            continue
        lines.append(
            f"| {p['server']} | {p['against']} | {p['workers']} | {p['workload']} "
            f"| {cpu['median']:.3f} ({cpu['min']:.3f}-{cpu['max']:.3f}) "
            f"| {rps['median']:.3f} ({rps['min']:.3f}-{rps['max']:.3f}) | {cpu['runs']} |"
        )
    return lines + ["", "Ratios: server / against, per round, median (min-max).", ""]


def markdown(
    cells: list[Cell], settings: Settings, argv: list[str], info: dict, pairs: list[dict] = ()
) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"`python -m bench {' '.join(argv)}`",
        "",
        f"{info['date']}; {info['cpu'] or 'unknown CPU'}, {info['cpus']} CPUs; Linux "
        f"{info['kernel']}; Python {info['python']}. Servers on CPUs "
        f"{','.join(map(str, settings.server_cpus))}, {settings.generator} on CPUs "
        f"{','.join(map(str, settings.load_cpus))}; {settings.connections} connections; "
        f"{settings.runs} runs of {settings.seconds:g} s after {settings.warmup:g} s of "
        f"warm-up; access log {'on (to /dev/null)' if settings.access_log else 'off'}. "
        "Figures: median (min-max) over the runs.",
        "",
    ]
    for workload in dict.fromkeys(cell.workload for cell in cells):
        lines += [f"## {workload}", ""]
        known = WORKLOADS.get(workload)
        if known is not None and known.http2:
            lines += [
                f"{known.description}. Load: h2load (whatever the load generator above), "
                f"{PROTOCOL_NAMES[known.protocol]}, -m {known.streams}; req/s counts 2xx "
                "responses only; errors: requests failed, reset, timed out or not 2xx.",
                "",
            ]
        lines += [
            "| server | workers | req/s | p50 ms | p99 ms | max ms | server CPU µs/request "
            "| PSS MB/worker | errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for cell in (c for c in cells if c.workload == workload):
            if cell.skipped is not None:
                lines.append(f"| {cell.server} | {cell.workers} | skipped: {cell.skipped} |")
                continue
            s = cell.summary()
            failures = [r["failed"] for r in cell.runs if "failed" in r]
            if len(failures) == len(cell.runs):
                lines.append(f"| {cell.server} | {cell.workers} | failed: {failures[-1]} |")
                continue
            rps = _figure(s, "rps")
            if s["load_bound"]:
                rps = f"load-bound ({s['load_cpu_share']:.0%} of the load CPUs)"
            lines.append(
                f"| {cell.server} | {cell.workers} | {rps} | {_figure(s, 'p50_ms', 2)} "
                f"| {_figure(s, 'p99_ms', 2)} | {_figure(s, 'max_ms', 1)} "
                f"| {_figure(s, 'cpu_us_per_request', 1)} | {_figure(s, 'pss_mb_per_worker', 1)} "
                f"| {s['errors']} |"
            )
        lines.append("")
    if pairs:
        lines += _pairs_markdown(pairs)
    lines.append(
        "load-bound: the load generator used 90% or more of its CPUs, so the server "
        "could have gone faster; its figure is not shown. Server CPU covers the whole "
        "process tree (coordinator or master included); PSS is the tree's, divided by the "
        "worker count. WebSocket rows count echo round trips (websocket) or messages "
        "received by subscribers (websocket-broadcast) instead of requests; their load is "
        "bench.wsload, one client process per load CPU."
    )
    return "\n".join(lines) + "\n"


def write(
    out: Path,
    cells: list[Cell],
    settings: Settings,
    argv: list[str],
    ratios_of: list[tuple[str, str]] = (),
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    pairs = paired(cells, list(ratios_of))
    data = {
        "argv": argv,
        "machine": info,
        "settings": vars(settings),
        "cells": [
            {
                "server": c.server,
                "workers": c.workers,
                "workload": c.workload,
                "summary": c.summary(),
                "runs": c.runs,
                **({"skipped": c.skipped} if c.skipped is not None else {}),
            }
            for c in cells
        ],
        "paired": pairs,
    }
    (out / "results.json").write_text(json.dumps(data, indent=2, allow_nan=True))
    (out / "results.md").write_text(markdown(cells, settings, argv, info, pairs))
    return data


def draw_charts(out: Path, python: str) -> str | None:
    """PNG charts from results.json by bench/charts.py (matplotlib, in the peers' venv);
    returns why not, if not."""
    script = Path(__file__).with_name("charts.py")
    done = subprocess.run(
        [python, str(script), str(out / "results.json"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["charts failed"])[-1]
    return None
