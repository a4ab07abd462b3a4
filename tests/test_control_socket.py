"""`shardserve status | reload | stop` against real servers, over the control socket."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time

import httpx
import pytest

from serving import ROOT, TESTS

APP = "apps.echo:hello"


def shardserve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "shardserve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=full_env,
        cwd=ROOT,
    )


def started(server) -> dict[int, int]:
    return {
        int(m[1]): int(m[2]) for m in re.finditer(r"Started shard (\d+) \[(\d+)\]", server.output)
    }


def test_status_lists_every_shard(serve, tmp_path):
    path = str(tmp_path / "ctl.sock")
    server = serve(APP, "--shards", "2", "--control-socket", path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for _ in range(20):
        assert httpx.get(server.url + "/", timeout=5).status_code == 200
    deadline = time.monotonic() + 5
    while True:  # stats arrive once a second
        status = json.loads(shardserve("status", "--control-socket", path, "--json").stdout)
        if status["totals"]["requests"] >= 20 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["pid"] == server.pid
    assert status["state"] == "running"
    assert status["totals"]["requests"] == 20
    rows = {row["index"]: row for row in status["shards"]}
    assert {i: row["pid"] for i, row in rows.items()} == started(server)
    for row in rows.values():
        assert row["mode"] == "process" and row["state"] == "ready"
        assert row["rss_bytes"] > 2**20 and row["uptime_s"] >= 0 and row["restarts"] == 0
    assert status["coordinator_rss_bytes"] > 2**20
    assert status["responses"] == {"GET": [0, 0, 20, 0, 0, 0, 0, 0, 0, 0]}
    table = shardserve("status", "--control-socket", path)
    assert table.returncode == 0
    header = table.stdout.splitlines()[1].split()
    assert header[:8] == ["shard", "pid", "mode", "cpus", "state", "req/s", "p50", "ms"]
    assert f"coordinator pid {server.pid}" in table.stdout
    assert len(table.stdout.strip().splitlines()) == 4  # summary, header, two shards


def test_status_shows_the_last_ten_seconds_rate_latency_and_cpu(serve, tmp_path):
    path = str(tmp_path / "ctl.sock")
    server = serve("apps.metered:app", "--shards", "2", "--control-socket", path)
    deadline = time.monotonic() + 10
    while True:  # traffic spread over a few stats reports, reaching both shards
        for _ in range(10):
            with httpx.Client() as client:  # a new connection each
                assert client.get(server.url + "/sleep?ms=2", timeout=5).status_code == 200
        status = json.loads(shardserve("status", "--control-socket", path, "--json").stdout)
        rows = status["shards"]
        if all(row["p50_ms_10s"] is not None for row in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    for row in rows:
        assert row["rps_10s"] > 0, row
        # Each request sleeps 2 ms: the median is at least the 1 ms bucket's bound.
        assert 1 <= row["p50_ms_10s"] <= row["p99_ms_10s"] <= 10_000, row
        assert row["cpu_percent_10s"] >= 0, row
    table = shardserve("status", "--control-socket", path).stdout
    for line in table.strip().splitlines()[2:]:
        assert "-" not in line.split()[5:9], table  # req/s, p50, p99, cpu % all known


def test_reload_and_stop(serve, tmp_path):
    path = str(tmp_path / "ctl.sock")
    server = serve(APP, "--shards", "2", "--control-socket", path)
    first = set(started(server).values())
    reply = shardserve("reload", "--control-socket", path)
    assert reply.returncode == 0 and json.loads(reply.stdout) == {"reloading": True}
    server.wait_for(r"Rolling restart complete\.", 15)
    assert len(set(started(server).values()) - first) == 2
    assert shardserve("stop", "--control-socket", path).returncode == 0
    assert server.wait_exit(15) == 0
    assert not os.path.exists(path)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json\n", "not JSON"),
        (b'["status"]\n', "expected"),
        (b'{"command": "explode"}\n', "unknown command"),
        (b'{"command": "status"' + b" " * 70000 + b"}\n", "too long"),
        (b'{"command": "status"}', "newline"),
    ],
)
def test_bad_commands_get_an_error_and_serving_goes_on(serve, tmp_path, raw, error):
    path = str(tmp_path / "ctl.sock")
    server = serve(APP, "--shards", "2", "--control-socket", path)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert error in json.loads(answer)["error"]
    assert httpx.get(server.url + "/", timeout=5).status_code == 200
    assert shardserve("status", "--control-socket", path).returncode == 0


def test_default_socket_is_found_under_the_runtime_directory(serve, tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    server = serve(APP, "--shards", "2", env=env)
    assert (tmp_path / "shardserve" / f"{server.pid}.sock").exists()
    status = shardserve("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pid"] == server.pid


def test_status_without_a_server_is_one_line(tmp_path):
    result = shardserve("status", env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no running shardserve" in result.stderr


def test_unusable_control_socket_path_is_one_line(serve, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    server = serve(APP, "--shards", "2", "--control-socket", str(blocker / "c.sock"), ready=False)
    assert server.wait_exit(15) != 0
    lines = [line for line in server.lines if "error" in line.lower()]
    assert len(lines) == 1 and "--control-socket" in lines[0], server.output
