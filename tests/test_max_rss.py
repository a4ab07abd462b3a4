"""--limit-max-rss MB: a process shard whose RSS stays above the limit for three stats
samples (one a second) is replaced the way a rolling restart replaces it.

Real servers run ``apps.memory:app``, whose ``/grow?mb=N`` makes the answering shard
hold N MiB more (written, so resident); a shard forked from the template starts at
about 25 MB, so ``--limit-max-rss 80`` leaves a shard that has not grown well under it
and one that grew by 100 MB well over it.  Which shards may be replaced, and the log
line, are checked on the supervisor directly, where time and samples are exact (the
counting rule alone: tests/test_policies.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving import ROOT, TESTS, exchange, parse_responses
from shardserve.config import Config
from shardserve.coord import supervisor as sup
from shardserve.coord.handles import ProcessHandle, Slot, Status
from shardserve.coord.placement import Placement, ShardSpec
from shardserve.coord.policies import RSS_RETRY_SECONDS
from shardserve.errors import ConfigError
from shardserve.messages import LATENCY_BUCKETS, Stats

APP = "apps.memory:app"
LIMIT_MB = 80
STARTED = re.compile(r"Started shard (\d+) \[(\d+)\]")
REPLACING = (
    r"Replacing shard {index} \[{pid}\]: RSS (\d+) MB above --limit-max-rss "
    + str(LIMIT_MB)
    + r" MB for 3 s\."
)


# Helpers ----------------------------------------------------------------------------------


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def started(server) -> list[tuple[int, int]]:
    return [(int(m[1]), int(m[2])) for m in STARTED.finditer(server.output)]


def get(server, path: str) -> dict:
    """One GET on a new connection; its JSON body (the answering pid, what it holds)."""
    raw = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    data = exchange(server, raw, timeout=10)
    (response,) = parse_responses(data)
    assert response.status == 200, data[:300]
    return json.loads(response.body)


def grow(server, mb: int) -> int:
    """Make one shard hold ``mb`` MiB more; the pid of the shard that did."""
    return get(server, f"/grow?mb={mb}")["pid"]


def shardserve(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    return subprocess.run(
        [sys.executable, "-m", "shardserve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def status(path: str) -> dict:
    result = shardserve("status", "--control-socket", path, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def metrics_port(server) -> int:
    return int(server.wait_for(r"Metrics and health on http://127\.0\.0\.1:(\d+)/metrics", 1)[1])


def restarts_metric(port: int) -> dict[str, float]:
    """cause -> shardserve_shard_restarts_total, parsed by prometheus_client."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        sample.labels["cause"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shardserve_shard_restarts_total"
    }


@dataclasses.dataclass
class Result:
    at: float
    kind: str  # "keep-alive" or "new"
    pid: int | None
    error: str | None


class Load:
    """One thread alternating a request on a kept-alive connection (httpx, which opens
    a new one when the server answers ``connection: close``) and one on a new
    connection, until stopped, ``duration`` s have passed or ``cap`` requests."""

    def __init__(self, server, duration: float = 30.0, cap: int = 3000) -> None:
        self.server = server
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + duration
        self._cap = cap
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _record(self, kind: str, call) -> None:
        pid = error = None
        try:
            pid = call()
        except Exception as exc:  # noqa: BLE001 - recorded, asserted on by the test
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.results.append(Result(time.monotonic(), kind, pid, error))

    def _run(self) -> None:
        url = self.server.url + "/"

        def kept_alive() -> int:
            response = client.get(url)
            assert response.status_code == 200, response
            return response.json()["pid"]

        with httpx.Client(timeout=10) as client:
            while (
                not self._stop.is_set()
                and len(self.results) < self._cap
                and time.monotonic() < self._deadline
            ):
                self._record("keep-alive", kept_alive)
                self._record("new", lambda: get(self.server, "/")["pid"])
                self._stop.wait(0.01)

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)

    def stop(self) -> list[Result]:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive()
        return self.snapshot()


# Real servers -----------------------------------------------------------------------------


def test_a_shard_above_the_limit_is_replaced_and_no_request_fails(serve, tmp_path):
    path = str(tmp_path / "ctl.sock")
    server = serve(
        APP,
        "--shards", "2",
        "--limit-max-rss", str(LIMIT_MB),
        "--metrics", "127.0.0.1:0",
        "--control-socket", path,
    )  # fmt: skip
    port = metrics_port(server)
    shards = dict(started(server))
    assert sorted(shards) == [0, 1], server.output
    load = Load(server)
    try:
        wait_until(
            lambda: {r.pid for r in load.snapshot()} == set(shards.values()),
            10,
            "both shards to answer the load",
        )
        grown = grow(server, 100)
        index = next(i for i, pid in shards.items() if pid == grown)
        other = 1 - index
        grown_at = time.monotonic()
        match = server.wait_for(REPLACING.format(index=index, pid=grown), 10)
        assert int(match[1]) > LIMIT_MB
        # Three samples above the limit, one a second: not before about 2 s.
        assert time.monotonic() - grown_at >= 1.5
        successor = int(server.wait_for(rf"Started shard {index} \[(?!{grown}\])(\d+)\]", 10)[1])
        server.wait_for(rf"Finished shard {index} \[{grown}\]", 15)
        finished_at = time.monotonic()

        def successor_serves():
            late = [r for r in load.snapshot() if r.at > finished_at]
            return len(late) >= 40 and {r.pid for r in late} == {successor, shards[other]}

        wait_until(successor_serves, 15, "both shards to answer after the replacement")
    finally:
        results = load.stop()
    failed = [r for r in results if r.error is not None]
    assert not failed, failed[:5]
    assert len(results) >= 100
    assert {r.kind for r in results} == {"keep-alive", "new"}
    assert {r.pid for r in results} == {grown, successor, shards[other]}
    # Only the shard above the limit was replaced: the other kept its pid throughout,
    # and the successor (under the limit) is not replaced in turn.
    assert started(server) == [*shards.items(), (index, successor)], server.output
    assert len(re.findall(r"Replacing shard", server.output)) == 1, server.output
    assert "exited unexpectedly" not in server.output, server.output

    assert wait_until(lambda: restarts_metric(port), 5, "restarts in /metrics") == {"memory": 1}
    report = status(path)
    assert report["restarts"] == {"memory": 1}
    rows = {row["index"]: row for row in report["shards"]}
    assert rows[index]["pid"] == successor and rows[index]["restarts"] == 1
    assert rows[other]["pid"] == shards[other] and rows[other]["restarts"] == 0
    assert rows[index]["rss_bytes"] is None or rows[index]["rss_bytes"] < LIMIT_MB * 2**20
    table = shardserve("status", "--control-socket", path).stdout
    cells = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip()}
    # (columns from the right: restarts, rss MB, uptime s)
    assert cells[str(index)][1] == str(successor) and cells[str(index)][-3] == "1", table
    assert cells[str(other)][-3] == "0", table


def test_a_shard_under_the_limit_is_never_replaced(serve, tmp_path):
    path = str(tmp_path / "ctl.sock")
    server = serve(APP, "--shards", "2", "--limit-max-rss", str(LIMIT_MB), "--control-socket", path)
    shards = dict(started(server))
    grown = grow(server, 40)  # about 65 MB: under the limit
    index = next(i for i, pid in shards.items() if pid == grown)

    def row():
        return {r["index"]: r for r in status(path)["shards"]}[index]

    wait_until(lambda: (row()["rss_bytes"] or 0) > 55 * 2**20, 5, "the grown shard's RSS")
    time.sleep(5)  # five more samples, every one under the limit
    assert row()["rss_bytes"] < LIMIT_MB * 2**20
    report = status(path)
    assert report["restarts"] == {}
    assert {r["index"]: r["pid"] for r in report["shards"]} == shards
    assert "Replacing" not in server.output, server.output
    assert started(server) == list(shards.items())


def test_one_shard_with_a_limit_runs_under_the_supervisor_and_is_replaced(serve):
    """Without a supervisor no one could start a successor: --limit-max-rss uses one,
    as --reload does, even for the single shard."""
    server = serve(APP, "--limit-max-rss", str(LIMIT_MB))
    assert "Control socket:" in server.output and "Starting 1 shard" in server.output
    ((_, first),) = started(server)
    assert grow(server, 100) == first
    server.wait_for(REPLACING.format(index=0, pid=first), 10)
    successor = int(server.wait_for(rf"Started shard 0 \[(?!{first}\])(\d+)\]", 10)[1])
    server.wait_for(rf"Finished shard 0 \[{first}\]", 15)
    assert get(server, "/") == {"pid": successor, "held_mb": 0}


def test_subinterpreter_shards_refuse_the_limit_in_one_line(serve):
    server = serve(
        APP, "--shard-mode", "subinterpreter", "--limit-max-rss", "100", ready=False, port=False
    )
    code = server.wait_exit(15)
    lines = [line for line in server.lines if line.strip()]
    assert code == 1, server.output
    assert len(lines) == 1, lines
    assert "--limit-max-rss" in lines[0] and "subinterpreter" in lines[0], lines[0]
    assert "--shard-mode process" in lines[0], lines[0]


def test_the_flag_is_in_help_and_takes_megabytes_of_at_least_one():
    help_text = shardserve("--help").stdout
    assert re.search(r"--limit-max-rss MB\s", help_text), help_text
    result = shardserve(APP, "--limit-max-rss", "0")
    assert result.returncode == 2 and "--limit-max-rss" in result.stderr, result.stderr
    with pytest.raises(ConfigError, match="--limit-max-rss"):
        Config(app=APP, shard_mode="subinterpreter", limit_max_rss=100).validate()
    Config(app=APP, limit_max_rss=100).validate()
    assert Config(app=APP).limit_max_rss is None  # default: no limit


# The counting rule, on the supervisor ---------------------------------------------------------


MIB = 2**20


class Replacements:
    """Stands in for Supervisor._replace: records each call, answers ``outcome``."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str | None]] = []
        self.outcome = True

    async def __call__(self, slot, cause=None) -> bool:
        self.calls.append((slot.index, cause))
        return self.outcome


def _supervised(limit_mb: int = 100):
    supervisor = sup.Supervisor(
        Config(app=APP, shards=2, limit_max_rss=limit_mb),
        Placement([ShardSpec(0), ShardSpec(1)]),
        "test",
    )
    supervisor.phase = sup.Phase.RUNNING
    supervisor._replace = replacements = Replacements()
    slot = Slot(0, [], None)
    supervisor.slots = [slot]
    proc = ProcessHandle(slot, 1)
    proc.pid, proc.status, slot.generation, slot.current = 4321, Status.READY, 1, proc
    return supervisor, proc, replacements


def _stats(rss_mb: float | None) -> Stats:
    rss = None if rss_mb is None else int(rss_mb * MIB)
    latency = [0] * (len(LATENCY_BUCKETS) + 1)
    return Stats(index=0, generation=1, pid=4321, latency=latency, rss_bytes=rss)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_three_consecutive_samples_above_the_limit_replace_a_shard():
    async def scenario():
        supervisor, proc, replacements = _supervised()
        for rss in (150, 150, 100, 150, 150, None, 90):  # at the limit is not above it
            supervisor._on_message(proc, _stats(rss))
        await asyncio.sleep(0)
        assert replacements.calls == []
        for rss in (150, 150, 150):
            supervisor._on_message(proc, _stats(rss))
        await asyncio.sleep(0)
        assert replacements.calls == [(0, "memory")]
        supervisor._on_message(proc, _stats(150))  # (replacing already: once is enough)
        await asyncio.sleep(0)
        assert replacements.calls == [(0, "memory")]

    logger, lines = logging.getLogger("shardserve.error"), Lines()
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(lines)
    try:
        asyncio.run(scenario())
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert lines.lines == [
        "Replacing shard 0 [4321]: RSS 150 MB above --limit-max-rss 100 MB for 3 s."
    ]


def test_only_a_ready_current_shard_of_a_running_server_is_replaced_for_memory():
    async def scenario():
        for change in ("draining", "not current", "busy", "stopping", "starting up"):
            supervisor, proc, replacements = _supervised()
            if change == "draining":
                proc.status = Status.DRAINING
            elif change == "not current":
                proc.slot.current = None
            elif change == "busy":
                proc.slot.busy = True
            elif change == "stopping":
                supervisor.phase = sup.Phase.STOPPING
            else:
                supervisor.phase = sup.Phase.STARTING
            for _ in range(5):
                supervisor._on_message(proc, _stats(500))
            await asyncio.sleep(0)
            assert replacements.calls == [], change

    asyncio.run(scenario())


def test_a_failed_memory_replacement_is_tried_again_after_a_while():
    async def scenario():
        supervisor, proc, replacements = _supervised()
        replacements.outcome = False  # the successor did not start: the old one stays
        now = time.monotonic()
        for second in range(3):
            supervisor._check_memory(proc, _stats(150), now + second)
        await asyncio.sleep(0)
        assert replacements.calls == [(0, "memory")]
        # Still above the limit, but not tried again until RSS_RETRY_SECONDS after.
        supervisor._check_memory(proc, _stats(150), now + RSS_RETRY_SECONDS - 1)
        await asyncio.sleep(0)
        assert len(replacements.calls) == 1
        replacements.outcome = True
        supervisor._check_memory(proc, _stats(150), now + RSS_RETRY_SECONDS + 1)
        await asyncio.sleep(0)
        assert len(replacements.calls) == 2

    asyncio.run(scenario())
