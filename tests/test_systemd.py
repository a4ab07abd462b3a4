"""systemd socket activation, with real processes: Debian's ``systemd-socket-activate``
(no systemd PID 1 needed) starting shardserve on the first connection, and sockets
this test passes itself (LISTEN_FDS/LISTEN_PID set by a shell that then execs), for
what systemd-socket-activate cannot make (SO_REUSEPORT, two sockets)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import threading
import time

import httpx
import pytest

from serving import ROOT, SYSTEMD_VARIABLES, TESTS, Server

APP = "apps.deploy:app"
ACTIVATE = shutil.which("systemd-socket-activate")
VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    for name in SYSTEMD_VARIABLES:
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


# Readiness (Type=notify) --------------------------------------------------------------


class NotifySocket:
    """The datagram socket systemd would own: the messages shardserve sends to it."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def next(self, key: str, timeout: float = 15) -> dict[str, str]:
        """The next message carrying ``key``, in order (others before it are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.messages):
                if key in message:
                    del self.messages[: i + 1]
                    return message
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {key} within {timeout} s: {self.messages}"
            self.sock.settimeout(remaining)
            data = self.sock.recv(4096).decode()
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines()))

    def close(self) -> None:
        self.sock.close()


def test_notify_ready_status_watchdog_reloading_stopping(tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    env = environment()
    env.update(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1000000")  # (1 s: every 0.5 s)
    server = Server([sys.executable, "-m", "shardserve", APP, "--port", "0"], env, ROOT)
    try:
        ready = notify.next("READY")
        server.wait_ready()
        assert ready["READY"] == "1" and ready["MAINPID"] == str(server.pid), ready
        assert ready["STATUS"].startswith("1 shard, "), ready
        started = time.monotonic()
        notify.next("WATCHDOG", timeout=5)
        notify.next("WATCHDOG", timeout=5)
        assert time.monotonic() - started < 3  # (two pings, half a second apart)
        query = "&".join(f"name={name}" for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC"))
        assert get(server.port, f"/env?{query}").json() == {
            "NOTIFY_SOCKET": None,
            "WATCHDOG_USEC": None,
        }
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        server.signal(signal.SIGHUP)
        reloading = notify.next("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) >= before, reloading
        assert notify.next("READY")["READY"] == "1"
        server.wait_for("Rolling restart complete", 15)
        assert get(server.port).text == "ok"
        server.signal(signal.SIGINT)
        assert notify.next("STOPPING")["STOPPING"] == "1"
        assert server.wait_exit(15) == 0, server.output
    finally:
        server.stop()
        notify.close()


def test_notify_status_counts_requests(tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    env = environment()
    env["NOTIFY_SOCKET"] = notify.path
    server = Server(
        [sys.executable, "-m", "shardserve", APP, "--port", "0", "--shards", "2"], env, ROOT
    )
    try:
        assert notify.next("READY")["STATUS"].startswith("2 shards, ")
        server.wait_ready()
        deadline = time.monotonic() + 20
        while True:  # requests until a STATUS shows them (refreshed every 5 s)
            for _ in range(50):
                get(server.port)
            status = notify.next("STATUS", timeout=10)["STATUS"]
            if not status.endswith(" 0 req/s"):
                break
            assert time.monotonic() < deadline, status
        assert "WATCHDOG" not in str(notify.messages)  # (no WATCHDOG_USEC: none sent)
    finally:
        assert server.stop() == 0, server.output
        notify.close()
