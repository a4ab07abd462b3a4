"""`python -m bench`: the benchmarking tool runs a real (tiny) matrix and reports it.

Not a benchmark: one run of one second per cell, to check that the tool starts and
stops servers, drives them, and writes results that add up.  Needs wrk (.ci/run
installs it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from serving import ROOT

sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    PEERS_VENV,
    Server,
    free_port,
    peers_wanted,
    stop,
    wait_for_port,
)
from bench.loadgen import LoadError, parse_h2load  # noqa: E402
from bench.matrix import APP  # noqa: E402
from bench.servers import SERVERS  # noqa: E402
from bench.tls import Certificate  # noqa: E402
from bench.workloads import H2_TLS, H2C, HTTP1, WORKLOADS  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def peers_installed() -> bool:
    """Whether .bench-venv holds the pinned peers (else using them would install them)."""
    marker = PEERS_VENV / "peer-packages.txt"
    return marker.exists() and marker.read_text() == peers_wanted()


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
        (["--servers", "uvicorn", "--workloads", "h2c-plaintext"], "serves HTTP/1.1 only"),
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
        if "skipped" in cell:
            continue
        (run,) = cell["runs"]
        assert "failed" not in run and run["errors"] == 0 and run["rps"] > 0, (cell, run)
    return data


@pytest.mark.timeout(60)
def test_access_log_run(tmp_path):
    data = tiny(tmp_path, "--servers", "shardserve", "--workloads", "plaintext", "--access-log")
    assert data["settings"]["access_log"] is True
    assert "access log on (to /dev/null)" in (tmp_path / "results.md").read_text()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "name",
    [
        n
        for n, k in SERVERS.items()
        if n != "shardserve-subinterpreter" and HTTP1 in k.protocols and k.paths is None
    ],
)
def test_access_log_lines_go_to_stdout_only_when_asked(name, tmp_path):
    """The matrix sends stdout to /dev/null: that is where every server's lines must go."""
    if not name.startswith("shardserve") and not peers_installed():
        pytest.skip(f"{PEERS_VENV} does not hold the pinned peers")
    why_not = SERVERS[name].unavailable()
    if why_not is not None:
        pytest.skip(why_not)
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
        ("uvicorn-zttp", ["--http", "zttp", "--http2"]),
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
    assert "Paired ratios" in (out / "results.md").read_text()


@pytest.mark.timeout(150)
def test_ratio_to_the_floor_pairs_every_server_with_it(tmp_path):
    """--ratio-to floor: shardserve's CPU per request over the floor's, round by round;
    the floor skips what it does not answer."""
    out = tmp_path / "results"
    done = bench(
        "--servers", "floor,shardserve", "--workloads", "plaintext,json",
        "--server-cpus", "0-1", "--load-cpus", "0-1",
        "--runs", "2", "--seconds", "1", "--warmup", "1", "--connections", "8",
        "--ratio-to", "floor", "--out", str(out), "--no-charts",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    cells = {(c["server"], c["workload"]): c for c in data["cells"]}
    assert cells[("floor", "json")]["skipped"] == "answers GET / only"
    for run in cells[("floor", "plaintext")]["runs"]:
        assert run["errors"] == 0 and run["requests"] > 100, run
    [pair] = data["paired"]
    assert (pair["server"], pair["against"], pair["workload"]) == (
        "shardserve",
        "floor",
        "plaintext",
    )
    now = cells[("shardserve", "plaintext")]["runs"]
    floor = cells[("floor", "plaintext")]["runs"]
    ratios = sorted(
        a["cpu_us_per_request"] / b["cpu_us_per_request"] for a, b in zip(now, floor, strict=True)
    )
    assert pair["cpu_us_per_request"]["min"] == pytest.approx(ratios[0])
    assert pair["cpu_us_per_request"]["max"] == pytest.approx(ratios[1])


def test_ratio_to_a_server_not_run_is_one_line():
    done = bench("--servers", "shardserve", "--ratio-to", "floor")
    assert done.returncode != 0
    assert done.stderr.strip() == "bench: --ratio-to floor: not among --servers"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_floor_sends_the_bytes_shardserve_sends(loop, tmp_path):
    """The floor answers GET / as shardserve answers the hello app (same header
    fields, same body), keep-alive or not."""
    port = free_port()
    argv = SERVERS["floor" if loop == "uvloop" else "floor-asyncio"].command(1, port, APP, False)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            data = b""
            while data.count(b"Hello, world!") < 2:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            last = b""
            while chunk := sock.recv(65536):
                last += chunk
    finally:
        stop(proc)
    first = data.split(b"Hello, world!")[0]
    names = [line.split(b":")[0] for line in first.split(b"\r\n")[1:] if line]
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert names == [b"server", b"date", b"content-type", b"content-length"]
    assert b"connection: close\r\n" in last and last.endswith(b"Hello, world!")


def test_against_an_unknown_revision_is_one_line():
    done = bench("--servers", "shardserve", "--against", "no-such-revision-x")
    assert done.returncode != 0
    assert done.stderr.strip() == "bench: --against no-such-revision-x: not a revision here"


# HTTP/2 workloads -------------------------------------------------------------------

H2LOAD_OUT = """\
TLS Protocol: TLSv1.3
Application protocol: h2
finished in 2.01s, 2624.50 req/s, 120.23KB/s
requests: 5300 total, 5889 started, 5300 done, 5249 succeeded, 51 failed, 40 errored, 2 timeout
status codes: 5278 2xx, 0 3xx, 0 4xx, 11 5xx
traffic: 120.23KB (123117) total, 10.32KB (10568) headers (space savings 91.82%), 68.24KB
                     min         max         mean         sd        +/- sd
time for request:     1.23ms    310.50ms     24.20ms     10.11ms    90.00%
"""


def test_h2load_report_counts_finished_2xx_responses_and_every_failure():
    # (2xx counts heads still unfinished when the duration ended: succeeded bounds it)
    found = parse_h2load(H2LOAD_OUT, H2_TLS)
    assert found.requests == 5249 and found.errors == 5300 - 5249, found
    assert found.rps == pytest.approx(5249 / 2.01) and found.max_ms == pytest.approx(310.5)
    assert math.isnan(found.p50_ms) and math.isnan(found.p99_ms)


@pytest.mark.parametrize(
    ("out", "protocol", "message"),
    [
        (
            H2LOAD_OUT.replace("protocol: h2", "protocol: http/1.1"),
            H2_TLS,
            "negotiated http/1.1, not h2",
        ),
        (  # (what h2load says of an HTTP/1.1-only server: it answers no stream)
            "Application protocol: h2c\nfinished in 2.00s, 0.00 req/s, 0B/s\nrequests: 0 total, "
            "40 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout\n"
            "status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx\n",
            H2C,
            "no 2xx response over h2c (40 requests started",
        ),
        ("connect: Connection refused\n", H2C, "h2load gave no result"),
    ],
)
def test_an_h2load_run_that_did_not_speak_h2_is_a_failure(out, protocol, message):
    with pytest.raises(LoadError, match=re.escape(message)):
        parse_h2load(out, protocol)


def test_http2_workloads_and_the_kinds_that_serve_them(monkeypatch):
    monkeypatch.setattr("bench.servers.peer_python", lambda: "python")  # (no venv made)
    protocols = {name: (w.protocol, w.streams) for name, w in WORKLOADS.items() if w.http2}
    assert protocols == {
        "h2c-plaintext": (H2C, 1),
        "h2c-plaintext-m10": (H2C, 10),
        "h2-tls-plaintext": (H2_TLS, 1),
        "h2-tls-plaintext-m10": (H2_TLS, 10),
    }
    h2c, tls = WORKLOADS["h2c-plaintext"], WORKLOADS["h2-tls-plaintext-m10"]
    assert "serves HTTP/1.1 only" in SERVERS["uvicorn"].cannot_serve(h2c)
    assert "not HTTP/1.1" in SERVERS["granian-h2"].cannot_serve(WORKLOADS["plaintext"])
    cert = Certificate(Path("/c/cert.pem"), Path("/c/key.pem"))
    flags = {
        "shardserve": ["--ssl-certfile", "/c/cert.pem", "--ssl-keyfile", "/c/key.pem"],
        "uvicorn-zttp": ["--ssl-certfile", "/c/cert.pem", "--ssl-keyfile", "/c/key.pem"],
        "granian": ["--ssl-certificate", "/c/cert.pem", "--ssl-keyfile", "/c/key.pem"],
        "hypercorn": ["--certfile", "/c/cert.pem", "--keyfile", "/c/key.pem"],
    }
    for name, expected in flags.items():
        kind = SERVERS[name]
        assert kind.cannot_serve(h2c) is None and kind.cannot_serve(tls) is None, name
        argv = kind.command(1, 8000, APP, False, tls=cert)
        assert any(argv[i : i + 4] == expected for i in range(len(argv))), argv
        assert "/c/cert.pem" not in kind.command(1, 8000, APP, False)
    argv = SERVERS["granian-h2"].command(1, 8000, APP, False)
    assert any(argv[i : i + 2] == ["--http", "2"] for i in range(len(argv))), argv


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_self_signed_certificate_loads_with_a_pkcs8_key(tmp_path):
    import ssl

    from bench.tls import self_signed

    cert = self_signed(tmp_path)
    assert "BEGIN PRIVATE KEY" in cert.keyfile.read_text()  # (granian reads PKCS#8 only)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert.certfile, cert.keyfile)


def shardserve_speaks_http2() -> bool:
    return importlib.util.find_spec("shardserve.shard.h2") is not None


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed")
@pytest.mark.skipif(not shardserve_speaks_http2(), reason="shardserve has no HTTP/2 here")
def test_http2_workloads_run_on_h2load_and_http1_kinds_are_skipped(tmp_path):
    data = tiny(
        tmp_path, "--servers", "shardserve,uvicorn",
        "--workloads", "h2c-plaintext-m10,h2-tls-plaintext",
    )  # fmt: skip
    cells = {(c["server"], c["workload"]): c for c in data["cells"]}
    for workload in ("h2c-plaintext-m10", "h2-tls-plaintext"):
        (run,) = cells["shardserve", workload]["runs"]
        assert run["requests"] > 100 and run["cpu_us_per_request"] > 0, run
        skipped = cells["uvicorn", workload]
        assert skipped["runs"] == [] and "serves HTTP/1.1 only" in skipped["skipped"], skipped
    table = (tmp_path / "results.md").read_text()
    assert "| uvicorn | 1 | skipped: serves HTTP/1.1 only" in table
    assert "Load: h2load" in table and "-m 10" in table
