"""Process shards under supervision: killed, stuck, crash-looping, rolled, resized, stopped.

Every test runs a real coordinator with real shard processes (``--shards 2``) and
talks to it over loopback with real clients.  ``apps.lifecycle:app`` answers ``/``
with the answering shard's pid, which is how a test tells shards apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving import (
    ROOT,
    TESTS,
    connect,
    exchange,
    is_closed,
    parse_responses,
    read_until_close,
)

APP = "apps.lifecycle:app"
STARTED = re.compile(r"Started shard (\d+) \[(\d+)\]")
TEMPLATE = "shardserve.coord.template"


# Helpers ----------------------------------------------------------------------------------


class RequestFailed(AssertionError):
    pass


def fetch(server, path: str = "/", timeout: float = 5.0) -> dict:
    """One GET on a new connection; the JSON body of its 200 response, or RequestFailed."""
    raw = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    data = exchange(server, raw, timeout)
    try:
        responses = parse_responses(data)
        (response,) = responses
        assert response.status == 200
        return json.loads(response.body)
    except Exception as exc:  # noqa: BLE001 - any of these is a failed request
        raise RequestFailed(f"GET {path}: {type(exc).__name__}: {data[:300]!r}") from None


def started(server) -> list[tuple[int, int]]:
    """(index, pid) of every "Started shard I [PID]" line so far, in order."""
    return [(int(m[1]), int(m[2])) for m in STARTED.finditer(server.output)]


def started_pids(server) -> set[int]:
    return {pid for _, pid in started(server)}


def initial_shards(server, count: int = 2) -> dict[int, int]:
    """index -> pid of the shards started with the server."""
    shards = dict(started(server)[:count])
    assert sorted(shards) == list(range(count)), server.output
    return shards


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return set()
    return {int(word) for word in text.split()}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def process_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, T, Z...), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def wait_until(condition, timeout: float, what: str, interval: float = 0.02):
    """Poll ``condition()`` until it returns something truthy (returned) or time runs out."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_dead(pid: int, timeout: float = 5.0) -> None:
    """Until ``pid`` has exited (a zombie or reaped)."""
    wait_until(lambda: process_state(pid) in (None, "Z"), timeout, f"pid {pid} to die")


def wait_lines(server, pattern: str, count: int, timeout: float) -> list[re.Match]:
    """Until ``count`` output lines match ``pattern``; their matches."""
    regex = re.compile(pattern)

    def enough():
        matches = [m for line in server.output.splitlines() if (m := regex.search(line))]
        if len(matches) >= count:
            return matches
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited waiting for {pattern!r}:\n{server.output}")
        return None

    return wait_until(enough, timeout, f"{count} lines matching {pattern!r}", interval=0.05)


def pids_answering(server, count: int, until=None, timeout: float = 10.0) -> list[int]:
    """Pids answering at least ``count`` requests on new connections (more, while
    ``until(pids)`` is false); every request must succeed."""
    pids: list[int] = []
    deadline = time.monotonic() + timeout
    for _ in range(count + 500):
        pids.append(fetch(server)["pid"])
        if len(pids) >= count and (until is None or until(set(pids))):
            return pids
        if time.monotonic() >= deadline:
            break
    raise AssertionError(f"after {len(pids)} requests, pids seen: {sorted(set(pids))}")


def coordinator_alive(server) -> bool:
    return server.proc.poll() is None and process_state(server.pid) not in (None, "Z")


@dataclasses.dataclass
class Result:
    started: float
    finished: float
    pid: int | None
    error: str | None
    kind: str = "new"


class Paced:
    """One request on a new connection every ``interval`` s, each in its own thread (so a
    request waiting in a listener's queue holds up no other), until stopped, ``duration``
    s have passed or ``cap`` requests have started."""

    def __init__(self, server, interval=0.04, duration=15.0, cap=400, timeout=8.0) -> None:
        self.server = server
        self.interval = interval
        self.timeout = timeout
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._deadline = time.monotonic() + duration
        self._cap = cap
        self._driver = threading.Thread(target=self._drive, daemon=True)
        self._driver.start()

    def _drive(self) -> None:
        while (
            not self._stop.is_set()
            and len(self._threads) < self._cap
            and time.monotonic() < self._deadline
        ):
            thread = threading.Thread(target=self._one, daemon=True)
            thread.start()
            self._threads.append(thread)
            self._stop.wait(self.interval)

    def _one(self) -> None:
        began = time.monotonic()
        pid = error = None
        try:
            pid = fetch(self.server, timeout=self.timeout)["pid"]
        except Exception as exc:  # noqa: BLE001 - recorded, asserted on by the test
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.results.append(Result(began, time.monotonic(), pid, error))

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)

    def wait_for_pid(self, pid: int, timeout: float) -> Result:
        def answered():
            return next((r for r in self.snapshot() if r.pid == pid), None)

        return wait_until(answered, timeout, f"a request answered by pid {pid}")

    def stop(self) -> list[Result]:
        self._stop.set()
        self._driver.join(5)
        deadline = time.monotonic() + self.timeout + 2
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "requests still running"
        return self.snapshot()


def failures(results: list[Result]) -> list[Result]:
    return [r for r in results if r.error is not None]


def clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_to_exit(app: str, *args: str, env: dict[str, str], timeout: float):
    """Run ``shardserve APP ARGS`` expected to exit on its own; (code, stdout, stderr,
    seconds).  Its whole process group is killed if it outlives ``timeout``."""
    argv = [sys.executable, "-m", "shardserve", app, "--port", "0", *args]
    began = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        seconds = time.monotonic() - began
        left = group_members(proc.pid)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=5)
        raise AssertionError(f"still running after {timeout} s:\n{out}\n{err}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind
    assert not left, f"processes left running: {[cmdline(pid) for pid in left]}\n{err}"
    return proc.returncode, out, err, seconds


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def problem_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("INFO:")]


# 1. Distinct shards -----------------------------------------------------------------------


def test_two_shards_are_two_processes_under_the_coordinator(serve):
    server = serve(APP, "--shards", "2")
    shards = initial_shards(server)
    pids = pids_answering(server, 40, until=lambda seen: len(seen) >= 2)
    assert set(pids) == set(shards.values()), server.output
    assert server.pid not in pids
    # Both are the coordinator's children (re-parented from the template), plus the
    # template itself.
    kids = children(server.pid)
    assert set(shards.values()) <= kids
    others = kids - set(shards.values())
    assert len(others) == 1 and TEMPLATE in cmdline(others.pop()), (kids, shards)


# 2. kill -9 -------------------------------------------------------------------------------


def test_killed_shard_is_replaced_while_the_other_keeps_serving(serve):
    # The successor takes 1 s to start: long enough to see the other shard serve meanwhile.
    server = serve(APP, "--shards", "2", env={"LIFECYCLE_STARTUP_DELAY": "1"})
    shards = initial_shards(server)
    victim, survivor = shards[0], shards[1]
    load = Paced(server, interval=0.03)
    try:
        load.wait_for_pid(victim, 5)
        load.wait_for_pid(survivor, 5)
        os.kill(victim, signal.SIGKILL)
        wait_dead(victim)
        dead_at = time.monotonic()
        server.wait_for(
            rf"shard 0 \[{victim}\] exited unexpectedly \(killed by SIGKILL\); restarting it\.",
            5,
        )
        match = server.wait_for(rf"Started shard 0 \[(?!{victim}\])(\d+)\]", 5)
        successor = int(match.group(1))
        first_by_successor = load.wait_for_pid(successor, 8)
        time.sleep(0.3)
    finally:
        results = load.stop()
    after = [r for r in results if r.started >= dead_at]
    assert not failures(after), failures(after)[:5]
    assert len(after) >= 5
    # The coordinator kept serving through the restart: the other shard answered
    # requests started after the death and finished before the successor's first answer.
    meanwhile = [
        r for r in after if r.pid == survivor and r.finished <= first_by_successor.finished
    ]
    assert meanwhile, [dataclasses.astuple(r) for r in after[:10]]
    assert {r.pid for r in after} <= {survivor, successor}
    assert coordinator_alive(server)


# 3. Queued connections survive their shard ------------------------------------------------


def test_connections_queued_on_a_dead_shards_listener_are_served_by_its_successor(serve):
    server = serve(APP, "--shards", "2")
    shards = initial_shards(server)
    victim, survivor = shards[0], shards[1]
    pids_answering(server, 10, until=lambda seen: len(seen) == 2)
    socks = []
    try:
        os.kill(victim, signal.SIGSTOP)
        wait_until(lambda: process_state(victim) == "T", 5, "the shard to stop")
        for _ in range(20):
            sock = connect(server, timeout=8)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            socks.append(sock)
        time.sleep(0.3)  # the live shard answers its share; the stopped one cannot
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 8
        answers = []
        for sock in socks:
            data = read_until_close(sock, timeout=max(0.1, deadline - time.monotonic()))
            responses = parse_responses(data)
            assert [r.status for r in responses] == [200], data[:300]
            answers.append(json.loads(responses[0].body)["pid"])
    finally:
        for sock in socks:
            sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    successors = started_pids(server) - {victim, survivor}
    assert len(successors) == 1, server.output
    assert victim not in answers
    # Some connections had been queued on the stopped shard's listener (each of the 20
    # lands on either listener, so this fails by chance with probability 2**-20).
    assert successors & set(answers), answers
    assert set(answers) <= {survivor} | successors
    assert coordinator_alive(server)


# 4. Rolling restart -----------------------------------------------------------------------


class Load:
    """Threads making requests back to back until stopped (or ``duration`` or ``cap``):
    ``new`` threads open a new connection per request, ``keepalive`` threads reuse one
    httpx.Client each."""

    def __init__(self, server, new=2, keepalive=2, duration=15.0, cap=20000) -> None:
        self.server = server
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + duration
        self._cap = cap
        self._threads = [
            threading.Thread(target=self._new_connections, daemon=True) for _ in range(new)
        ] + [threading.Thread(target=self._keep_alive, daemon=True) for _ in range(keepalive)]
        for thread in self._threads:
            thread.start()

    def _running(self, done: int) -> bool:
        return not self._stop.is_set() and done < self._cap and time.monotonic() < self._deadline

    def _record(self, result: Result) -> None:
        with self._lock:
            self.results.append(result)

    def _new_connections(self) -> None:
        done = 0
        while self._running(done):
            done += 1
            began = time.monotonic()
            try:
                pid = fetch(self.server, timeout=5)["pid"]
                self._record(Result(began, time.monotonic(), pid, None, "new"))
            except Exception as exc:  # noqa: BLE001 - recorded, asserted on by the test
                self._record(Result(began, time.monotonic(), None, repr(exc), "new"))

    def _keep_alive(self) -> None:
        done = 0
        with httpx.Client(base_url=self.server.url, timeout=5) as client:
            while self._running(done):
                done += 1
                began = time.monotonic()
                try:
                    response = client.get("/")
                    if response.status_code != 200:
                        raise RequestFailed(f"{response.status_code} {response.text[:100]}")
                    pid = response.json()["pid"]
                    self._record(Result(began, time.monotonic(), pid, None, "keepalive"))
                except Exception as exc:  # noqa: BLE001 - recorded, asserted on by the test
                    self._record(Result(began, time.monotonic(), None, repr(exc), "keepalive"))

    def stop(self) -> list[Result]:
        self._stop.set()
        for thread in self._threads:
            thread.join(8)
        assert not any(t.is_alive() for t in self._threads), "load threads still running"
        with self._lock:
            return list(self.results)


def test_rolling_restarts_under_load_fail_no_request(serve):
    server = serve(APP, "--shards", "2")
    first = set(initial_shards(server).values())
    load = Load(server, new=2, keepalive=2, duration=14)
    began = time.monotonic()
    try:
        time.sleep(1.0)
        hup1 = time.monotonic()
        server.signal(signal.SIGHUP)
        wait_lines(server, r"Rolling restart complete\.", 1, 8)
        done1 = time.monotonic()
        second = started_pids(server) - first
        time.sleep(max(0.0, began + 3.5 - time.monotonic()))
        hup2 = time.monotonic()
        server.signal(signal.SIGHUP)
        wait_lines(server, r"Rolling restart complete\.", 2, 8)
        done2 = time.monotonic()
        third = started_pids(server) - first - second
        time.sleep(max(0.6, began + 6.0 - time.monotonic()))
    finally:
        results = load.stop()
    ended = time.monotonic()
    output = server.output
    assert output.count("Rolling restart of 2 shards.") == 2, output
    assert len(second) == 2 and len(third) == 2, output

    assert not failures(results), failures(results)[:5]
    # Requests ran throughout: every second had answers, and both kinds of client were
    # answered during each rolling restart.
    for start in range(int(ended - began)):
        window = [r for r in results if began + start <= r.finished < began + start + 1]
        assert window, f"no request finished in second {start}"
    for lo, hi in ((hup1, done1), (hup2, done2)):
        for kind in ("new", "keepalive"):
            assert [r for r in results if r.kind == kind and lo <= r.finished <= hi], (kind, lo)
    # After the second restart only its shards answer: all new.
    late = {r.pid for r in results if r.started >= done2}
    assert late, "no request after the restarts"
    assert late <= third, (late, first, second, third)
    assert not late & (first | second)
    assert {r.pid for r in results if r.started < hup1} <= first


def test_rolling_restart_reimports_the_app(serve, tmp_path):
    value_file = tmp_path / "value.txt"
    value_file.write_text("before-restart")
    server = serve(APP, "--shards", "2", env={"LIFECYCLE_VALUE_FILE": str(value_file)})
    first = set(initial_shards(server).values())
    assert fetch(server)["value"] == "before-restart"
    value_file.write_text("after-restart")
    # Read at import time only: the running shards still serve the old value.
    assert {fetch(server)["value"] for _ in range(10)} == {"before-restart"}
    server.signal(signal.SIGHUP)
    server.wait_for(r"Rolling restart of 2 shards\.", 5)
    server.wait_for(r"Rolling restart complete\.", 10)
    new = started_pids(server) - first
    assert len(new) == 2, server.output
    answers = []
    for _ in range(200):
        answers.append(fetch(server))
        if len(answers) >= 10 and {a["pid"] for a in answers} == new:
            break
    assert {a["pid"] for a in answers} == new
    assert {a["value"] for a in answers} == {"after-restart"}


def test_rolling_restart_answers_an_idle_keep_alive_connection_then_closes_it(serve):
    """A replaced shard leaves its idle keep-alive connections open: the next request
    on one is answered, with ``connection: close``, then the connection closes."""
    server = serve(APP, "--shards", "2", "--timeout-keep-alive", "20")
    first = set(initial_shards(server).values())
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server, timeout=5) as sock:
        sock.sendall(request)
        (response,) = parse_responses(_read_response(sock))
        assert response.status == 200 and response.header("connection") != "close"
        pid = json.loads(response.body)["pid"]
        server.signal(signal.SIGHUP)
        # Its shard is draining: the successor is up, and only this connection is open.
        server.wait_for(r"Waiting for in-flight requests to finish\.", 10)
        assert not is_closed(sock, timeout=0.5), "idle connection closed under the client"
        assert process_state(pid) not in (None, "Z")
        sock.sendall(request)
        (response,) = parse_responses(_read_response(sock))
        assert response.status == 200
        assert json.loads(response.body)["pid"] == pid
        assert response.header("connection") == "close"
        assert is_closed(sock, timeout=5)
    server.wait_for(r"Rolling restart complete\.", 10)
    wait_dead(pid)
    assert len(started_pids(server) - first) == 2


def _read_response(sock, timeout: float = 5.0) -> bytes:
    """One response with a Content-Length body, read off a keep-alive connection."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if match and len(body) >= int(match.group(1)):
                return data
        if time.monotonic() >= deadline:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    raise AssertionError(f"incomplete response: {data[:300]!r}")


def shard_children(server) -> set[int]:
    """The coordinator's child processes that are shards (not the template)."""
    return children(server.pid) & started_pids(server)


def wait_shard_count(server, count: int, timeout: float = 5.0) -> set[int]:
    """Until the coordinator has exactly ``count`` shard processes; their pids."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 2):
        pids = shard_children(server)
        if len(pids) == count:
            return pids
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    raise AssertionError(
        f"{len(pids)} shard processes, not {count}, {timeout} s on: {sorted(pids)}\n{server.output}"
    )


def stop_and_check_no_shard_outlives(server) -> None:
    assert server.stop() == 0, server.output
    left = [pid for pid in started_pids(server) if process_state(pid) not in (None, "Z")]
    assert not left, f"shards still running after the coordinator exited: {left}"


@contextlib.contextmanager
def killing_stray_shards(server):
    """Whatever happens, stop the server and then kill any shard it left running."""
    try:
        yield
    finally:
        server.stop()
        for pid in started_pids(server):
            if process_state(pid) not in (None, "Z"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_shard_dying_while_its_rolling_successor_starts_leaves_one_process(serve):
    """The old shard dies while its rolling successor is starting: afterwards exactly
    one process serves that slot (the successor, or a restart, never both)."""
    server = serve(APP, "--shards", "2", env={"LIFECYCLE_STARTUP_DELAY": "1"})
    with killing_stray_shards(server):
        shards = initial_shards(server)
        server.signal(signal.SIGHUP)
        server.wait_for(r"Rolling restart of 2 shards\.", 5)
        server.wait_for(rf"Started shard 0 \[(?!{shards[0]}\])\d+\]", 5)
        os.kill(shards[0], signal.SIGKILL)  # the successor is still in its 1 s startup
        server.wait_for(r"Rolling restart (complete\.|stopped at)", 12)
        counted = wait_shard_count(server, 2)
        pids = pids_answering(server, 40)
        assert set(pids) <= counted and len(set(pids)) == 2, (pids, counted)
        stop_and_check_no_shard_outlives(server)


def test_removing_a_shard_while_its_rolling_successor_starts_leaves_no_orphan(serve):
    """SIGTTOU removes the shard whose rolling successor is starting: the successor must
    not stay behind as a process nobody supervises."""
    server = serve(APP, "--shards", "2", env={"LIFECYCLE_STARTUP_DELAY": "1"})
    with killing_stray_shards(server):
        shards = initial_shards(server)
        server.signal(signal.SIGHUP)
        server.wait_for(r"Rolling restart of 2 shards\.", 5)
        server.wait_for(rf"Started shard 1 \[(?!{shards[1]}\])\d+\]", 8)
        server.signal(signal.SIGTTOU)  # the successor of shard 1 is in its 1 s startup
        server.wait_for(r"Removing shard 1; 1 shards? now\.", 5)
        server.wait_for(r"Rolling restart (complete\.|stopped at)", 8)
        counted = wait_shard_count(server, 1)
        pids = pids_answering(server, 40)
        assert set(pids) == counted, (pids, counted)
        stop_and_check_no_shard_outlives(server)


# 5. SIGTERM -------------------------------------------------------------------------------


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(serve):
    server = serve(APP, "--shards", "2")
    shard_pids = set(initial_shards(server).values())
    template = children(server.pid) - shard_pids
    assert len(template) == 1
    outcome: dict = {}

    def slow() -> None:
        began = time.monotonic()
        try:
            outcome["answer"] = fetch(server, "/slow?seconds=1.5", timeout=10)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - began

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    server.wait_for(r"LIFECYCLE slow request started", 5)
    server.signal(signal.SIGTERM)
    code = server.wait_exit(12)
    thread.join(5)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["answer"]["slept"] == 1.5
    assert outcome["answer"]["pid"] in shard_pids
    assert outcome["seconds"] >= 1.4
    assert code == 0, server.output
    for pid in shard_pids | template:
        assert process_state(pid) is None, (pid, cmdline(pid))


# 6. Crash loop ----------------------------------------------------------------------------


def test_crash_loop_backs_off_then_stops_the_server(serve, tmp_path):
    marker = tmp_path / "crash-now"
    server = serve(
        "apps.lifecycle:crashy", "--shards", "2", env={"LIFECYCLE_CRASH_MARKER": str(marker)}
    )
    shards = initial_shards(server)
    wait_lines(server, r"LIFECYCLE no crash marker; staying up", 2, 15)  # a deadline, not a speed
    marker.write_text("x")
    killed_at = time.monotonic()
    os.kill(shards[0], signal.SIGKILL)
    try:
        code = server.wait_exit(25)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait_exit(5)
        raise AssertionError(
            f"still running 25 s after the crash loop began:\n{server.output}"
        ) from None
    elapsed = time.monotonic() - killed_at
    output = server.output
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith("shardserve: error:")]
    assert errors == ["shardserve: error: shard 0 failed 6 times in a row; last: exit code 7"], (
        output
    )
    delays = [float(d) for d in re.findall(r"Restarting shard 0 in ([\d.]+) s\.", output)]
    assert delays == [0.5, 1.0, 2.0, 4.0], output
    assert elapsed >= sum(delays), (elapsed, output)
    assert output.count("exited unexpectedly (exit code 7)") == 5, output
    # Only shard 0 looped: shard 1 was never restarted.
    assert [i for i, _ in started(server)].count(1) == 1, output
    for pid in started_pids(server):
        assert process_state(pid) is None, pid
    # The healthy shard is stopped without blaming its app: no traceback.
    assert "Traceback" not in output, output


# 7. Start-up failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "env", "expected"),
    [
        ("apps.lifecycle_no_such_module:app", {}, '"apps.lifecycle_no_such_module"'),
        (APP, {"LIFECYCLE_IMPORT_FAIL": "LIFECYCLE-IMPORT-BOOM"}, "LIFECYCLE-IMPORT-BOOM"),
    ],
    ids=["missing-module", "module-raises"],
)
def test_unimportable_app_stops_every_shard_with_one_line(app, env, expected):
    code, out, err, seconds = run_to_exit(app, "--shards", "2", env=clean_env(**env), timeout=10)
    assert code != 0, (out, err)
    assert seconds < 6, (seconds, err)
    problems = problem_lines(err)
    assert len(problems) == 1, err
    assert problems[0].startswith("shardserve: error: shard "), err
    assert "failed to start" in problems[0] and expected in problems[0], err
    assert "shardserve running on" not in out + err
    assert "Traceback" not in out + err


def test_lifespan_startup_failure_exits_3_with_the_apps_message():
    code, out, err, seconds = run_to_exit(
        "apps.lifecycle:startup_failed", "--shards", "2", env=clean_env(), timeout=10
    )
    assert code == 3, (out, err)
    assert seconds < 6, (seconds, err)
    problems = problem_lines(err)
    assert len(problems) == 1, err
    assert problems[0].startswith("shardserve: error: shard "), err
    assert "LIFECYCLE-STARTUP-FAIL: cache unavailable" in problems[0], err
    assert "shardserve running on" not in out + err
    assert "Traceback" not in out + err


# 8. Heartbeat watchdog --------------------------------------------------------------------


def test_a_shard_with_a_stuck_event_loop_is_killed_and_replaced(serve):
    server = serve(APP, "--shards", "2", "--timeout-shard-heartbeat", "2")
    shards = initial_shards(server)
    blocker = connect(server, timeout=15)
    load = None
    try:
        blocker.sendall(b"GET /block?seconds=8 HTTP/1.1\r\nHost: x\r\n\r\n")
        match = server.wait_for(r"LIFECYCLE blocking the event loop for 8\.0 s \[(\d+)\]", 5)
        blocked_at = time.monotonic()
        stuck = int(match.group(1))
        index = next(i for i, pid in shards.items() if pid == stuck)
        other = shards[1 - index]
        load = Paced(server, interval=0.05, timeout=10)
        server.wait_for(
            rf"shard {index} \[{stuck}\] sent no heartbeat for \d+ s \(its event loop is "
            rf"stuck\); killing it\.",
            5,
        )
        killed_at = time.monotonic()
        server.wait_for(rf"shard {index} \[{stuck}\] exited unexpectedly \(", 3)
        wait_dead(stuck)
        match = server.wait_for(rf"Started shard {index} \[(?!{stuck}\])(\d+)\]", 5)
        successor = int(match.group(1))
        load.wait_for_pid(successor, 8)
    finally:
        results = load.stop() if load is not None else []
        blocker.close()
    assert killed_at - blocked_at <= 5.0
    assert not failures(results), failures(results)[:5]
    # The other shard answered while the stuck one was still stuck.
    meanwhile = [r for r in results if r.pid == other and r.finished <= killed_at]
    assert meanwhile, [dataclasses.astuple(r) for r in results[:10]]
    assert {r.pid for r in results} <= {other, successor}
    assert coordinator_alive(server)


# 9. --limit-max-requests ------------------------------------------------------------------


def test_limit_max_requests_replaces_shards_without_failing_requests(serve):
    server = serve(APP, "--shards", "2", "--limit-max-requests", "5")
    pids = []
    deadline = time.monotonic() + 12
    for _ in range(400):
        pids.append(fetch(server)["pid"])
        if len(pids) >= 40 and len(set(pids)) > 2:
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.03)
    output = server.output
    assert len(pids) >= 40
    assert len(set(pids)) > 2, (sorted(set(pids)), output)
    assert re.search(r"Replacing shard \d \[\d+\]: it served 5 requests\.", output), output
    assert "exited unexpectedly" not in output, output
    assert server.pid not in pids


# 10. SIGTTIN / SIGTTOU --------------------------------------------------------------------


def test_adding_and_removing_a_shard_resets_no_connection(serve):
    server = serve(APP, "--shards", "2")
    shards = initial_shards(server)
    load = Paced(server, interval=0.03, duration=20, cap=600)
    try:
        load.wait_for_pid(shards[0], 5)
        load.wait_for_pid(shards[1], 5)
        server.signal(signal.SIGTTIN)
        server.wait_for(r"Added shard 2; 3 shards now\.", 8)
        added = int(server.wait_for(r"Started shard 2 \[(\d+)\]", 1).group(1))
        load.wait_for_pid(added, 8)
        server.signal(signal.SIGTTOU)
        server.wait_for(r"Removing shard 2; 2 shards now\.", 5)
        server.wait_for(rf"Finished shard 2 \[{added}\]", 8)
        wait_dead(added)
        removed_at = time.monotonic()

        def both_after_removal():
            late = [r for r in load.snapshot() if r.started >= removed_at]
            return len(late) >= 30 and {r.pid for r in late} == set(shards.values())

        wait_until(both_after_removal, 10, "30 answers after the removal, from both shards")
    finally:
        results = load.stop()
    assert not failures(results), failures(results)[:5]
    assert {r.pid for r in results} == {shards[0], shards[1], added}
    late = {r.pid for r in results if r.started >= removed_at}
    assert late == {shards[0], shards[1]}
    assert coordinator_alive(server)


def test_connections_queued_on_a_removed_shards_listener_are_not_reset(serve):
    """SIGTTOU hands the removed shard's listener to another shard at once: connections
    queued on it are served even if the removed shard never accepts again (here it is
    stopped, then dies while draining)."""
    server = serve(APP, "--shards", "2")
    shards = initial_shards(server)
    server.signal(signal.SIGTTIN)
    server.wait_for(r"Added shard 2; 3 shards now\.", 8)
    added = int(server.wait_for(r"Started shard 2 \[(\d+)\]", 1).group(1))
    pids_answering(server, 10, until=lambda seen: added in seen)
    socks = []
    try:
        os.kill(added, signal.SIGSTOP)
        wait_until(lambda: process_state(added) == "T", 5, "the added shard to stop")
        for _ in range(40):
            sock = connect(server, timeout=8)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            socks.append(sock)
        server.signal(signal.SIGTTOU)
        server.wait_for(r"Removing shard 2; 2 shards now\.", 5)
        os.kill(added, signal.SIGKILL)
        deadline = time.monotonic() + 8
        answers = []
        for sock in socks:
            data = read_until_close(sock, timeout=max(0.1, deadline - time.monotonic()))
            responses = parse_responses(data)
            assert [r.status for r in responses] == [200], data[:300]
            answers.append(json.loads(responses[0].body)["pid"])
    finally:
        for sock in socks:
            sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(added, signal.SIGKILL)
    # Each of the 40 landed on one of 3 listeners, so about a third had been queued on
    # the removed shard's (none, by chance, with probability (2/3)**40, about 1e-7).
    assert set(answers) <= set(shards.values()), answers
    assert [i for i, _ in started(server)].count(2) == 1, server.output
    assert set(pids_answering(server, 20, until=lambda seen: len(seen) == 2)) == set(
        shards.values()
    )
    assert coordinator_alive(server)


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` (one per SO_REUSEPORT member)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _listeners_held(pid: int, inodes: set[str]) -> int:
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held.add(target[8:-1])
    return len(held)


def test_remove_add_remove_add_keeps_one_listener_per_shard(serve):
    """SIGTTOU, SIGTTIN, SIGTTOU, SIGTTIN: the added shard takes back the removed one's
    listener (no new socket joins the group), and the shard that had adopted it is
    replaced by one that serves its own alone: 2 listeners, one per shard."""
    server = serve(APP, "--shards", "2")
    shards = initial_shards(server)
    assert len(_listening_inodes(server.port)) == 2
    for cycle in (1, 2):
        server.signal(signal.SIGTTOU)
        server.wait_for(r"Removing shard 1; 1 shards now\.", 5)
        server.wait_for(rf"Finished shard 1 \[{shards[1]}\]", 8)
        server.signal(signal.SIGTTIN)
        server.wait_for(r"Added shard 1; 2 shards now\.", 8)
        # The heir (shard 0) is replaced by a successor without the adopted listener.
        heir = shards[0]

        def heir_replaced(heir=heir) -> bool:
            return [pid for i, pid in started(server) if i == 0][-1] != heir

        wait_until(heir_replaced, 10, f"shard 0's successor (cycle {cycle})")
        server.wait_for(rf"Finished shard 0 \[{heir}\]", 8)
        shards = {index: pid for index, pid in started(server)}  # (the latest of each)
    inodes = _listening_inodes(server.port)
    assert len(inodes) == 2, "the SO_REUSEPORT group grew: a new listener per cycle"
    assert [_listeners_held(shards[i], inodes) for i in (0, 1)] == [1, 1]
    assert set(pids_answering(server, 20, until=lambda seen: len(seen) == 2)) == set(
        shards.values()
    )
    assert coordinator_alive(server)


# 11. Malformed control messages -----------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["garbage", "wrong_type", "huge", "other_index", "stats_new_method", "stats_bad_buckets"],
)
def test_malformed_control_message_replaces_only_its_sender(serve, kind):
    server = serve(APP, "--shards", "2")
    shards = initial_shards(server)
    by_pid = {pid: index for index, pid in shards.items()}
    try:
        answer = fetch(server, f"/control?kind={kind}", timeout=5)
    except (RequestFailed, OSError):
        answer = None  # the shard may be killed before its answer goes out
    if answer is not None:
        assert answer["kind"] == kind and answer["pid"] in by_pid, answer
    match = server.wait_for(
        r"shard (\d+) \[(\d+)\] sent a malformed control message \((.+)\); replacing it\.", 5
    )
    index, sender = int(match.group(1)), int(match.group(2))
    assert by_pid.get(sender) == index, (match.group(0), shards)
    other = shards[1 - index]
    server.wait_for(rf"shard {index} \[{sender}\] exited unexpectedly \(", 5)
    wait_dead(sender)
    successor = int(server.wait_for(rf"Started shard {index} \[(?!{sender}\])(\d+)\]", 5)[1])
    pids = pids_answering(server, 10, until=lambda seen: seen == {other, successor})
    assert set(pids) == {other, successor}
    assert coordinator_alive(server)
    output = server.output
    assert output.count("sent a malformed control message") == 1, output
    assert "Traceback" not in output, output
    assert process_state(other) not in (None, "Z")
