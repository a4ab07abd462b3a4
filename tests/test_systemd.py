"""systemd socket activation, with real processes: Debian's ``systemd-socket-activate``
(no systemd PID 1 needed) starting shardserve on the first connection, and sockets
this test passes itself (LISTEN_FDS/LISTEN_PID set by a shell that then execs), for
what systemd-socket-activate cannot make (SO_REUSEPORT, two sockets)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time

import httpx
import pytest

from serving import ROOT, TESTS, Server

APP = "apps.deploy:app"
ACTIVATE = shutil.which("systemd-socket-activate")
VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    for name in VARIABLES:
        env.pop(name, None)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listener(reuseport: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def passing(sockets: list[socket.socket], *args: str, names: str | None = None) -> Server:
    """shardserve started with ``sockets`` as fds 3, 4, ... and LISTEN_PID its own pid,
    as systemd starts a service; the test's copies are closed once it runs."""
    high = [os.dup2(sock.fileno(), 60 + i) for i, sock in enumerate(sockets)]
    moves = " ".join(f"{3 + i}<&{fd} {fd}<&-" for i, fd in enumerate(high))
    fdnames = f"LISTEN_FDNAMES={names} " if names is not None else ""
    script = f'exec {moves}; LISTEN_PID=$$ LISTEN_FDS={len(sockets)} {fdnames}exec "$@"'
    argv = ["bash", "-c", script, "bash", sys.executable, "-m", "shardserve", APP, *args]
    try:
        return Server(argv, environment(), ROOT, pass_fds=tuple(high))
    finally:
        for fd in high:
            os.close(fd)


def get(port: int, path: str = "/", timeout: float = 10) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)


def shard_pids(port: int, connections: int = 40) -> set[int]:
    """The pids of the shards that answered ``connections`` new connections."""
    return {get(port, "/state").json()["pid"] for _ in range(connections)}


def unset_in_app(port: int) -> bool:
    query = "&".join(f"name={name}" for name in VARIABLES)
    return get(port, f"/env?{query}").json() == dict.fromkeys(VARIABLES)


@pytest.mark.skipif(
    ACTIVATE is None, reason="needs systemd-socket-activate (apt-get install systemd)"
)
def test_systemd_socket_activate_serves_the_connection_that_started_it():
    port = free_port()
    env = environment()
    argv = [ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=web"]
    # (it passes its children only the variables named here, as systemd does)
    argv += [f"--setenv={name}={env[name]}" for name in ("PATH", "PYTHONPATH", "PYTHONUNBUFFERED")]
    argv += [sys.executable, "-m", "shardserve", APP, "--shards", "2"]
    server = Server(argv, env, ROOT)
    try:
        deadline = time.monotonic() + 10
        while True:  # systemd-socket-activate listening, shardserve not started yet
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, server.output
                time.sleep(0.05)
        # That probe started shardserve; this request waits in the queue meanwhile.
        answers: list[str] = []
        first = threading.Thread(target=lambda: answers.append(get(port, timeout=30).text))
        first.start()
        server.wait_ready(30)
        first.join(30)
        assert answers == ["ok"], server.output
        server.wait_for(r"Serving 1 socket passed by systemd \(web\): every shard serves it", 1)
        assert f"running on http://127.0.0.1:{port} " in server.output
        assert unset_in_app(port)
        assert all(get(port).text == "ok" for _ in range(20))
    finally:
        assert server.stop() == 0, server.output


def test_a_passed_reuseport_socket_heads_a_group_every_shard_joins():
    sock = listener(reuseport=True)
    port = sock.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=5)  # before the server
    queued.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    server = passing([sock], "--shards", "2")
    sock.close()
    try:
        server.wait_ready()
        server.wait_for(
            r"Serving 1 socket passed by systemd: shards join its SO_REUSEPORT group", 1
        )
        queued.settimeout(10)
        assert queued.recv(4096).startswith(b"HTTP/1.1 200"), server.output
        assert len(shard_pids(port)) == 2  # (40 connections hashed over the group)
        assert unset_in_app(port)
    finally:
        queued.close()
        assert server.stop() == 0, server.output


def test_two_passed_sockets_are_served_by_every_shard():
    sockets = [listener(reuseport=False), listener(reuseport=False)]
    ports = [sock.getsockname()[1] for sock in sockets]
    server = passing(sockets, "--shards", "2", names="one:two")
    for sock in sockets:
        sock.close()
    try:
        server.wait_ready()
        server.wait_for(
            r"Serving 2 sockets passed by systemd \(one, two\): every shard serves them all", 1
        )
        for port in ports:
            assert all(get(port).text == "ok" for _ in range(10))
    finally:
        assert server.stop() == 0, server.output


def test_flags_that_bind_otherwise_are_refused_with_a_passed_socket(tmp_path):
    sock = listener(reuseport=False)
    server = passing([sock], "--uds", str(tmp_path / "s.sock"))
    sock.close()
    code = server.wait_exit(15)
    assert code != 0
    errors = [line for line in server.lines if "LISTEN_FDS" in line]
    assert len(errors) == 1 and "--fd and --uds cannot be used" in errors[0], server.output


def test_variables_for_another_process_are_ignored_and_removed():
    env = environment()
    env.update(LISTEN_FDS="1", LISTEN_PID="1")  # (not ours: our parent's, say)
    argv = [sys.executable, "-m", "shardserve", APP, "--port", "0"]
    server = Server(argv, env, ROOT)
    try:
        server.wait_ready()
        assert "passed by systemd" not in server.output
        assert unset_in_app(server.port)
    finally:
        assert server.stop() == 0, server.output
