"""`python -m bench`: the benchmarking tool runs a real (tiny) matrix and reports it.

Not a benchmark: one run of one second per cell, to check that the tool starts and
stops servers, drives them, and writes results that add up.  Needs wrk (.ci/run
installs it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from serving import ROOT

sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    PEER_PACKAGES,
    PEERS_VENV,
    Server,
    free_port,
    stop,
    wait_for_port,
)
from bench.matrix import APP  # noqa: E402
from bench.servers import SERVERS  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def peers_installed() -> bool:
    """Whether .bench-venv holds the pinned peers (else using them would install them)."""
    marker = PEERS_VENV / "peer-packages.txt"
    return marker.exists() and marker.read_text() == "\n".join(PEER_PACKAGES)


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.timeout(150)
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


def tiny(out, *args: str) -> dict:
    """A one-run, one-second matrix; its results.json (the run must have succeeded)."""
    done = bench(*args, "--runs", "1", "--seconds", "1", "--warmup", "1", "--connections", "4",
                 "--out", str(out), "--no-charts")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    data["stderr"] = done.stderr
    for cell in data["cells"]:
        (run,) = cell["runs"]
        assert "failed" not in run and run["errors"] == 0 and run["rps"] > 0, (cell, run)
    return data


@pytest.mark.timeout(60)
def test_access_log_run(tmp_path):
    data = tiny(tmp_path, "--servers", "shardserve", "--workloads", "plaintext", "--access-log")
    assert data["settings"]["access_log"] is True
    assert "access log on (to /dev/null)" in (tmp_path / "results.md").read_text()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", [n for n in SERVERS if n != "shardserve-subinterpreter"])
def test_access_log_lines_go_to_stdout_only_when_asked(name, tmp_path):
    """The matrix sends stdout to /dev/null: that is where every server's lines must go."""
    if not name.startswith("shardserve") and not peers_installed():
        pytest.skip(f"{PEERS_VENV} does not hold the pinned peers")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for access_log in (True, False):
        port = free_port()
        out = tmp_path / f"stdout-{access_log}"
        with out.open("wb") as stdout:
            proc = subprocess.Popen(SERVERS[name].command(1, port, APP, access_log), env=env,
                                    stdout=stdout, stderr=subprocess.DEVNULL, cwd=ROOT)  # fmt: skip
            try:
                wait_for_port(port, proc)
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10).read()
                time.sleep(0.6)  # (shardserve flushes its access log every 0.25 s)
            finally:
                stop(proc)
        assert ("GET /json" in out.read_text()) is access_log, (name, access_log)


@pytest.mark.timeout(90)
def test_websocket_workloads_use_one_client_process_per_load_cpu(tmp_path):
    data = tiny(
        tmp_path, "--servers", "shardserve", "--workloads", "websocket,websocket-broadcast",
        "--server-cpus", "1", "--load-cpus", "0,1",
    )  # fmt: skip
    assert "server and load CPUs overlap" in data["stderr"]
    runs = {c["workload"]: c["runs"][0] for c in data["cells"]}
    echo, broadcast = runs["websocket"], runs["websocket-broadcast"]
    assert echo["requests"] > 100 and broadcast["requests"] > 100, runs
    assert 0 < echo["p50_ms"] <= echo["p99_ms"] <= echo["max_ms"], echo
    assert math.isnan(broadcast["p50_ms"]), broadcast  # (deliveries have no round trip)
    assert 0 < echo["load_cpu_share"] <= 1.05 and echo["cpu_us_per_request"] > 0, echo


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["echo", "broadcast"])
def test_wsload_splits_connections_over_processes_and_merges(mode):
    port = free_port()
    server = Server("shardserve", SERVERS["shardserve"].command(1, port, APP, False), port)
    proc = server.start("0-1")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.wsload", mode, str(port), "--connections", "3",
             "--seconds", "1", "--cpus", "0,1"],
            capture_output=True, text=True, timeout=40, cwd=ROOT,
        )  # fmt: skip
    finally:
        stop(proc)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    processes = found["processes"]
    assert [(p["cpu"], p["connections"]) for p in processes] == [(0, 2), (1, 1)]
    assert all(p["count"] > 0 for p in processes) and found["errors"] == 0, found
    assert found["count"] == sum(p["count"] for p in processes)
    assert found["rate"] > 0 and 0 < found["load_cpu_share"] <= 1.05, found
    if mode == "echo":
        assert 0 < found["p50_ms"] <= found["p99_ms"] <= found["max_ms"], found
    else:
        assert found["p50_ms"] is None, found


@pytest.mark.timeout(60)
def test_parser_kinds_run_the_browser_headers_workload(tmp_path):
    data = tiny(tmp_path, "--servers", "shardserve-h11,shardserve-python",
                "--workloads", "plaintext-browser")  # fmt: skip
    assert {(c["server"], c["workload"]) for c in data["cells"]} == {
        ("shardserve-h11", "plaintext-browser"),
        ("shardserve-python", "plaintext-browser"),
    }


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("shardserve-h11", ["--http", "h11", "--loop", "asyncio"]),
        ("shardserve-python", ["--http", "python", "--loop", "asyncio"]),
        ("uvicorn-sansio", ["--ws", "websockets-sansio"]),
        ("uvicorn-websockets", ["--ws", "websockets"]),
    ],
)
def test_server_kinds_pass_their_options(name, options, monkeypatch):
    monkeypatch.setattr("bench.servers.peer_python", lambda: "python")  # (no venv made)
    argv = SERVERS[name].command(2, 8000, APP, False)
    assert any(argv[i : i + len(options)] == options for i in range(len(argv))), argv
    assert "--no-access-log" in argv


@pytest.mark.timeout(150)
def test_against_a_revision_pairs_each_run_with_its_twin(tmp_path):
    """--against REV runs shardserve from that revision's tree beside this one and
    reports each round's ratio; the revision's server really ran (its own tree)."""
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD~1"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if not revision:
        pytest.skip("no git history here")
    out = tmp_path / "results"
    done = bench(
        "--servers", "shardserve", "--workloads", "plaintext",
        "--server-cpus", "0-1", "--load-cpus", "0-1",
        "--runs", "2", "--seconds", "1", "--warmup", "1", "--connections", "8",
        "--against", revision, "--out", str(out), "--no-charts",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    cells = {c["server"]: c for c in data["cells"]}
    assert set(cells) == {"shardserve", f"shardserve@{revision}"}
    [pair] = data["paired"]
    assert (pair["server"], pair["against"]) == ("shardserve", f"shardserve@{revision}")
    now, then = cells["shardserve"]["runs"], cells[f"shardserve@{revision}"]["runs"]
    ratios = sorted(
        a["cpu_us_per_request"] / b["cpu_us_per_request"] for a, b in zip(now, then, strict=True)
    )
    assert pair["cpu_us_per_request"]["runs"] == 2
    assert pair["cpu_us_per_request"]["min"] == pytest.approx(ratios[0])
    assert pair["cpu_us_per_request"]["max"] == pytest.approx(ratios[1])
    assert "Paired against the revision" in (out / "results.md").read_text()


def test_against_an_unknown_revision_is_one_line():
    done = bench("--servers", "shardserve", "--against", "no-such-revision-x")
    assert done.returncode != 0
    assert done.stderr.strip() == "bench: --against no-such-revision-x: not a revision here"
