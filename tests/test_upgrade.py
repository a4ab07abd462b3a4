"""In-place upgrade of the coordinator: a new coordinator, started from the same command
line, takes over every listening socket and starts its own shards; the old one drains
its shards and exits 0.  Triggered by ``shardserve upgrade`` or SIGUSR2.

Every test runs a real coordinator (``--shards 2`` unless said otherwise) and talks to
it over loopback (or a unix socket) with real clients.  The new coordinator writes to
the same output as the old one, so ``server.output`` shows both; ``server.follow``
makes the fixture stop it too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_metrics import metrics_port, scrape
from test_supervision import (
    Load,
    children,
    coordinator_alive,
    failures,
    fetch,
    group_members,
    initial_shards,
    pids_answering,
    started_pids,
    wait_until,
)
from test_systemd import get, listener, passing, shard_pids

from serving import ROOT, SYSTEMD_VARIABLES, TESTS, Server, process_gone, wait_gone

APP = "apps.lifecycle:app"
NEW_COORDINATOR = r"Upgrade: started a new coordinator \(pid (\d+)\)"
COMPLETE = r"Upgrade complete: coordinator pid {new} serves; pid {old} drains its shards and exits"
UPGRADE_TIMEOUT = 20.0  # (a 2-CPU machine, busy: a coordinator and two shards start)


# Helpers ----------------------------------------------------------------------------------


@pytest.fixture
def runtime(tmp_path) -> Path:
    """A private $XDG_RUNTIME_DIR for the test's servers and commands."""
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    path.chmod(0o700)  # (whatever the umask)
    return path


def start(serve, runtime: Path, *args: str, app: str = APP, env=None, **kwargs) -> Server:
    """``shardserve APP --shards 2 ARGS`` with ``runtime`` as its $XDG_RUNTIME_DIR."""
    full_env = {"XDG_RUNTIME_DIR": str(runtime), **(env or {})}
    return serve(app, "--shards", "2", *args, env=full_env, **kwargs)


def command_env(runtime: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    for name in SYSTEMD_VARIABLES:
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    if runtime is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime)
    return env


def shardserve(*args: str, runtime: Path | None = None) -> subprocess.CompletedProcess:
    """``shardserve ARGS`` (status, upgrade...) run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "shardserve", *args],
        capture_output=True,
        text=True,
        timeout=UPGRADE_TIMEOUT + 10,
        env=command_env(runtime),
        cwd=ROOT,
    )


def status_pid(*args: str, runtime: Path | None = None) -> int:
    """The coordinator pid ``shardserve status --json ARGS`` reports."""
    result = shardserve("status", "--json", *args, runtime=runtime)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["pid"]


def matches(server: Server, pattern: str) -> list[re.Match]:
    regex = re.compile(pattern)
    return [m for line in list(server.lines) if (m := regex.search(line))]


def wait_matches(server: Server, pattern: str, count: int, timeout: float) -> list[re.Match]:
    """Until ``count`` output lines match ``pattern`` (the server may have exited)."""
    return wait_until(
        lambda: (found := matches(server, pattern)) and len(found) >= count and found,
        timeout,
        f"{count} lines matching {pattern!r}:\n{server.output}",
        interval=0.05,
    )


def new_coordinator(server: Server, attempt: int, timeout: float = UPGRADE_TIMEOUT) -> int:
    """The pid of the coordinator that the ``attempt``-th upgrade (from 1) started,
    followed at once so that the fixture stops it too."""
    pid = int(wait_matches(server, NEW_COORDINATOR, attempt, timeout)[attempt - 1][1])
    if pid not in server.successors:
        server.follow(pid)
    return pid


def wait_complete(server: Server, new: int, timeout: float = UPGRADE_TIMEOUT) -> None:
    server.wait_for(COMPLETE.format(new=new, old=server.pid), timeout)


def upgrade_by_signal(server: Server) -> int:
    """SIGUSR2 to the coordinator; the new coordinator's pid once the upgrade is complete."""
    attempt = len(matches(server, NEW_COORDINATOR)) + 1
    server.signal(signal.SIGUSR2)
    new = new_coordinator(server, attempt)
    wait_complete(server, new)
    return new


class UpgradeCommand:
    """``shardserve upgrade ARGS`` running in the background (it returns once the upgrade
    is over); killed on leaving the ``with`` block if it still runs."""

    def __init__(self, server: Server, *args: str, runtime: Path | None = None) -> None:
        self.server = server
        self.attempt = len(matches(server, NEW_COORDINATOR)) + 1
        self.began = time.monotonic()
        self.finished: float | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shardserve", "upgrade", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=command_env(runtime),
            cwd=ROOT,
        )

    def __enter__(self) -> UpgradeCommand:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=5)

    def new_pid(self) -> int:
        return new_coordinator(self.server, self.attempt)

    def finish(self) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of the command."""
        try:
            out, err = self.proc.communicate(timeout=UPGRADE_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
            raise AssertionError(
                f"`shardserve upgrade` still waiting:\n{out}\n{err}\n{self.server.output}"
            ) from None
        self.finished = time.monotonic()
        return self.proc.returncode, out, err

    def succeeded(self) -> int:
        """The new coordinator's pid, from a successful upgrade's one JSON line."""
        new = self.new_pid()
        code, out, err = self.finish()
        assert code == 0, (out, err, self.server.output)
        lines = out.strip().splitlines()
        assert len(lines) == 1, out
        reply = json.loads(lines[0])
        assert reply["upgraded"] is True, reply
        assert (reply["pid"], reply["previous_pid"]) == (new, self.server.pid), reply
        return new


def upgrade(server: Server, *args: str, runtime: Path | None = None) -> int:
    """``shardserve upgrade ARGS``, successful: the new coordinator's pid."""
    with UpgradeCommand(server, *args, runtime=runtime) as command:
        new = command.succeeded()
    wait_complete(server, new, timeout=5)
    return new


def old_coordinator_exits(server: Server, family: set[int]) -> None:
    """The old coordinator exits 0 by itself; ``family`` (its shards and template) ends.
    (Not ``server.wait_exit``: its reader waits for the end of an output that the new
    coordinator still writes to.)"""
    try:
        code = server.proc.wait(UPGRADE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the old coordinator still runs:\n{server.output}") from None
    assert code == 0, server.output
    left = [pid for pid in family if not wait_gone(pid, 10)]
    assert not left, f"the old coordinator's processes still run: {left}\n{server.output}"


def shards_of(server: Server, coordinator: int) -> set[int]:
    """The shard processes of ``coordinator`` (its children that logged a start)."""
    return children(coordinator) & started_pids(server)


class Prober:
    """One check on a new connection every ``interval`` s in a thread, until stopped (or
    ``cap`` checks or ``duration`` s): ``check()`` raises on a failure, recorded."""

    def __init__(self, check, interval=0.05, duration=40.0, cap=800) -> None:
        self.check = check
        self.done = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + duration
        self._cap = cap
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (
            not self._stop.is_set() and self.done < self._cap and time.monotonic() < self._deadline
        ):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - recorded, asserted on by the test
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.done += 1
            self._stop.wait(self._interval)

    def stop(self) -> Prober:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "the prober still runs"
        return self


# 1. Under load ----------------------------------------------------------------------------


def test_upgrade_under_load_fails_no_request(serve, runtime, tmp_path):
    control = str(tmp_path / "c.sock")
    server = start(serve, runtime, "--control-socket", control)
    old_shards = set(initial_shards(server).values())
    family = children(server.pid)
    load = Load(server, new=2, keepalive=2, duration=40)
    try:
        time.sleep(2.0)
        with UpgradeCommand(server, "--control-socket", control, runtime=runtime) as command:
            new = command.succeeded()
        began, done = command.began, command.finished
        old_coordinator_exits(server, family)
        exited = time.monotonic()
        time.sleep(max(2.0, done + 4.0 - exited))
    finally:
        results = load.stop()
    assert not failures(results), failures(results)[:5]
    for kind in ("new", "keepalive"):
        during = [r for r in results if r.kind == kind and began <= r.finished <= done]
        assert during, f"no {kind} request answered during the upgrade"
    new_shards = started_pids(server) - old_shards
    assert len(new_shards) == 2, server.output
    assert {r.pid for r in results if r.finished < began} <= old_shards
    # Requests started once the upgrade was over (a keep-alive connection to an old
    # shard gets one more answer, with connection: close: allow a second for that).
    late = [r for r in results if r.started >= done + 1.0]
    assert len(late) >= 20, len(late)
    assert {r.pid for r in late} <= new_shards, ({r.pid for r in late}, old_shards, new_shards)
    after_exit = [r for r in results if r.started >= exited]
    assert after_exit and {r.pid for r in after_exit} <= new_shards
    assert server.output.count("Upgrade failed") == 0, server.output
    assert status_pid("--control-socket", control, runtime=runtime) == new
    assert not process_gone(new)


# 2. SIGUSR2, default control socket -------------------------------------------------------


def test_sigusr2_upgrade_moves_the_default_control_socket(serve, runtime):
    server = start(serve, runtime)
    old = server.pid
    directory = runtime / "shardserve"
    assert (directory / f"{old}.sock").exists()
    family = children(old)
    new = upgrade_by_signal(server)
    old_coordinator_exits(server, family)
    assert not (directory / f"{old}.sock").exists()
    assert (directory / f"{new}.sock").exists()
    assert status_pid(runtime=runtime) == new
    assert fetch(server)["pid"] in shards_of(server, new)


# 3. A new coordinator that fails ----------------------------------------------------------

PROBE = '''"""A test app: answers with its shard's pid."""
import json
import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = json.dumps({"pid": os.getpid()}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
'''
BROKEN = 'raise ImportError("broken on purpose")\n'


def write_module(path: Path, text: str) -> None:
    path.write_text(text)
    shutil.rmtree(path.parent / "__pycache__", ignore_errors=True)


def test_a_failed_upgrade_leaves_the_old_coordinator_serving(serve, runtime, tmp_path):
    module = tmp_path / "upgrade_probe.py"
    write_module(module, PROBE)
    control = str(tmp_path / "c.sock")
    server = start(
        serve,
        runtime,
        "--app-dir",
        str(tmp_path),
        "--control-socket",
        control,
        app="upgrade_probe:app",
    )
    old_shards = set(initial_shards(server).values())
    assert set(pids_answering(server, 10, until=lambda seen: seen == old_shards)) == old_shards
    before = set(group_members(server.pid))

    write_module(module, BROKEN)
    with UpgradeCommand(server, "--control-socket", control, runtime=runtime) as command:
        failed = command.new_pid()
        code, out, err = command.finish()
    assert code == 1, (out, err, server.output)
    assert "shardserve: error: upgrade failed: " in err, err
    server.wait_for(rf"Upgrade failed: .+; pid {server.pid} keeps serving", 5)
    assert wait_gone(failed, 10), f"the failed coordinator {failed} still runs"
    wait_until(lambda: set(group_members(server.pid)) <= before, 10, "no process but the old ones")
    assert coordinator_alive(server)
    assert set(pids_answering(server, 10, until=lambda seen: seen == old_shards)) == old_shards
    assert "broken on purpose" in server.output, server.output
    failed_lines = [line for line in server.lines if "Upgrade failed" in line]
    assert len(failed_lines) == 1 and "keeps serving" in failed_lines[0], server.output
    assert status_pid("--control-socket", control, runtime=runtime) == server.pid

    write_module(module, PROBE)
    family = children(server.pid)
    new = upgrade(server, "--control-socket", control, runtime=runtime)
    old_coordinator_exits(server, family)
    new_shards = shards_of(server, new)
    assert len(new_shards) == 2, server.output
    assert set(pids_answering(server, 10, until=lambda seen: seen == new_shards)) == new_shards
    assert len([line for line in server.lines if "Upgrade failed" in line]) == 1


# 4. An in-flight request ------------------------------------------------------------------


def test_a_request_in_flight_is_answered_by_its_old_shard(serve, runtime):
    server = start(serve, runtime)
    old_shards = set(initial_shards(server).values())
    family = children(server.pid)
    outcome: dict = {}

    def slow() -> None:
        try:
            outcome["answer"] = fetch(server, "/slow?seconds=6", timeout=30)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    busy = int(server.wait_for(r"LIFECYCLE slow request started, 6\.0 s \[(\d+)\]", 5)[1])
    assert busy in old_shards
    upgrade_by_signal(server)
    assert thread.is_alive(), f"the slow request ended before the upgrade did: {outcome}"
    thread.join(15)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["answer"] == {"pid": busy, "slept": 6.0}
    old_coordinator_exits(server, family)


# 5. A WebSocket ---------------------------------------------------------------------------


def websocket_server(serve, runtime, tmp_path, grace: int) -> tuple[Server, str]:
    """apps.metered (a WebSocket echo) under --timeout-graceful-shutdown ``grace``, with
    a control socket: the server and the socket's path."""
    control = str(tmp_path / "c.sock")
    server = start(
        serve, runtime, "--control-socket", control,
        "--timeout-graceful-shutdown", str(grace), app="apps.metered:app",
    )  # fmt: skip
    return server, control


def test_an_open_websocket_keeps_echoing_until_the_client_closes_it(serve, runtime, tmp_path):
    from websockets.sync.client import connect as ws_connect

    server, control = websocket_server(serve, runtime, tmp_path, grace=60)
    family = children(server.pid)
    with ws_connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=5) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        new = upgrade(server, "--control-socket", control, runtime=runtime)
        for text in ("after", "still"):
            ws.send(text)
            assert ws.recv(timeout=5) == text
        assert httpx.get(server.url + "/", timeout=5).text == "ok"
        with ws_connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=5) as other:
            other.send("new")
            assert other.recv(timeout=5) == "new"
        assert coordinator_alive(server), "the old coordinator left before the WebSocket"
    old_coordinator_exits(server, family)
    assert not process_gone(new)


def test_a_websocket_still_open_at_the_grace_deadline_gets_1012(serve, runtime, tmp_path):
    """--timeout-graceful-shutdown bounds how long an old coordinator lives for its
    WebSockets: then they are closed with 1012 (service restart), and it exits."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    server, control = websocket_server(serve, runtime, tmp_path, grace=2)
    family = children(server.pid)
    with ws_connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=5) as ws:
        upgrade(server, "--control-socket", control, runtime=runtime)
        handed_over = time.monotonic()
        ws.send("after")
        assert ws.recv(timeout=5) == "after"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        waited = time.monotonic() - handed_over
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
    assert 1.0 < waited < 6.0, waited
    old_coordinator_exits(server, family)


# 6. --env-file ----------------------------------------------------------------------------


def test_the_new_coordinator_reads_the_env_file_again(serve, runtime, tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("UPGRADE_MARK=one\n")
    control = str(tmp_path / "c.sock")
    server = start(
        serve,
        runtime,
        "--env-file",
        str(env_file),
        "--control-socket",
        control,
        app="apps.deploy:app",
    )
    url = server.url + "/env?name=UPGRADE_MARK"

    def marks(count: int = 10) -> set[str]:
        return {httpx.get(url, timeout=5).json()["UPGRADE_MARK"] for _ in range(count)}

    assert marks() == {"one"}
    env_file.write_text("UPGRADE_MARK=two\n")
    assert marks() == {"one"}  # (read at start only)
    family = children(server.pid)
    upgrade(server, "--control-socket", control, runtime=runtime)
    old_coordinator_exits(server, family)
    assert marks(20) == {"two"}


# 7. systemd readiness ---------------------------------------------------------------------


class Notifications:
    """The datagrams sent to a NOTIFY_SOCKET this test binds, with each sender's pid
    (SCM_CREDENTIALS: the kernel's word, as systemd reads it)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.pending: list[tuple[int, dict[str, str]]] = []
        self.seen: list[tuple[int, dict[str, str]]] = []

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        size = struct.calcsize("3i")
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(size))
        sender = -1
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = struct.unpack("3i", value[:size])[0]
        message = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.pending.append((sender, message))
        self.seen.append((sender, message))

    def next(self, key: str, timeout: float = UPGRADE_TIMEOUT, **values: str):
        """(sender, message) of the next message carrying ``key`` (and ``values``); those
        before it are dropped from ``pending`` (``seen`` keeps them all)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (sender, message) in enumerate(self.pending):
                if key in message and all(message.get(k) == v for k, v in values.items()):
                    del self.pending[: i + 1]
                    return sender, message
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {key} {values} within {timeout} s: {self.seen}"
            self._receive(remaining)

    def close(self) -> None:
        self.sock.close()


def position(messages: list, message: dict) -> int:
    return next(i for i, m in enumerate(messages) if m is message)


def test_systemd_hears_reloading_then_the_new_main_pid_ready(serve, runtime, tmp_path):
    notify = Notifications(tmp_path / "notify")
    try:
        server = start(serve, runtime, env={"NOTIFY_SOCKET": notify.path})
        old = server.pid
        sender, ready = notify.next("READY")
        assert (sender, ready["MAINPID"]) == (old, str(old)), ready
        family = children(old)
        new = upgrade_by_signal(server)
        sender, reloading = notify.next("RELOADING")
        assert reloading["RELOADING"] == "1" and sender == old, (sender, reloading)
        sender, ready = notify.next("READY", READY="1", MAINPID=str(new))
        assert sender == old, f"READY with MAINPID={new} came from pid {sender}, not {old}"
        messages = [message for _, message in notify.seen]
        between = messages[position(messages, reloading) : position(messages, ready)]
        assert not [m for m in between if "STOPPING" in m], notify.seen
        old_coordinator_exits(server, family)
        assert fetch(server)["pid"] in shards_of(server, new)
    finally:
        notify.close()


# 8. --uds ---------------------------------------------------------------------------------


def test_the_unix_socket_path_serves_across_the_upgrade(serve, runtime, tmp_path):
    path = tmp_path / "s.sock"
    control = str(tmp_path / "c.sock")
    server = start(
        serve,
        runtime,
        "--uds",
        str(path),
        "--control-socket",
        control,
        app="apps.deploy:app",
        port=False,
    )
    family = children(server.pid)

    def check() -> None:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=5) as client:
            response = client.get("http://localhost/")
            assert response.status_code == 200 and response.text == "ok", response

    check()
    prober = Prober(check)
    try:
        upgrade(server, "--control-socket", control, runtime=runtime)
        old_coordinator_exits(server, family)
        done = prober.done
        wait_until(lambda: prober.done >= done + 5, 10, "checks after the old one exited")
    finally:
        prober.stop()
    assert not prober.errors, prober.errors[:5]
    assert path.exists()
    for _ in range(10):
        check()


# 9. --metrics -----------------------------------------------------------------------------


def test_metrics_keep_answering_and_the_start_time_moves_on(serve, runtime):
    server = start(serve, runtime, "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    gauge = ("shardserve_start_time_seconds", ())
    before = scrape(port)[gauge]
    assert abs(before - time.time()) < 120, before
    family = children(server.pid)
    prober = Prober(lambda: scrape(port))
    try:
        upgrade_by_signal(server)
        old_coordinator_exits(server, family)
        done = prober.done
        wait_until(lambda: prober.done >= done + 5, 10, "scrapes after the old one exited")
    finally:
        prober.stop()
    assert not prober.errors, prober.errors[:5]
    after = scrape(port)[gauge]
    assert after > before, (before, after)


# 10. Socket activation --------------------------------------------------------------------


def test_a_socket_activated_server_upgrades(monkeypatch, runtime):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))  # (passing() copies os.environ)
    sock = listener(reuseport=True)
    port = sock.getsockname()[1]
    server = passing([sock], "--shards", "2")
    sock.close()
    try:
        server.wait_ready()
        old_shards = set(initial_shards(server).values())
        family = children(server.pid)
        assert get(port).text == "ok"
        upgrade_by_signal(server)
        old_coordinator_exits(server, family)
        assert all(get(port).text == "ok" for _ in range(10))
        pids = shard_pids(port, 20)
        assert pids and not pids & old_shards, (pids, old_shards)
    finally:
        server.stop()


# 11. One shard in the coordinator's process -----------------------------------------------


def test_sigusr2_is_ignored_by_a_one_shard_server(serve, runtime):
    server = serve(APP, env={"XDG_RUNTIME_DIR": str(runtime)})
    assert fetch(server)["pid"] == server.pid
    server.signal(signal.SIGUSR2)
    server.wait_for(r"SIGUSR2 ignored", 5)
    for _ in range(10):
        assert fetch(server)["pid"] == server.pid
    assert coordinator_alive(server)
    assert not matches(server, NEW_COORDINATOR), server.output


# 12. One upgrade at a time ----------------------------------------------------------------


def test_a_second_upgrade_while_one_runs_is_refused(serve, runtime, tmp_path):
    control = str(tmp_path / "c.sock")
    # The new coordinator's shards take 2 s to start: the first upgrade is still running.
    server = start(
        serve, runtime, "--control-socket", control, env={"LIFECYCLE_STARTUP_DELAY": "2"}
    )
    family = children(server.pid)
    with UpgradeCommand(server, "--control-socket", control, runtime=runtime) as first:
        first.new_pid()
        second = shardserve("upgrade", "--control-socket", control, runtime=runtime)
        assert second.returncode == 1, (second.stdout, second.stderr)
        assert "shardserve: error: upgrade failed: " in second.stderr, second.stderr
        assert re.search(r"already|under way|in progress", second.stderr), second.stderr
        assert first.proc.poll() is None, "the first upgrade was over: nothing was tested"
        server.signal(signal.SIGUSR2)  # refused too (or ignored): no second coordinator
        new = first.succeeded()
    old_coordinator_exits(server, family)
    assert len(matches(server, NEW_COORDINATOR)) == 1, server.output
    assert fetch(server)["pid"] in shards_of(server, new)


def test_stopping_during_an_upgrade_stops_the_new_coordinator_too(serve, runtime, tmp_path):
    """SIGTERM while the new coordinator's shards still start: it is stopped with the
    old one (no server is left running that nobody asked for), and the upgrade
    command reports the failure."""
    control = str(tmp_path / "c.sock")
    server = start(
        serve, runtime, "--control-socket", control, env={"LIFECYCLE_STARTUP_DELAY": "2"}
    )
    family = children(server.pid)
    with UpgradeCommand(server, "--control-socket", control, runtime=runtime) as command:
        new = command.new_pid()
        server.signal(signal.SIGTERM)
        code, out, err = command.finish()
    assert code == 1 and "upgrade failed: this server is stopping" in err, (out, err)
    old_coordinator_exits(server, family)
    assert wait_gone(new, 15), f"the new coordinator {new} outlived the stop:\n{server.output}"
    assert len(matches(server, r"Upgrade failed: ")) == 1, server.output
    assert not matches(server, r"Upgrade complete"), server.output
