"""Start real shardserve processes for tests and talk to them over real sockets.

Every server a test starts goes through ``ServerFactory`` (the ``serve`` fixture),
which stops it at teardown, so no process outlives its test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
READY = re.compile(r"shardserve running on (https?)(?:\+unix)?://(\S+?)(?::(\d+))? \(")

# What systemd passes a service (socket activation, readiness): never inherited by a
# server a test starts, unless the test sets them.
SYSTEMD_VARIABLES = (
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)

# Parser back-ends every HTTP behaviour test runs against.
BACKENDS = ["httptools", "python", "h11"]
# The event loop of every server a test starts without --loop (default: shardserve's
# own choice, uvloop here); SHARDSERVE_TEST_LOOP=asyncio runs them on stdlib asyncio.
TEST_LOOP = os.environ.get("SHARDSERVE_TEST_LOOP", "")


class Server:
    """A shardserve process started by a test, with its merged stdout/stderr captured."""

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: Path, pass_fds: tuple[int, ...] = ()
    ) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
            pass_fds=pass_fds,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.scheme = "http"
        self.host = "127.0.0.1"
        self.port = 0
        self.successors: list[int] = []  # coordinators that in-place upgrades started

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """Wait until a line of output matches ``pattern`` (a regex); return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no output line matched {pattern!r}:\n{self.output}")
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(
                        f"server exited ({self.proc.returncode}) before {pattern!r}:\n"
                        + "\n".join(self.lines)
                    )
                self._changed.wait(min(remaining, 0.1))

    def wait_ready(self, timeout: float = 15.0) -> Server:
        match = self.wait_for(READY.pattern, timeout)
        self.scheme = match.group(1)
        if match.group(3):
            self.host = match.group(2).strip("[]")
            self.port = int(match.group(3))
        return self

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        if not self.successors:  # (else they hold its output open: read on)
            self._reader.join(5)
        return code

    def follow(self, pid: int) -> None:
        """An in-place upgrade replaced the coordinator with ``pid`` (not our child, but
        in our process group): stop() stops it too."""
        self.successors.append(pid)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT, then SIGKILL if it does not exit in time; returns the exit code.
        Coordinators that upgrades started (``follow``) are stopped the same way, and
        whatever is left in the process group is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for pid in self.successors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            if not wait_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_gone(pid, 5)
        if self.successors:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # (nothing should be left)
        self._reader.join(5)
        return self.proc.returncode

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: not our child, nobody may reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class ServerFactory:
    def __init__(self) -> None:
        self.servers: list[Server] = []

    def __call__(
        self,
        app: str,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready: bool = True,
        port: bool = True,
        timeout: float = 15.0,
        fd_limit: int | None = None,
    ) -> Server:
        """Start ``shardserve APP ARGS`` on a free port (unless ``port=False``), under
        ``ulimit -n fd_limit`` if given."""
        argv = [sys.executable, "-m", "shardserve", app]
        if port:
            argv += ["--port", "0"]
        argv += list(args)
        if TEST_LOOP and "--loop" not in args:  # (CI runs the HTTP tests on both loops)
            argv += ["--loop", TEST_LOOP]
        if fd_limit is not None:
            argv = ["sh", "-c", f'ulimit -n {fd_limit} && exec "$@"', "sh", *argv]
        full_env = dict(os.environ)
        for name in SYSTEMD_VARIABLES:  # (a CI runner under systemd must not leak them)
            full_env.pop(name, None)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(TESTS), full_env.get("PYTHONPATH", "")]
        )
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        server = Server(argv, full_env, cwd or ROOT)
        self.servers.append(server)
        if ready:
            server.wait_ready(timeout)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


# Raw-socket helpers ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_backs_off_at_fd_limit(server: Server, connections: int = 200) -> None:
    """With the server under a low ``ulimit -n``, open ``connections`` idle ones: it
    must stop accepting quietly (under half a CPU-second in 3 s, at most 3 log
    lines about it), then serve again once descriptors are free."""
    idle = []
    try:
        for _ in range(connections):
            idle.append(socket.create_connection((server.host, server.port), timeout=5))
        server.wait_for(r"(?i)file descriptors|out of system resource", timeout=10)
        before = cpu_seconds(server.pid)
        time.sleep(3)
        busy = cpu_seconds(server.pid) - before
        assert busy < 0.5, f"the server used {busy:.2f} CPU-seconds in 3 s at the fd limit"
        lines = sum(
            "descriptor" in line or "out of system resource" in line for line in server.lines
        )
        assert lines <= 3, server.output[-3000:]
        # Free descriptors: the queued connections, then a new one, are served.
        for sock in idle[: connections * 3 // 4]:
            sock.close()
        del idle[: connections * 3 // 4]
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            response = read_until_close(sock, 10)
        assert response.startswith(b"HTTP/1.1 "), response
    finally:
        for sock in idle:
            sock.close()


def connect(server: Server, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_close(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(server: Server, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a new connection, return everything received until close."""
    with connect(server, timeout) as sock:
        sock.sendall(raw)
        return read_until_close(sock, timeout)


def is_closed(sock: socket.socket, timeout: float = 2.0) -> bool:
    """True if the server closed the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


class Response:
    """One HTTP/1.1 response parsed off a byte stream (status, headers, body)."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:60]!r}>"


def parse_responses(data: bytes, head_requests: int = 0) -> list[Response]:
    """Split a byte stream into responses; the first ``head_requests`` final ones
    (answers to HEAD) carry no body.  Interim (1xx) responses are included."""
    responses = []
    finals = 0
    rest = data
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError(f"incomplete response head: {head!r}")
        lines = head.decode("latin-1").split("\r\n")
        _, status_text, *reason = lines[0].split(" ", 2)
        status = int(status_text)
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
        response = Response(status, reason[0] if reason else "", headers, b"")
        responses.append(response)
        if status < 200:
            continue
        finals += 1
        if finals <= head_requests or status in (204, 304):
            continue
        length = response.header("content-length")
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    _, _, rest = rest.partition(b"\r\n")
                    break
                body += rest[:size]
                rest = rest[size + 2 :]
            response.body = body
        elif length is not None:
            response.body = rest[: int(length)]
            rest = rest[int(length) :]
        else:
            response.body, rest = rest, b""
    return responses


@contextlib.contextmanager
def running(factory: ServerFactory, app: str, *args: str, **kwargs) -> Iterator[Server]:
    server = factory(app, *args, **kwargs)
    try:
        yield server
    finally:
        server.stop()


class RssMonitor:
    """Sample a server's RSS every 20 ms in a thread while the ``with`` block runs (and
    once more at its end, for what is over within 20 ms); ``check`` asserts it grew by
    less than ``bound_kib``."""

    def __init__(self, server: Server, bound_kib: int, min_samples: int = 10) -> None:
        self.server = server
        self.bound_kib = bound_kib
        self.min_samples = min_samples
        self.idle = server.rss_kib()
        self.peak = self.idle
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> bool:
        try:
            rss = self.server.rss_kib()
        except (OSError, RuntimeError):
            return False  # the process is gone; the test will notice
        self.peak = max(self.peak, rss)
        self.samples += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(0.02) and self._sample():
            pass

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def check(self, what: str) -> None:
        growth = self.peak - self.idle
        assert self.samples >= self.min_samples, f"only {self.samples} RSS samples taken"
        assert growth < self.bound_kib, (
            f"server RSS grew by {growth} KiB (idle {self.idle} KiB, peak {self.peak} KiB) "
            f"during {what}"
        )


@contextlib.contextmanager
def serving_inherited_fd(log: Path, *args: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """A shardserve started with ``--fd`` on a listening socket made here (already
    listening, so clients wait in its backlog until the server serves): yields (port,
    process); its output goes to ``log``.  Killed at the end if still running."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardserve", *args, "--fd", str(fd)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            pass_fds=(fd,),
            start_new_session=True,
        )
    listener.close()  # the server holds its own copy now
    try:
        yield port, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
