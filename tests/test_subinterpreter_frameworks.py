"""Apps on subinterpreter shards (issue 19), with real servers, clients and signals:

- threads an app starts (daemon or not) end before their interpreter is finalized,
  through a rolling restart and a stop; one that cannot end is reported in one line
  and never aborts the process ("Fatal Python error");
- Django (sync and async views, streaming, Channels WebSocket consumers), through a
  rolling restart under load;
- each row of docs/deployment.md's compatibility table: the frameworks that work
  serve, the refused ones get the preflight's one line.

Under Python 3.11 these skip with the reason; CI runs them under Python 3.13 (.ci/run).
"""

from __future__ import annotations

import signal

import pytest

from shardserve.interpreters import unavailable_reason

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.skipif(
        REASON is not None, reason=f"{REASON}: CI runs these with .venv313 (see .ci/run)"
    ),
    pytest.mark.timeout(120),
]

SUBINTERPRETERS = ("--shard-mode", "subinterpreter")


def _clean(output: str) -> None:
    """Nothing aborted the process or escaped as a traceback."""
    assert "Fatal Python error" not in output, output
    assert "Traceback" not in output, output
    assert "daemon threads are disabled" not in output, output


def _on_every_shard(server, path: str, shards: int = 2, tries: int = 200) -> set[int]:
    """GET ``path`` on new connections until ``shards`` interpreters have answered."""
    import httpx

    seen: set[int] = set()
    for _ in range(tries):
        with httpx.Client() as client:  # a new connection: either shard may take it
            response = client.get(server.url + path, timeout=5)
        assert response.status_code == 200, response.text
        seen.add(response.json()["interpreter"])
        if len(seen) == shards:
            break
    assert len(seen) == shards, seen
    return seen


# Threads the app starts ------------------------------------------------------------


def test_app_threads_end_before_their_interpreter_through_a_roll_and_a_stop(serve):
    """Looping daemon threads, a looping non-daemon thread and one that ends at the
    lifespan's shutdown, in both shards, before and after a SIGHUP roll: the roll
    and the stop finish, exit 0; the non-daemon thread that would not end is
    reported, once per interpreter, in one line."""
    server = serve(
        "apps.threads:app", *SUBINTERPRETERS, "--shards", "2",
        "--timeout-graceful-shutdown", "1",
    )  # fmt: skip
    for path in ("/daemon", "/worker", "/polite"):
        _on_every_shard(server, path)
    server.signal(signal.SIGHUP)
    server.wait_for(r"Rolling restart complete\.", 30)
    # The old interpreters' threads are ended (the worker after its 1 s) and the
    # interpreters finalized while the new ones serve.
    stopped = r"thread 'looping-worker' \(not a daemon\) still running 1 s after"
    server.wait_for(stopped, 15)
    for path in ("/daemon", "/worker", "/polite", "/"):
        _on_every_shard(server, path)
    assert server.stop(30) == 0, server.output
    output = server.output
    _clean(output)
    reports = [line for line in server.lines if "ended with SystemExit" in line]
    assert len(reports) == 4, reports  # two interpreters before the roll, two after
    assert all("looping-worker" in line and "(daemon)" not in line for line in reports), reports
    assert "polite-worker" not in output and "looping-daemon" not in output, output
    assert "unfinalized" not in output, output
    assert output.count("Finished shard") == 4, output


def test_a_thread_that_cannot_end_is_reported_and_never_aborts_the_process(serve):
    """A daemon thread blocked in C for ever: SystemExit cannot reach it, so its
    interpreter cannot be finalized (CPython would abort).  It is left, said so in
    one line, and the process exits without finalizing it: status 1, no abort."""
    server = serve(
        "apps.threads:app", *SUBINTERPRETERS, "--shards", "1",
        "--timeout-graceful-shutdown", "0.5",
    )  # fmt: skip
    _on_every_shard(server, "/stuck", shards=1)
    _on_every_shard(server, "/daemon", shards=1)
    assert server.stop(30) == 1, server.output
    _clean(server.output)
    left = [line for line in server.lines if "left unfinalized" in line]
    assert len(left) == 1, server.output
    assert "'stuck-daemon' (daemon)" in left[0] and "looping-daemon" not in left[0], left
    assert (
        "Exiting with status 1 without finalizing 1 subinterpreter(s) that would not end: "
        "Shard 0 [subinterpreter] (its threads)." in server.output
    ), server.output


def test_a_shard_whose_loop_is_stuck_never_aborts_the_process_at_exit(serve):
    """A shard's event loop blocked in the app: it cannot be killed (a thread), the
    stop gives up on it after the grace time, and the process exits without
    finalizing its interpreter (which CPython would abort on): status 1, one line."""
    import httpx

    server = serve(
        "apps.threads:app", *SUBINTERPRETERS, "--shards", "1",
        "--timeout-graceful-shutdown", "0.5",
    )  # fmt: skip
    with pytest.raises(httpx.TimeoutException):
        httpx.get(server.url + "/block", timeout=1)
    assert server.stop(40) == 1, server.output
    _clean(server.output)
    assert "is stuck and cannot be killed" in server.output, server.output
    assert (
        "without finalizing 1 subinterpreter(s) that would not end: "
        "Shard 0 [subinterpreter] (its event loop)." in server.output
    ), server.output


# Django -------------------------------------------------------------------------------

DJANGO = "apps.django_site:app"


def test_django_views_and_channels_consumers_on_interpreter_shards(serve):
    """Sync views (asgiref's thread executor, and its daemon joining thread per
    request), async views, a streaming response and Channels consumers, on two
    interpreter shards; a clean stop with nothing in the log but requests."""
    pytest.importorskip("django")
    pytest.importorskip("channels")
    import httpx
    from websockets.sync.client import connect

    server = serve(DJANGO, *SUBINTERPRETERS, "--shards", "2")
    for interpreter in _on_every_shard(server, "/sync"):
        assert interpreter > 0
    with httpx.Client() as client:
        for _ in range(20):
            sync = client.get(server.url + "/sync", timeout=5).json()
            assert sync["view"] == "sync" and sync["thread"].startswith("ThreadPoolExecutor")
            answer = client.get(server.url + "/async", timeout=5).json()
            assert answer["view"] == "async" and answer["interpreter"] > 0
            assert not answer["thread"].startswith("ThreadPoolExecutor")
        with client.stream("GET", server.url + "/stream?n=50", timeout=5) as response:
            assert response.status_code == 200
            assert response.headers.get("content-length") is None
            body = b"".join(response.iter_bytes())
        assert body == b"".join(f"part {i}\n".encode() for i in range(50))
    url = server.url.replace("http://", "ws://")
    with connect(url + "/ws", open_timeout=5, close_timeout=5) as websocket:
        for text in ("hello", "x" * 70000):
            websocket.send(text)
            interpreter, _, echoed = websocket.recv(timeout=5).partition(":")
            assert echoed == text and int(interpreter) > 0
    with connect(url + "/ws-sync", open_timeout=5, close_timeout=5) as websocket:
        websocket.send("hi")
        interpreter, thread, echoed = websocket.recv(timeout=5).split(":", 2)
        assert echoed == "hi" and int(interpreter) > 0
        assert thread.startswith("ThreadPoolExecutor"), thread
    assert server.stop(30) == 0, server.output
    _clean(server.output)
    assert server.output.count("Finished shard") == 2


def test_django_rolling_restart_under_load_fails_no_request(serve):
    """SIGHUP while two clients send sync and async requests, a new connection each:
    no request fails, the new interpreters answer, and the stop is clean."""
    pytest.importorskip("django")
    pytest.importorskip("channels")
    from test_subinterpreters import NewConnectionLoad, roll_under_load

    server = serve(DJANGO, *SUBINTERPRETERS, "--shards", "2")
    load = NewConnectionLoad(server, "interpreter", paths=("/sync", "/async"), limit=2000)
    roll_under_load(server, load, 30)
    assert server.stop(30) == 0, server.output
    _clean(server.output)


# The compatibility table (docs/deployment.md) -------------------------------------------

# (row, package, app, path, what it answers) for frameworks that work, and
# (row, package, app, the module that refuses) for those the preflight refuses.
WORKS = [
    ("raw ASGI", None, "examples.hello:app", "/", "Hello, world!"),
    ("Starlette", "starlette", "apps.subinterp:app", "/", '"interpreter"'),
    ("Quart", "quart", "apps.compat_quart:app", "/", "hello from quart"),
    ("Django", "django", "apps.django_site:app", "/async", '"view": "async"'),
]
REFUSED = [
    ("FastAPI", "fastapi", "apps.compat_fastapi:app", "pydantic_core._pydantic_core"),
    ("Litestar", "litestar", "apps.compat_litestar:app", "msgspec._core"),
]


@pytest.mark.parametrize(
    ("row", "package", "app", "path", "answer"), WORKS, ids=[w[0] for w in WORKS]
)
def test_compatibility_table_frameworks_that_work(serve, row, package, app, path, answer):
    import httpx

    if package is not None:
        pytest.importorskip(package)
    server = serve(app, *SUBINTERPRETERS, "--shards", "2")
    response = httpx.get(server.url + path, timeout=5)
    assert response.status_code == 200 and answer in response.text, (row, response.text)
    assert server.stop(30) == 0, server.output
    _clean(server.output)


@pytest.mark.parametrize(("row", "package", "app", "module"), REFUSED, ids=[r[0] for r in REFUSED])
def test_compatibility_table_frameworks_refused_with_one_line(serve, row, package, app, module):
    pytest.importorskip(package)
    server = serve(app, *SUBINTERPRETERS, "--shards", "2", ready=False)
    assert server.wait_exit(60) != 0
    lines = [line for line in server.lines if line.strip()]
    assert lines == [
        f"shardserve: error: --shard-mode subinterpreter: the app {app!r} cannot be "
        f"imported in a subinterpreter (module {module} refuses to load there); "
        "use --shard-mode process"
    ], (row, lines)


def test_quart_websockets_on_interpreter_shards(serve):
    pytest.importorskip("quart")
    from websockets.sync.client import connect

    server = serve("apps.compat_quart:app", *SUBINTERPRETERS, "--shards", "2")
    with connect(server.url.replace("http://", "ws://") + "/ws", open_timeout=5) as websocket:
        for text in ("hello", "y" * 70000):
            websocket.send(text)
            assert websocket.recv(timeout=5) == f"quart:{text}"
    assert server.stop(30) == 0, server.output
    _clean(server.output)
