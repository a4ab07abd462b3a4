"""The command line: bad values, unloadable apps, env vars, --env-file, --factory, --app-dir,
--uds, --fd, a busy port and --version."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

import shardserve
from serving import BACKENDS, ROOT, TESTS, serving_inherited_fd


def problem_line(server, timeout: float = 6) -> str:
    """Wait for a server that must fail; return its one line of complaint."""
    started = time.monotonic()
    deadline = started + timeout
    while server.proc.poll() is None and time.monotonic() < deadline:
        if "shardserve running on" in server.output:
            raise AssertionError(f"served instead of failing:\n{server.output}")
        time.sleep(0.02)
    try:
        code = server.wait_exit(0.1)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout}s:\n{server.output}") from None
    output = server.output
    assert code != 0, output
    assert time.monotonic() - started < 5, output
    assert "Traceback" not in output, output
    assert "shardserve running on" not in output, output
    # Informational log lines may precede it; the problem itself is one line.
    problems = [
        line for line in output.splitlines() if line.strip() and not line.startswith("INFO:")
    ]
    assert len(problems) == 1, output
    return problems[0]


def only_line(server, timeout: float = 6) -> str:
    """For failures found before the server starts at all: the whole output is one line."""
    line = problem_line(server, timeout)
    assert server.output.strip() == line, server.output
    return line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Bad flag values ---------------------------------------------------------------------


BAD_VALUES = [
    (["--port", "abc"], ["--port", "abc"]),
    (["--port", "-1"], ["--port"]),
    (["--port", "70000"], ["--port", "70000", "65535"]),
    (["--port", "65536"], ["--port", "65536", "65535"]),
    (["--http", "nope"], ["--http", "nope"]),
    (["--loop", "nope"], ["--loop", "nope"]),
    (["--lifespan", "sometimes"], ["--lifespan", "sometimes"]),
    (["--log-level", "loud"], ["--log-level", "loud"]),
    (["--shards", "0"], ["--shards"]),
    (["--timeout-keep-alive", "soon"], ["--timeout-keep-alive", "soon"]),
    (["--nope"], ["--nope"]),
    (["--header", "novalue"], ["--header", "novalue"]),
    (["--header", ":value"], ["--header"]),
    (["--forwarded-allow-ips", "notanip"], ["--forwarded-allow-ips", "notanip"]),
    (["--forwarded-allow-ips", "10.0.0.0/33"], ["--forwarded-allow-ips", "10.0.0.0/33"]),
    (["--env-file", "/nonexistent/.env"], ["--env-file", "/nonexistent/.env"]),
    (["--log-config", "/nonexistent/log.json"], ["--log-config"]),
    (["--uds", "/tmp/x.sock", "--fd", "3"], ["--uds", "--fd"]),
]


@pytest.mark.parametrize(
    ("args", "expected"), BAD_VALUES, ids=[" ".join(args) for args, _ in BAD_VALUES]
)
def test_bad_flag_value_is_one_line(serve, args, expected):
    # (--port 0 comes first, so that a value wrongly accepted does not bind port 8000.)
    server = serve("apps.echo:hello", *args, ready=False)
    line = only_line(server)
    for text in expected:
        assert text in line, line


def test_missing_app_argument(serve):
    # No APP at all (the first word given to serve() is a flag here).
    server = serve("--port", "0", port=False, ready=False)
    line = only_line(server)
    assert "APP" in line


# Apps that cannot be loaded ----------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("nosuchmodule:app", "nosuchmodule"),
        ("apps.echo:nosuchattr", "nosuchattr"),
        ("apps.nosuchmodule:app", "apps.nosuchmodule"),
        ("badformat", "badformat"),
        ("apps.echo:", "apps.echo:"),
        ("apps.deploy:SEEN_SCOPE_TYPES", "SEEN_SCOPE_TYPES"),
    ],
)
def test_unloadable_app_is_one_line(serve, app, expected):
    line = problem_line(serve(app, ready=False))
    assert expected in line, line


def run_cli(*args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    """Run the CLI to completion (killed if it outlives ``timeout``), stdout and stderr apart."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "shardserve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "args",
    [["apps.echo:hello", "--port", "abc"], ["nosuchmodule:app"], ["apps.echo:nosuchattr"]],
    ids=["bad-port", "no-module", "no-attribute"],
)
def test_failure_is_exactly_one_line_on_stderr(args):
    """Before serving, a failure prints its one line on stderr and nothing else."""
    result = run_cli(*args)
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_app_module_with_syntax_error(serve, tmp_path):
    (tmp_path / "broken_syntax.py").write_text("async def app(scope, receive, send)\n    pass\n")
    server = serve("broken_syntax:app", "--app-dir", str(tmp_path), ready=False)
    line = problem_line(server)
    assert "SyntaxError" in line
    assert "broken_syntax" in line


def test_app_module_raising_at_import(serve, tmp_path):
    (tmp_path / "raises_on_import.py").write_text(
        "import os\n\nraise RuntimeError('IMPORT-TIME-BOOM')\n\nasync def app(s, r, w):\n    pass\n"
    )
    server = serve("raises_on_import:app", "--app-dir", str(tmp_path), ready=False)
    line = problem_line(server)
    assert "IMPORT-TIME-BOOM" in line
    assert "raises_on_import" in line


def test_app_module_importing_missing_dependency(serve, tmp_path):
    """A module that exists but imports a missing one names the missing one."""
    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_xyz\n\napp = None\n")
    server = serve("needs_dep:app", "--app-dir", str(tmp_path), ready=False)
    line = problem_line(server)
    assert "no_such_dependency_xyz" in line


def test_factory_that_raises(serve):
    line = problem_line(serve("apps.deploy:broken_factory", "--factory", ready=False))
    assert "factory exploded" in line


# Environment variables -------------------------------------------------------------------


def test_env_port(serve, backend):
    port = free_port()
    server = serve(
        "apps.echo:hello", "--http", backend, port=False, env={"SHARDSERVE_PORT": str(port)}
    )
    assert server.port == port
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "Hello, world!"


def test_flag_beats_env(serve, backend):
    server = serve("apps.echo:hello", "--http", backend, env={"SHARDSERVE_PORT": "1"})
    assert server.port not in (0, 1)


def test_env_bad_value_is_one_line(serve):
    server = serve("apps.echo:hello", port=False, ready=False, env={"SHARDSERVE_PORT": "abc"})
    # (If the variable were ignored, this would serve on port 8000 until stopped.)
    line = only_line(server)
    assert "abc" in line and "port" in line.lower()


def test_env_port_out_of_range_is_one_line(serve):
    # (Before ports were bounded, 70000 served on 70000 mod 65536 = 4464.)
    server = serve("apps.echo:hello", port=False, ready=False, env={"SHARDSERVE_PORT": "70000"})
    line = only_line(server)
    assert "70000" in line and "port" in line.lower() and "65535" in line, line


@pytest.mark.parametrize("port", [70000, -1])
def test_library_run_refuses_a_port_out_of_range(port):
    """shardserve.run(port=70000) raises a one-line ConfigError instead of serving on 4464."""
    script = (
        "import shardserve\n"
        "try:\n"
        f"    shardserve.run('apps.echo:hello', port={port})\n"
        "except shardserve.errors.ConfigError as exc:\n"
        "    print(exc)\n"
        "    raise SystemExit(3)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{TESTS}")
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # it served: stop it, then fail
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=5)
        raise AssertionError(f"run(port={port}) served instead of refusing:\n{out}{err}") from None
    assert proc.returncode == 3, (out, err)
    lines = out.splitlines()
    assert len(lines) == 1 and "port" in lines[0] and str(port) in lines[0], (out, err)
    assert "65535" in lines[0], lines


@pytest.mark.parametrize("value", BACKENDS)
def test_env_http(serve, value):
    server = serve("apps.echo:hello", env={"SHARDSERVE_HTTP": value})
    assert httpx.get(server.url + "/", timeout=5).text == "Hello, world!"
    server.wait_for(rf"Started shard 0 \[\d+\] \(http: {value}, loop: ", 1)


def test_http_auto_is_httptools_where_it_loads(serve):
    server = serve("apps.echo:hello")
    server.wait_for(r"Started shard 0 \[\d+\] \(http: httptools, loop: uvloop\)", 1)


def test_http_auto_falls_back_to_the_python_parser_without_httptools(serve, tmp_path):
    """Where httptools cannot load (here: an httptools that fails to import, standing in
    for a Python without its wheel) --http auto uses the pure-Python parser."""
    broken = tmp_path / "httptools"
    broken.mkdir()
    (broken / "__init__.py").write_text('raise ImportError("no C extension here")\n')
    path = os.pathsep.join([str(tmp_path), str(ROOT), str(TESTS)])
    server = serve("apps.echo:hello", "--loop", "asyncio", env={"PYTHONPATH": path})
    server.wait_for(r"Started shard 0 \[\d+\] \(http: python, loop: asyncio\)", 1)
    assert httpx.get(server.url + "/", timeout=5).text == "Hello, world!"
    # Strict where RFC 9112 says so, as only the Python parser is among auto's choices:
    # llhttp would accept a second Host.
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400 ")


def test_env_http_is_read(serve):
    server = serve("apps.echo:hello", ready=False, env={"SHARDSERVE_HTTP": "nope"})
    assert "nope" in only_line(server)


def test_env_root_path(serve, backend):
    server = serve("apps.echo:scope_json", "--http", backend, env={"SHARDSERVE_ROOT_PATH": "/api"})
    scope = httpx.get(server.url + "/items", timeout=5).json()
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/items"


def test_env_app(serve, backend):
    # The APP argument comes from SHARDSERVE_APP; serve()'s first word is a flag here.
    server = serve(
        "--http", backend, "--port", "0", port=False, env={"SHARDSERVE_APP": "apps.echo:hello"}
    )
    assert httpx.get(server.url + "/", timeout=5).text == "Hello, world!"


def test_env_boolean_and_repeated_options(serve, backend):
    server = serve(
        "apps.echo:hello",
        "--http",
        backend,
        # --header's variable is named after the option's field, as uvicorn's UVICORN_HEADERS.
        env={"SHARDSERVE_SERVER_HEADER": "false", "SHARDSERVE_HEADERS": "x-a:1 x-b:2"},
    )
    response = httpx.get(server.url + "/", timeout=5)
    assert "server" not in response.headers
    assert (response.headers["x-a"], response.headers["x-b"]) == ("1", "2")


def test_env_access_log_off(serve, backend):
    server = serve("apps.echo:hello", "--http", backend, env={"SHARDSERVE_ACCESS_LOG": "false"})
    assert httpx.get(server.url + "/logged", timeout=5).status_code == 200
    server.stop()
    assert "/logged" not in server.output


# --env-file, --factory, --app-dir -----------------------------------------------------


def test_env_file(serve, backend, tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text(
        "# a comment\n"
        "PLAIN_VALUE=hello\n"
        'QUOTED_VALUE="two words"\n'
        "export EXPORTED_VALUE=exported\n"
        "PRESET_VALUE=from-file\n"
    )
    server = serve(
        "apps.deploy:app",
        "--http",
        backend,
        "--env-file",
        str(env_file),
        env={"PRESET_VALUE": "from-environment"},
    )
    names = ["PLAIN_VALUE", "QUOTED_VALUE", "EXPORTED_VALUE", "PRESET_VALUE", "ABSENT_VALUE"]
    response = httpx.get(server.url + "/env", params=[("name", n) for n in names], timeout=5)
    assert response.json() == {
        "PLAIN_VALUE": "hello",
        "QUOTED_VALUE": "two words",
        "EXPORTED_VALUE": "exported",
        "PRESET_VALUE": "from-environment",  # the real environment wins, as with dotenv
        "ABSENT_VALUE": None,
    }


def test_env_file_can_configure_the_app_module(serve, backend, tmp_path):
    """Variables from --env-file are set before the app module is imported."""
    app_dir = tmp_path / "code"
    app_dir.mkdir()
    (app_dir / "reads_env.py").write_text(
        "import os\n"
        "GREETING = os.environ['GREETING_AT_IMPORT']\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': GREETING.encode()})\n"
    )
    env_file = tmp_path / ".env"
    env_file.write_text("GREETING_AT_IMPORT=hi-from-env-file\n")
    server = serve(
        "reads_env:app", "--http", backend, "--app-dir", str(app_dir), "--env-file", str(env_file)
    )
    assert httpx.get(server.url + "/", timeout=5).text == "hi-from-env-file"


def test_env_file_malformed_is_one_line(serve, tmp_path):
    env_file = tmp_path / "bad.env"
    env_file.write_text("GOOD=1\nthis line has no equals sign\n")
    line = only_line(serve("apps.echo:hello", "--env-file", str(env_file), ready=False))
    assert "--env-file" in line
    assert "line 2" in line


def test_factory(serve, backend):
    server = serve("apps.deploy:create_app", "--http", backend, "--factory")
    response = httpx.get(server.url + "/", timeout=5)
    assert response.status_code == 200
    assert response.text == "made by factory"


def test_app_dir(serve, backend, tmp_path):
    app_dir = tmp_path / "elsewhere"
    app_dir.mkdir()
    (app_dir / "remote_app.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200,\n"
        "                'headers': [(b'content-type', b'text/plain')]})\n"
        "    await send({'type': 'http.response.body', 'body': b'from app-dir'})\n"
    )
    server = serve("remote_app:app", "--http", backend, "--app-dir", str(app_dir))
    assert httpx.get(server.url + "/", timeout=5).text == "from app-dir"


def test_app_dir_needed(serve, tmp_path):
    (tmp_path / "hidden_app.py").write_text("async def app(scope, receive, send):\n    pass\n")
    line = problem_line(serve("hidden_app:app", ready=False))
    assert "hidden_app" in line


# Listeners: --uds, --fd, a busy port ---------------------------------------------------


def start_on_uds(serve, backend, path):
    server = serve(
        "apps.echo:scope_json", "--http", backend, "--uds", str(path), port=False, ready=False
    )
    server.wait_for(rf"shardserve running on http\+unix://{path} \(", timeout=15)
    return server


def test_uds(serve, backend, tmp_path):
    path = tmp_path / "shard.sock"
    server = start_on_uds(serve, backend, path)
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, timeout=5) as client:
        response = client.get("http://localhost/over-unix?x=1")
        assert response.status_code == 200
        scope = response.json()
        assert scope["path"] == "/over-unix"
        assert scope["query_string"] == "x=1"
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--unix-socket", str(path), "http://localhost/curl"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    assert '"path": "/curl"' in result.stdout
    server.wait_for(r'"GET /over-unix\?x=1 HTTP/1\.1" 200', timeout=5)
    assert server.stop() == 0
    assert not path.exists(), "unix socket file left behind"


def test_uds_replaces_stale_socket_file(serve, backend, tmp_path):
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, with nobody listening
    assert path.exists()
    start_on_uds(serve, backend, path)
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, timeout=5) as client:
        assert client.get("http://localhost/").status_code == 200


def test_uds_in_use_is_one_line_error(serve, tmp_path):
    path = tmp_path / "busy.sock"
    occupant = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        occupant.bind(str(path))
        occupant.listen(1)
        server = serve("apps.echo:hello", "--uds", str(path), port=False, ready=False)
        line = only_line(server)
        assert str(path) in line
        assert path.exists()
    finally:
        occupant.close()


def test_fd(backend, tmp_path):
    log = tmp_path / "output.txt"
    with serving_inherited_fd(log, "apps.echo:scope_json", "--http", backend) as (port, proc):
        # The socket already listens, so this waits in the backlog until the server serves.
        response = httpx.get(f"http://127.0.0.1:{port}/inherited", timeout=10)
        assert response.status_code == 200
        assert response.json()["path"] == "/inherited"
        assert response.json()["server"] == ["127.0.0.1", port]
        assert f"shardserve running on http://127.0.0.1:{port}" in log.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_fd_not_a_socket(serve, tmp_path):
    # fd 1000 is not open in the server process.
    line = only_line(serve("apps.echo:hello", "--fd", "1000", port=False, ready=False))
    assert "--fd" in line


def test_port_in_use_is_one_line_error(serve):
    occupant = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen(1)
        port = occupant.getsockname()[1]
        server = serve("apps.echo:hello", "--port", str(port), port=False, ready=False)
        line = only_line(server)
        assert str(port) in line
        assert "in use" in line
    finally:
        occupant.close()


def test_version():
    result = subprocess.run(
        [sys.executable, "-m", "shardserve", "--version"],
        capture_output=True,
        text=True,
        timeout=15,
        cwd=ROOT,
    )
    assert result.returncode == 0
    assert shardserve.__version__ in result.stdout
    assert result.stdout.strip() == f"shardserve, version {shardserve.__version__}"
    assert result.stderr == ""


def test_help_lists_uvicorn_flags():
    result = subprocess.run(
        [sys.executable, "-m", "shardserve", "--help"],
        capture_output=True,
        text=True,
        timeout=15,
        cwd=ROOT,
    )
    assert result.returncode == 0
    for flag in ["--host", "--port", "--uds", "--fd", "--http", "--lifespan", "--root-path"]:
        assert flag in result.stdout
    for flag in ["--forwarded-allow-ips", "--timeout-graceful-shutdown", "--ssl-keyfile"]:
        assert flag in result.stdout


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="this Python may have subinterpreters")
def test_subinterpreter_mode_on_an_older_python_is_one_line(serve):
    server = serve(
        "apps.echo:hello", "--shard-mode", "subinterpreter", "--shards", "2", ready=False
    )
    assert server.wait_exit(15) != 0
    line = only_line(server)
    assert "Python 3.13" in line and "interpreters-pep-734" in line, line
