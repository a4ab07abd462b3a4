"""`python -m bench`: the benchmarking tool runs a real (tiny) matrix and reports it.

Not a benchmark: one run of one second per cell, to check that the tool starts and
stops servers, drives them, and writes results that add up.  Needs wrk (.ci/run
installs it).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from serving import ROOT

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_a_small_matrix_is_measured_and_written(tmp_path):
    out = tmp_path / "results"
    done = bench(
        "--servers", "shardserve", "--workers", "1,2",
        "--workloads", "plaintext,post-10k,websocket",
        "--server-cpus", "0-1", "--load-cpus", "0-1",  # (this machine may have 2 CPUs)
        "--runs", "1", "--seconds", "1", "--warmup", "1", "--connections", "8",
        "--out", str(out), "--no-charts",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    cells = {(c["server"], c["workers"], c["workload"]): c for c in data["cells"]}
    assert set(cells) == {
        ("shardserve", n, w) for n in (1, 2) for w in ("plaintext", "post-10k", "websocket")
    }
    for (_, _, workload), cell in cells.items():
        (run,) = cell["runs"]
        assert "failed" not in run, run
        assert run["errors"] == 0 and run["requests"] > 100, (workload, run)
        assert run["cpu_us_per_request"] > 0 and run["pss_mb_per_worker"] > 1, run
        assert 0 < run["load_cpu_share"] < 2, run
        if workload != "websocket":
            assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"], run
        summary = cell["summary"]
        assert summary["rps"]["median"] == run["rps"]
    assert data["settings"]["server_cpus"] == [0, 1]
    assert data["machine"]["cpus"] >= 1
    table = (out / "results.md").read_text()
    assert "## plaintext" in table and "## post-10k" in table and "| shardserve | 2 |" in table
    assert "Results in" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--servers", "nginx"], "unknown server nginx"),
        (["--workloads", "plaintext,bogus"], "unknown workload bogus"),
        (["--workers", "0"], "at least 1"),
        (["--server-cpus", "x-y"], "bench:"),
        (["--load-generator", "h2load", "--workloads", "new-connection"], "needs wrk"),
        (["--servers", "shardserve,uvicorn", "--pin"], "only shardserve pins"),
        (["--workers", "1,4", "--pin", "--server-cpus", "1", "--servers", "shardserve"], "4 work"),
    ],
)
def test_bad_arguments_are_one_line(args, message):
    done = bench(*args, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


def test_a_saturated_load_generator_is_reported_instead_of_a_figure():
    from bench.matrix import Cell, Settings
    from bench.report import machine, markdown

    run = {
        "rps": 90000.0, "p50_ms": 0.5, "p99_ms": 2.0, "max_ms": 9.0,
        "cpu_us_per_request": 10.0, "pss_mb_per_worker": 20.0, "errors": 0,
        "requests": 90000, "load_cpu_share": 0.97,
    }  # fmt: skip
    saturated = Cell("shardserve", 4, "plaintext", [run])
    fine = Cell("uvicorn", 4, "plaintext", [{**run, "rps": 15000.0, "load_cpu_share": 0.4}])
    assert saturated.summary()["load_bound"] and not fine.summary()["load_bound"]
    table = markdown([saturated, fine], Settings([1], [0]), ["--workers", "4"], machine())
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if "| 4 |" in line}
    assert "load-bound (97% of the load CPUs)" in rows["shardserve"]
    assert "90,000" not in rows["shardserve"]
    assert "15,000 (15,000-15,000)" in rows["uvicorn"]
    assert math.isfinite(saturated.summary()["cpu_us_per_request"]["median"])
