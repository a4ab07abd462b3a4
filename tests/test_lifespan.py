"""The ASGI lifespan protocol: state, startup failure, unsupported apps, shutdown, off."""

import signal
import time

import httpx


def non_info_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip() and not line.startswith("INFO:")]


def test_startup_state_reaches_requests_as_a_copy(serve, backend):
    server = serve("apps.deploy:app", "--http", backend)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        first = client.get("/state").json()
        assert first["x"] == "from-startup"
        assert isinstance(first["pid"], int)
        assert "added" not in first
        # The first request mutated its scope["state"]; the next one sees startup's.
        second = client.get("/state").json()
        assert second == first
    # And on a fresh connection too.
    assert httpx.get(server.url + "/state", timeout=5).json() == first


def test_startup_failed_exits_3_with_message(serve):
    started = time.monotonic()
    server = serve("apps.deploy:startup_failed", ready=False)
    code = server.wait_exit(10)
    elapsed = time.monotonic() - started
    output = server.output
    assert code == 3, output
    assert elapsed < 5, output
    assert "database unreachable: APP-FAIL-MSG" in output
    assert "Traceback" not in output
    assert "shardserve running on" not in output
    problems = non_info_lines(output)
    assert len(problems) == 1, output
    assert "APP-FAIL-MSG" in problems[0]


def test_startup_exception_with_lifespan_on_exits_nonzero(serve):
    server = serve("apps.deploy:startup_raises", "--lifespan", "on", ready=False)
    code = server.wait_exit(10)
    output = server.output
    assert code != 0, output
    assert "APP-RAISE-MSG" in output
    assert "shardserve running on" not in output


def test_lifespan_auto_tolerates_unsupported_app(serve, backend):
    server = serve("apps.deploy:no_lifespan", "--http", backend, "--lifespan", "auto")
    response = httpx.get(server.url + "/", timeout=5)
    assert response.status_code == 200
    assert response.text == "no lifespan here"
    assert "lifespan' protocol appears unsupported" in server.output
    assert "Traceback" not in server.output
    assert server.stop() == 0


def test_lifespan_auto_startup_exception_still_serves(serve, backend):
    """In auto mode an exception during startup reads as 'unsupported', not fatal."""
    server = serve("apps.deploy:startup_raises", "--http", backend)
    response = httpx.get(server.url + "/", timeout=5)
    assert response.text == "served anyway"


def test_shutdown_runs_on_sigint(serve, backend):
    server = serve("apps.deploy:app", "--http", backend)
    assert "DEPLOY-STARTUP" in server.output
    assert httpx.get(server.url + "/", timeout=5).text == "ok"
    assert "DEPLOY-SHUTDOWN-MARKER" not in server.output
    server.signal(signal.SIGINT)
    assert server.wait_exit(10) == 0
    output = server.output
    assert "DEPLOY-SHUTDOWN-MARKER" in output
    assert output.index("DEPLOY-STARTUP") < output.index("DEPLOY-SHUTDOWN-MARKER")
    assert "Application shutdown complete" in output


def test_lifespan_off_never_sends_lifespan_scope(serve, backend):
    server = serve("apps.deploy:scope_recorder", "--http", backend, "--lifespan", "off")
    assert httpx.get(server.url + "/", timeout=5).json() == ["http"]
    assert httpx.get(server.url + "/", timeout=5).json() == ["http", "http"]
    assert server.stop() == 0
    assert "startup" not in server.output.lower()


def test_lifespan_on_sends_lifespan_scope_once(serve, backend):
    server = serve("apps.deploy:scope_recorder", "--http", backend, "--lifespan", "on")
    assert httpx.get(server.url + "/", timeout=5).json() == ["lifespan", "http"]
    assert httpx.get(server.url + "/", timeout=5).json() == ["lifespan", "http", "http"]
