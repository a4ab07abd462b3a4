"""Graceful shutdown: in-flight requests finish, new connections are refused, idle ones close."""

import os
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

from serving import connect, is_closed, parse_responses, read_until_close

APP = "apps.deploy:app"


class Background:
    """Runs one HTTP request in a thread; ``result()`` waits for its response (or error)."""

    def __init__(self, url: str, timeout: float = 15) -> None:
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(url, timeout), daemon=True)
        self._thread.start()

    def _run(self, url: str, timeout: float) -> None:
        try:
            self.response = httpx.get(url, timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        self.finished_at = time.monotonic()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 15) -> httpx.Response:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "request still running"
        if self.error is not None:
            raise self.error
        return self.response


def idle_keep_alive_connection(server) -> socket.socket:
    """A connection that has had one complete exchange and now sits idle."""
    sock = connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    deadline = time.monotonic() + 5
    while not data.endswith(b"ok") and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    (response,) = parse_responses(data)
    assert response.status == 200 and response.body == b"ok"
    return sock


def exit_code_within(server, timeout: float) -> int:
    """The exit code, if the server exits within ``timeout``; else kill it and fail."""
    try:
        return server.wait_exit(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)  # do not leave it to the slower teardown
        server.wait_exit(5)
        raise AssertionError(f"still running after {timeout} s:\n{server.output}") from None


def refused(server) -> bool:
    try:
        sock = socket.create_connection((server.host, server.port), timeout=1)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    sock.close()
    return False


def wait_refused(server, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if refused(server):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_finishes_in_flight_request(serve, backend, signum):
    server = serve(APP, "--http", backend)
    idle = idle_keep_alive_connection(server)
    try:
        slow = Background(server.url + "/sleep?s=2&tag=inflight")
        server.wait_for(r"SLEEPING inflight", timeout=5)
        assert not refused(server)
        signalled_at = time.monotonic()
        server.signal(signum)

        # The idle keep-alive connection is closed at once.
        assert is_closed(idle, timeout=1.0), "idle keep-alive connection was not closed"
        # New connections are refused while the slow request is still running.
        assert wait_refused(server, timeout=1.0), "new connections still accepted"
        assert not slow.done(), "in-flight request ended early"
        assert server.proc.poll() is None

        response = slow.result()
        assert response.status_code == 200
        assert response.text == "slept inflight"
        assert slow.finished_at - signalled_at > 1.0

        assert server.wait_exit(10) == 0
    finally:
        idle.close()
    output = server.output
    assert "DEPLOY-SHUTDOWN-MARKER" in output
    assert output.index("SLEEPING inflight") < output.index("DEPLOY-SHUTDOWN-MARKER")
    assert "Traceback" not in output


def test_shutdown_with_nothing_in_flight_is_prompt(serve, backend):
    server = serve(APP, "--http", backend)
    assert httpx.get(server.url + "/", timeout=5).text == "ok"
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(5) == 0
    assert time.monotonic() - started < 2
    assert "DEPLOY-SHUTDOWN-MARKER" in server.output


def test_graceful_shutdown_timeout(serve, backend):
    server = serve(APP, "--http", backend, "--timeout-graceful-shutdown", "1")
    sock = connect(server, timeout=10)
    try:
        sock.sendall(b"GET /sleep?s=30&tag=stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_for(r"SLEEPING stuck", timeout=5)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        # The client sees its connection closed, with no (or no complete) response.
        data = read_until_close(sock, timeout=5)
        closed_after = time.monotonic() - started
        assert b"slept" not in data
        assert closed_after < 3, f"connection closed only after {closed_after:.1f}s"
        assert closed_after > 0.8, "closed before the grace period ran out"
        assert exit_code_within(server, 3) == 0
        assert time.monotonic() - started < 3.5
    finally:
        sock.close()
    assert "DEPLOY-SHUTDOWN-MARKER" in server.output


def test_second_sigint_forces_exit(serve, backend):
    server = serve(APP, "--http", backend)
    sock = connect(server, timeout=10)
    try:
        sock.sendall(b"GET /sleep?s=30&tag=forced HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_for(r"SLEEPING forced", timeout=5)
        server.signal(signal.SIGINT)
        server.wait_for(r"Shutting down", timeout=5)
        # Still waiting for the in-flight request.
        with pytest.raises(subprocess.TimeoutExpired):
            server.wait_exit(0.5)
        assert server.proc.poll() is None
        started = time.monotonic()
        server.signal(signal.SIGINT)
        exit_code_within(server, 2)
        assert time.monotonic() - started < 2
        assert is_closed(sock, timeout=2)
    finally:
        sock.close()


def test_in_flight_response_carries_connection_close(serve, backend):
    """A keep-alive request answered during shutdown says the connection will close."""
    server = serve(APP, "--http", backend)
    sock = connect(server, timeout=10)
    try:
        sock.sendall(b"GET /sleep?s=1&tag=closing HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_for(r"SLEEPING closing", timeout=5)
        server.signal(signal.SIGTERM)
        data = read_until_close(sock, timeout=5)
    finally:
        sock.close()
    (response,) = parse_responses(data)
    assert response.status == 200
    assert response.body == b"slept closing"
    assert (response.header("connection") or "").lower() == "close"
    assert server.wait_exit(5) == 0


def test_second_sigint_during_stuck_startup_forces_exit(serve):
    """Ctrl+C twice ends a server whose lifespan startup hangs."""
    server = serve("apps.deploy:slow_startup", ready=False)
    server.wait_for(r"SLOW-STARTUP-BEGIN", timeout=10)
    server.signal(signal.SIGINT)
    server.wait_for(r"Shutting down", timeout=5)
    started = time.monotonic()
    server.signal(signal.SIGINT)
    exit_code_within(server, 3)
    assert time.monotonic() - started < 3
    assert "shardserve running on" not in server.output
