"""Development mode: --reload rolls the shards onto edited code; --workers; colours.

Real servers, real files edited under a watcher, real clients looping on them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving import ROOT, TESTS
from shardserve.coord.reloader import SourceFilter

MODULE = "devapp"


def app_source(answer: str, broken: str = "") -> str:
    return f'''{broken}
ANSWER = b"{answer}"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": ANSWER}})
'''


def write(path: Path, text: str) -> float:
    """Write the way an editor saves (a new file renamed over the old); when it was."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
    return time.monotonic()


def dev_server(serve, tmp_path: Path, *args: str, ready: bool = True):
    return serve(
        f"{MODULE}:app",
        "--reload",
        "--reload-dir",
        str(tmp_path),
        "--app-dir",
        str(tmp_path),
        *args,
        cwd=tmp_path,
        ready=ready,
    )


class Loop:
    """Two clients asking in a loop (one keep-alive, one new connection per request),
    with a count and a deadline; every answer and failure recorded with its time."""

    def __init__(self, url: str, seconds: float = 20.0, limit: int = 20000) -> None:
        self.url = url
        self.deadline = time.monotonic() + seconds
        self.limit = limit
        self.answers: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(keep_alive,), daemon=True)
            for keep_alive in (True, False)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, keep_alive: bool) -> None:
        client = httpx.Client(timeout=5) if keep_alive else None
        try:
            for _ in range(self.limit):
                if self.stopping.is_set() or time.monotonic() > self.deadline:
                    return
                try:
                    if client is not None:
                        text = client.get(self.url).text
                    else:
                        text = httpx.get(self.url, timeout=5).text
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.failures.append(repr(exc))
                    continue
                with self.lock:
                    self.answers.append((time.monotonic(), text))
                time.sleep(0.005)
        finally:
            if client is not None:
                client.close()

    def first(self, answer: str, after: float, timeout: float = 10.0) -> float | None:
        """When ``answer`` was first seen after ``after`` (waits for it, boundedly)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                seen = [t for t, text in self.answers if text == answer and t >= after]
            if seen:
                return seen[0]
            time.sleep(0.02)
        return None

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in self.threads)


def test_an_edit_is_served_within_two_seconds_and_no_request_fails(serve, tmp_path):
    source = tmp_path / f"{MODULE}.py"
    source.write_text(app_source("one"))
    server = dev_server(serve, tmp_path, "--shards", "2")
    loop = Loop(server.url + "/")
    try:
        assert loop.first("one", 0) is not None
        for answer in ("two", "three-3"):
            saved = write(source, app_source(answer))
            seen = loop.first(answer, saved)
            assert seen is not None, server.output
            assert seen - saved <= 2.0, (seen - saved, server.output)
            server.wait_for(r"Rolling restart complete\.", 10)
        time.sleep(0.3)
    finally:
        loop.stop()
    assert not loop.failures, loop.failures[:5]
    assert server.output.count("WatchFiles detected changes in 'devapp.py'. Reloading...") == 2
    # Once the second restart is over, only the newest code answers.
    done = time.monotonic() - 0.3
    assert {text for t, text in loop.answers if t >= done} == {"three-3"}


@pytest.mark.parametrize(
    "broken, expected",
    [
        ("def oops(:\n", r"SyntaxError: .*devapp\.py, line 1\)"),
        ("import no_such_module_here\n", r"ModuleNotFoundError: .*no_such_module_here.*, line 1\)"),
    ],
    ids=["syntax-error", "import-error"],
)
def test_broken_code_leaves_the_old_code_serving_and_is_reported_once(
    serve, tmp_path, broken, expected
):
    source = tmp_path / f"{MODULE}.py"
    source.write_text(app_source("good"))
    server = dev_server(serve, tmp_path, "--shards", "2")
    started = len(re.findall(r"Started shard", server.output))
    loop = Loop(server.url + "/")
    try:
        write(source, app_source("bad", broken))
        server.wait_for("Not reloading: ", 10)
        time.sleep(2.0)  # long enough for any restart loop to show itself
        quiet = time.monotonic()
        saved = write(source, app_source("fixed"))
        assert loop.first("fixed", saved) is not None, server.output
    finally:
        loop.stop()
    output = server.output
    assert not loop.failures, loop.failures[:5]
    assert {text for t, text in loop.answers if t < quiet} <= {"good"}
    errors = [line for line in output.splitlines() if "Not reloading" in line]
    assert len(errors) == 1, output
    assert re.search(expected, errors[0]), errors[0]
    assert "Traceback" not in output
    # The broken save started no shard; the fix started one per slot.
    assert len(re.findall(r"Started shard", output)) == started + 2, output


def test_starting_on_broken_code_waits_for_a_fix(serve, tmp_path):
    source = tmp_path / f"{MODULE}.py"
    source.write_text(app_source("never", "def oops(:\n"))
    server = dev_server(serve, tmp_path, ready=False)
    server.wait_for(r"Waiting for a change to the source to start again", 15)
    assert re.search(r"SyntaxError: .*devapp\.py, line 1", server.output), server.output
    assert server.proc.poll() is None
    write(source, app_source("mended"))
    server.wait_ready(15)
    assert httpx.get(server.url + "/", timeout=5).text == "mended"
    assert server.stop() == 0


def test_stopping_while_waiting_for_a_fix_is_clean(serve, tmp_path):
    (tmp_path / f"{MODULE}.py").write_text(app_source("never", "import no_such_module_here\n"))
    server = dev_server(serve, tmp_path, ready=False)
    server.wait_for(r"Waiting for a change to the source to start again", 15)
    assert server.stop() == 0
    assert "Traceback" not in server.output
    assert server.output.count("Starting 1 shard") == 1, server.output  # no retry on the way out


def test_files_outside_the_includes_do_not_reload(serve, tmp_path):
    (tmp_path / f"{MODULE}.py").write_text(app_source("one"))
    server = dev_server(serve, tmp_path, "--reload-include", "*.toml")
    write(tmp_path / "notes.txt", "not code")
    write(tmp_path / "settings.toml", "x = 1")
    server.wait_for(r"detected changes in 'settings\.toml'", 10)
    server.wait_for(r"Rolling restart complete\.", 10)
    assert "notes.txt" not in server.output


def test_a_missing_reload_dir_is_one_line(serve, tmp_path):
    server = serve(
        "apps.echo:hello", "--reload", "--reload-dir", str(tmp_path / "nope"), ready=False
    )
    assert server.wait_exit(10) == 1
    assert server.output.strip().endswith(f"--reload-dir {tmp_path / 'nope'}: no such directory")
    assert len(server.output.strip().splitlines()) == 1, server.output


# The watch filter: uvicorn's rules for --reload-include / --reload-exclude. ----------


def test_source_filter_defaults():
    accepts = SourceFilter([], [])
    assert accepts("/src/app.py")
    assert not accepts("/src/app.pyc")
    assert not accepts("/src/.hidden.py")
    assert not accepts("/src/notes.txt")
    assert not accepts("/src/.venv/lib/site.py")
    assert not accepts("/src/__pycache__/app.py")


def test_source_filter_includes_and_excludes(tmp_path):
    (tmp_path / "generated").mkdir()
    accepts = SourceFilter(["*.html", ".env"], ["tests", str(tmp_path / "generated")])
    assert accepts("/src/templates/index.html")
    assert accepts("/src/.env")  # an include taken out of the default excludes
    assert not accepts("/src/tests/test_app.py")
    assert not accepts(str(tmp_path / "generated" / "models.py"))
    assert accepts(str(tmp_path / "app.py"))
    assert not SourceFilter([], ["*.py"])("/src/app.py")  # and an exclude out of includes


# --workers and $WEB_CONCURRENCY -----------------------------------------------------


@pytest.mark.parametrize(
    "args, env, shards",
    [
        (("--workers", "2"), {}, 2),
        ((), {"WEB_CONCURRENCY": "2"}, 2),
        (("--workers", "3"), {"WEB_CONCURRENCY": "2"}, 3),
        ((), {"WEB_CONCURRENCY": "3", "SHARDSERVE_SHARDS": "2"}, 2),
    ],
    ids=["flag", "env", "flag-beats-env", "own-env-first"],
)
def test_workers_and_web_concurrency(serve, args, env, shards):
    server = serve("apps.echo:hello", *args, env=env)
    assert f"Starting {shards} shards" in server.output
    assert len(set(re.findall(r"Started shard (\d)", server.output))) == shards
    assert httpx.get(server.url + "/", timeout=5).text == "Hello, world!"


def test_bad_web_concurrency_is_one_line_naming_it(serve):
    server = serve("apps.echo:hello", env={"WEB_CONCURRENCY": "lots"}, ready=False)
    assert server.wait_exit(10) == 2
    lines = server.output.strip().splitlines()
    assert len(lines) == 1 and "$WEB_CONCURRENCY" in lines[0] and "lots" in lines[0], lines


def test_library_run_takes_workers_and_web_concurrency(tmp_path):
    script = (
        "import shardserve, sys\n"
        "from shardserve.config import Config, shards_from_environment\n"
        "print(shards_from_environment())\n"
        "try:\n"
        "    shardserve.run('apps.echo:hello', workers=2, shards=2)\n"
        "except shardserve.config.ConfigError as exc:\n"
        "    print(exc)\n"
    )
    env = dict(os.environ, WEB_CONCURRENCY="4", PYTHONPATH=f"{ROOT}{os.pathsep}{TESTS}")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.stdout.splitlines() == ["{'shards': 4}", "pass shards or workers, not both"], out


# Colours ---------------------------------------------------------------------------------


def run_on_terminal(args: list[str], seconds: float = 20.0) -> str:
    """Serve on a pseudo-terminal, make one request, stop; everything it printed."""
    import pty

    primary, secondary = pty.openpty()
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{TESTS}", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardserve", "apps.echo:hello", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env=env,
        cwd=ROOT,
    )
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            output += chunk
            text = output.decode(errors="replace")
            match = re.search(r"running on http://127\.0\.0\.1:(\d+)", text)
            if match and "GET / HTTP/1.1" not in text:
                httpx.get(f"http://127.0.0.1:{match[1]}/", timeout=5)
                time.sleep(0.5)  # (the access log is written once per tick)
                proc.send_signal(2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        os.close(primary)
    return output.decode(errors="replace")


def test_colours_on_a_terminal_by_default():
    output = run_on_terminal([])
    assert "\x1b[32mINFO\x1b[0m:     Application startup complete." in output, output
    assert re.search(r'"\x1b\[1mGET / HTTP/1\.1\x1b\[0m" \x1b\[32m200\x1b\[0m', output), output


def test_no_use_colors_on_a_terminal():
    output = run_on_terminal(["--no-use-colors"])
    assert "INFO:     Application startup complete." in output, output
    assert '"GET / HTTP/1.1" 200' in output
    assert "\x1b[" not in output


def test_use_colors_when_piped(serve):
    server = serve("apps.echo:hello", "--use-colors")
    assert "\x1b[32mINFO\x1b[0m:" in server.output


def test_plain_when_piped_by_default(serve):
    server = serve("apps.echo:hello")
    httpx.get(server.url + "/", timeout=5)
    server.wait_for(r'"GET / HTTP/1\.1" 200', 5)
    assert "\x1b[" not in server.output
