"""`shardserve status | reload | stop` against real servers, over the control socket."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
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


# The default directory: stale sockets, and a directory others could have planted -----


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"process {pid} still there"
        time.sleep(0.05)


def stale_socket(path) -> None:
    """A socket file that no process listens on (what a SIGKILLed server leaves)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def test_stale_sockets_of_killed_servers_are_removed_at_start(serve, tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    directory = tmp_path / "shardserve"
    killed = serve(APP, "--shards", "2", env=env)
    left = directory / f"{killed.pid}.sock"
    assert left.exists()
    os.killpg(killed.pid, signal.SIGKILL)  # the coordinator and its shards: no clean-up
    killed.wait_exit(10)
    wait_gone(killed.pid)
    assert stat.S_ISSOCK(os.lstat(left).st_mode)  # left behind
    stale_socket(directory / "old.sock")
    (directory / "notes.sock").write_text("not a socket")
    (directory / "dir.sock").mkdir()
    with socket.socket(socket.AF_UNIX) as live:  # someone still listens here
        live.bind(str(directory / "live.sock"))
        live.listen(1)
        server = serve(APP, "--shards", "2", env=env)
        assert (directory / f"{server.pid}.sock").exists()
        assert not left.exists() and not (directory / "old.sock").exists()
        assert (directory / "live.sock").exists()
        assert (directory / "notes.sock").read_text() == "not a socket"
        assert (directory / "dir.sock").is_dir()
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["dir.sock", "notes.sock", "live.sock", f"{server.pid}.sock"]
    )
    (directory / "live.sock").unlink()
    (directory / "notes.sock").unlink()
    (directory / "dir.sock").rmdir()
    status = shardserve("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pid"] == server.pid
    assert server.stop() == 0
    assert list(directory.iterdir()) == []


def test_an_explicit_control_socket_leaves_the_default_directory_alone(serve, tmp_path):
    directory = tmp_path / "shardserve"
    directory.mkdir(mode=0o700)
    stale_socket(directory / "old.sock")
    path = str(tmp_path / "ctl.sock")
    serve(APP, "--shards", "2", "--control-socket", path, env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert (directory / "old.sock").exists()


def plant(runtime, case: str):
    """Make ``runtime/shardserve`` unsafe in one way; return a directory sockets land in."""
    directory = runtime / "shardserve"
    if case == "symlink":
        elsewhere = runtime / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        directory.symlink_to(elsewhere)
        return elsewhere
    if case == "file":
        directory.write_text("")
        return None
    directory.mkdir()
    if case == "other-owner":
        if os.getuid() != 0:
            pytest.skip("making a directory someone else's needs root")
        os.chown(directory, 65534, 65534)
        os.chmod(directory, 0o700)
    else:
        os.chmod(directory, int(case.removeprefix("mode-"), 8))
    return directory


UNSAFE = ["mode-755", "mode-777", "mode-710", "symlink", "other-owner", "file"]
PROBLEM = {
    "mode-755": "mode 0755",
    "mode-777": "mode 0777",
    "mode-710": "mode 0710",
    "symlink": "symlink",
    "other-owner": "owned by uid 65534",
    "file": "not a directory",
}


@pytest.mark.parametrize("case", UNSAFE)
def test_coordinator_serves_without_a_control_socket_in_an_unsafe_directory(serve, tmp_path, case):
    runtime = tmp_path / "run"
    runtime.mkdir()
    landing = plant(runtime, case)
    before = sorted(os.listdir(landing)) if landing else None
    server = serve(APP, "--shards", "2", env={"XDG_RUNTIME_DIR": str(runtime)})
    directory = runtime / "shardserve"
    warnings = [line for line in server.lines if str(directory) in line]
    assert len(warnings) == 1, server.output
    assert warnings[0].startswith("WARNING:"), warnings
    assert PROBLEM[case] in warnings[0] and "--control-socket PATH" in warnings[0], warnings
    assert "Traceback" not in server.output
    assert "Control socket:" not in server.output
    if landing:
        assert sorted(os.listdir(landing)) == before  # no socket created there
    assert httpx.get(server.url + "/", timeout=5).status_code == 200
    assert server.stop() == 0


@contextlib.contextmanager
def fake_server(path):
    """A listening socket that answers any command with success (a planted socket)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(8)

    def answer():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with conn, contextlib.suppress(OSError):  # (a probe hangs up at once)
                conn.settimeout(5)
                if conn.recv(4096):
                    conn.sendall(b'{"ok": true, "result": {"planted": true}}\n')

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        listener.close()
        thread.join(5)


@pytest.mark.parametrize("command", ["status", "reload", "stop"])
@pytest.mark.parametrize("case", UNSAFE)
def test_client_refuses_an_unsafe_directory(tmp_path, case, command):
    runtime = tmp_path / "run"
    runtime.mkdir()
    landing = plant(runtime, case)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    with fake_server(landing / "4242.sock") if landing else contextlib.nullcontext():
        result = shardserve(command, env=env)
    directory = runtime / "shardserve"
    assert result.returncode == 1, result
    assert result.stdout == "", result
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr
    assert line.startswith("shardserve: error:") and str(directory) in line, line
    assert PROBLEM[case] in line and "--control-socket PATH" in line, line


@pytest.mark.parametrize("case", ["other-owner", "symlink"])
def test_client_refuses_a_socket_that_is_not_ours(tmp_path, case):
    directory = tmp_path / "shardserve"
    directory.mkdir(mode=0o700)
    found = directory / "4242.sock"
    if case == "other-owner" and os.getuid() != 0:
        pytest.skip("making a socket someone else's needs root")
    with fake_server(found if case == "other-owner" else tmp_path / "elsewhere.sock"):
        if case == "other-owner":
            os.chown(found, 65534, 65534)
        else:
            found.symlink_to(tmp_path / "elsewhere.sock")
        result = shardserve("status", env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert result.returncode == 1, result
    assert result.stdout == "" and result.stderr.count("\n") == 1, result
    line = result.stderr
    assert str(found) in line and "--control-socket PATH" in line, line
    assert ("owned by uid 65534" if case == "other-owner" else "not a socket") in line, line


def test_an_explicit_control_socket_is_not_checked(serve, tmp_path):
    """--control-socket PATH is the user's choice: a directory of any mode will do."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    path = str(shared / "ctl.sock")
    server = serve(APP, "--shards", "2", "--control-socket", path)
    status = shardserve("status", "--control-socket", path, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pid"] == server.pid
