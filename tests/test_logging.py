"""Access log and logging configuration: --access-log, --log-level, --log-config."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx

from serving import ROOT, TESTS, connect, parse_responses, read_until_close

APP = "apps.deploy:app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, timeout: float = 15, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on port {port}")


def raw_get(server, target: str) -> int:
    """One GET on a fresh connection; returns the client's local port."""
    with connect(server) as sock:
        port = sock.getsockname()[1]
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        (response,) = parse_responses(read_until_close(sock))
        assert response.status == 200
    return port


def access_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(r'- "[A-Z]+ \S+ HTTP/1\.[01]"', line)]


def test_access_log_line_per_request(serve, backend):
    server = serve(APP, "--http", backend)
    port1 = raw_get(server, "/path?q=1")
    port2 = raw_get(server, "/other")
    server.wait_for(rf'127\.0\.0\.1:{port1} - "GET /path\?q=1 HTTP/1\.1" 200', timeout=5)
    server.wait_for(rf'127\.0\.0\.1:{port2} - "GET /other HTTP/1\.1" 200', timeout=5)
    # One more on a keep-alive connection: one line per request, not per connection.
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/a").status_code == 200
        assert client.post("/b", content=b"x").status_code == 200
    server.wait_for(r'"POST /b HTTP/1\.1" 200', timeout=5)
    server.stop()
    assert len(access_lines(server.output)) == 4, server.output


def test_access_log_status_and_http10(serve, backend):
    server = serve("apps.echo:hello", "--http", backend)
    with connect(server) as sock:
        sock.sendall(b"GET /ten HTTP/1.0\r\nHost: x\r\n\r\n")
        read_until_close(sock)
    server.wait_for(r'"GET /ten HTTP/1\.0" 200', timeout=5)


def test_access_log_status_and_forwarded_client(serve, backend):
    server = serve(APP, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/status", params={"code": "404"}).status_code == 404
        assert client.post("/status", params={"code": "503"}).status_code == 503
        client.get("/", headers={"X-Forwarded-For": "203.0.113.9"})
    server.wait_for(r'127\.0\.0\.1:\d+ - "GET /status\?code=404 HTTP/1\.1" 404', timeout=5)
    server.wait_for(r'127\.0\.0\.1:\d+ - "POST /status\?code=503 HTTP/1\.1" 503', timeout=5)
    # Behind a trusted proxy the log names the real client.
    server.wait_for(r'203\.0\.113\.9:\d+ - "GET / HTTP/1\.1" 200', timeout=5)


def test_access_log_goes_to_stdout_and_errors_to_stderr(tmp_path):
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardserve", APP, "--port", str(port)],
            stdout=out,
            stderr=err,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        wait_listening(port, proc=proc)
        response = httpx.get(f"http://127.0.0.1:{port}/logged?x=2", timeout=5)
        assert response.status_code == 200
        deadline = time.monotonic() + 5
        while "/logged" not in out_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert re.search(r'127\.0\.0\.1:\d+ - "GET /logged\?x=2 HTTP/1\.1" 200', stdout), stdout
    assert "/logged" not in stderr
    assert "shardserve running on" in stderr


def test_no_access_log(serve, backend):
    server = serve(APP, "--http", backend, "--no-access-log")
    raw_get(server, "/path?q=1")
    assert httpx.get(server.url + "/x", timeout=5).status_code == 200
    assert server.stop() == 0
    assert "DEPLOY-SHUTDOWN-MARKER" in server.output  # the output was fully read
    assert access_lines(server.output) == [], server.output
    assert "/path" not in server.output


def test_log_level_warning_hides_info(serve, backend):
    port = free_port()
    server = serve(
        APP,
        "--http",
        backend,
        "--port",
        str(port),
        "--log-level",
        "warning",
        port=False,
        ready=False,
    )
    server.port = port
    wait_listening(port, proc=server.proc)
    assert httpx.get(server.url + "/path?q=1", timeout=5).text == "ok"
    assert server.stop() == 0
    output = server.output
    # The app's own print()s still show; the server's info lines do not.
    assert "DEPLOY-STARTUP" in output and "DEPLOY-SHUTDOWN-MARKER" in output
    assert "INFO" not in output, output
    assert "shardserve running on" not in output
    assert access_lines(output) == []


def test_log_level_debug_shows_more(serve, backend):
    server = serve("apps.echo:hello", "--http", backend, "--log-level", "debug")
    with connect(server) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        read_until_close(sock)
    server.wait_for(r"DEBUG", timeout=5)


def test_log_config_json(serve, backend, tmp_path):
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"custom": {"format": "CUSTOMPFX[%(name)s] %(levelname)s %(message)s"}},
        "handlers": {
            "out": {
                "class": "logging.StreamHandler",
                "formatter": "custom",
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {
            "shardserve": {"handlers": ["out"], "level": "INFO", "propagate": False},
            "shardserve.access": {"handlers": ["out"], "level": "INFO", "propagate": False},
        },
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    server = serve(APP, "--http", backend, "--log-config", str(path))
    assert re.search(
        r"^CUSTOMPFX\[shardserve\.error\] INFO shardserve running on", server.output, re.M
    )
    port = raw_get(server, "/configured?q=1")
    server.wait_for(
        rf"^CUSTOMPFX\[shardserve\.access\] INFO "
        rf'127\.0\.0\.1:{port} - "GET /configured\?q=1 HTTP/1\.1" 200',
        timeout=5,
    )
    server.stop()
    assert not re.search(r"^INFO:", server.output, re.M), server.output


def test_log_config_ini(serve, backend, tmp_path):
    path = tmp_path / "logging.ini"
    path.write_text(
        "[loggers]\nkeys=root,shardserve\n\n"
        "[handlers]\nkeys=out\n\n"
        "[formatters]\nkeys=plain\n\n"
        "[logger_root]\nlevel=WARNING\nhandlers=out\n\n"
        "[logger_shardserve]\nlevel=INFO\nhandlers=out\nqualname=shardserve\npropagate=0\n\n"
        "[handler_out]\nclass=StreamHandler\nformatter=plain\nargs=(sys.stdout,)\n\n"
        "[formatter_plain]\nformat=INIPFX %(name)s %(message)s\n"
    )
    server = serve(APP, "--http", backend, "--log-config", str(path))
    assert re.search(r"^INIPFX shardserve\.error shardserve running on", server.output, re.M)
    raw_get(server, "/ini")
    server.wait_for(r'^INIPFX shardserve\.access 127\.0\.0\.1:\d+ - "GET /ini HTTP/1\.1" 200')


def test_log_config_broken_file_is_one_line_error(serve, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    server = serve(APP, "--log-config", str(path), ready=False)
    assert server.wait_exit(10) != 0
    lines = [line for line in server.output.splitlines() if line.strip()]
    assert len(lines) == 1, server.output
    assert "--log-config" in lines[0]
