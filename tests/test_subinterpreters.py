"""Subinterpreter groundwork (issue 6), in real own-GIL subinterpreters on Python 3.13+.

- the control channel between interpreters (an interpreters queue each way plus a
  socketpair doorbell) carries the same messages, fds included, as the socket one;
- the shard's own code (stdlib asyncio, the pure-Python parser) serves real HTTP from
  inside a subinterpreter, on a dup of a listener the main interpreter owns, and stops
  when told through the doorbell.

Under Python 3.11 these skip with the reason; CI runs them under Python 3.13 (.ci/run
makes .venv313 from pyenv's 3.13 and fails if it cannot).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from serving import check_backs_off_at_fd_limit
from shardserve.interpreters import unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(
    REASON is not None, reason=f"{REASON}: CI runs these with .venv313 (see .ci/run)"
)

# What a subinterpreter runs: the shard's end of a QueueChannel over the queues it was
# given (inbox, outbox) and the doorbell fd.  It reports Ready, echoes a Stats per
# Drain, closes an adopted socket after reporting its port, and ends on Stop.
SHARD_END = """
import asyncio, socket
from shardserve.control import QueueChannel
from shardserve.messages import Adopt, Drain, JsonCodec, Ready, Stats, Stop

async def main():
    done = asyncio.get_running_loop().create_future()
    def on_message(message):
        if isinstance(message, Drain):
            channel.send(Stats(index=0, generation=1, requests=7))
        elif isinstance(message, Adopt):
            sock = socket.socket(fileno=message.fds[0])
            channel.send(Stats(index=0, generation=1, requests=sock.getsockname()[1]))
            sock.close()
        elif isinstance(message, Stop):
            done.set_result(None)
    channel = QueueChannel(inbox, outbox, socket.socket(fileno=bell_fd), JsonCodec(),
                           on_message, lambda: done.done() or done.set_result(None),
                           lambda exc: None)
    channel.send(Ready(index=0, pid=0, generation=1))
    await done
    channel.close()

asyncio.run(main())
"""


def _start(code: str, **shared):
    from shardserve.interpreters import load, prepare_queues

    api = load()
    interp = api.create()
    queues = {k: v for k, v in shared.items() if not isinstance(v, int)}
    numbers = {k: v for k, v in shared.items() if isinstance(v, int)}
    prepare_queues(interp, api, **queues)
    interp.prepare_main(**numbers)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            interp.exec(code)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)

    thread = threading.Thread(target=run, name="subinterpreter")
    thread.start()
    return api, interp, thread, failure


def test_queue_channel_between_interpreters():
    from shardserve.control import QueueChannel
    from shardserve.interpreters import load
    from shardserve.messages import Adopt, Drain, MsgspecCodec, Ready, Stats, Stop

    api = load()
    to_shard, to_coordinator = api.create_queue(), api.create_queue()
    ours, theirs = socket.socketpair()
    _, interp, thread, failure = _start(
        SHARD_END, inbox=to_shard, outbox=to_coordinator, bell_fd=os.dup(theirs.fileno())
    )
    theirs.close()
    received: list = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def coordinator() -> None:
        arrived = asyncio.Event()

        def on_message(message) -> None:
            received.append(message)
            arrived.set()

        channel = QueueChannel(
            to_coordinator, to_shard, ours, MsgspecCodec(), on_message, lambda: None, print
        )

        async def next_message():
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 10)
            return received.pop(0)

        assert isinstance(await next_message(), Ready)
        channel.send(Drain(close_idle=True))
        stats = await next_message()
        assert isinstance(stats, Stats) and stats.requests == 7
        channel.send(Adopt(listener=1), fds=[listener.fileno()])
        stats = await next_message()
        assert stats.requests == port  # the shard's end used the fd it was given
        channel.send(Stop())
        channel.close()

    asyncio.run(asyncio.wait_for(coordinator(), 30))
    thread.join(10)
    assert not thread.is_alive()
    assert not failure, failure
    interp.close()
    listener.close()


# The shard itself in a subinterpreter: its code unchanged, stdlib asyncio and the
# pure-Python parser; Drain through the doorbell stops it.
SHARD_SERVES = """
import asyncio, socket
from shardserve.config import Config
from shardserve.control import QueueChannel
from shardserve.messages import Drain, JsonCodec, Ready
from shardserve.shard.server import Shard

config = Config(app="examples.hello:app", http="auto", loop="auto", lifespan="on")
shard = Shard(config, [socket.socket(fileno=listener_fd)], index=0)
channel = None

def setup(loop, _shard):
    global channel
    def on_message(message):
        if isinstance(message, Drain):
            shard.request_stop(close_idle=message.close_idle)
    channel = QueueChannel(inbox, outbox, socket.socket(fileno=bell_fd), JsonCodec(),
                           on_message, shard.request_stop, lambda exc: None, loop=loop)

shard.on_ready = lambda _shard: channel.send(Ready(index=0, pid=0, generation=1))
shard.run(setup)
channel.close()
"""


def test_shard_serves_http_inside_a_subinterpreter():
    import httpx

    from shardserve.control import QueueChannel
    from shardserve.interpreters import load
    from shardserve.messages import Drain, JsonCodec, Ready

    api = load()
    to_shard, to_coordinator = api.create_queue(), api.create_queue()
    ours, theirs = socket.socketpair()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    _, interp, thread, failure = _start(
        textwrap.dedent(SHARD_SERVES),
        inbox=to_shard,
        outbox=to_coordinator,
        bell_fd=os.dup(theirs.fileno()),
        listener_fd=os.dup(listener.fileno()),
    )
    theirs.close()

    async def coordinator() -> None:
        ready = asyncio.Event()
        channel = QueueChannel(
            to_coordinator,
            to_shard,
            ours,
            JsonCodec(),
            lambda message: isinstance(message, Ready) and ready.set(),
            lambda: None,
            print,
        )
        await asyncio.wait_for(ready.wait(), 20)
        async with httpx.AsyncClient() as client:
            for _ in range(20):
                response = await client.get(f"http://127.0.0.1:{port}/", timeout=5)
                assert response.status_code == 200
                assert response.text == "Hello, world!"
        channel.send(Drain(close_idle=True))
        channel.close()

    try:
        asyncio.run(asyncio.wait_for(coordinator(), 40))
    finally:
        thread.join(15)
    assert not thread.is_alive(), "the shard did not stop when drained"
    assert not failure, failure
    interp.close()
    listener.close()


def test_reason_names_the_requirement_when_unavailable():
    # Runs only where the API exists: the check must then say nothing.
    assert unavailable_reason() is None
    assert sys.version_info >= (3, 13)


# Through the CLI: the coordinator runs subinterpreter shards -----------------------------

APP = "apps.subinterp:app"


def _whoami(server, client) -> int:
    response = client.get(server.url + "/", timeout=5)
    assert response.status_code == 200
    return response.json()["interpreter"]


def test_subinterpreter_shards_serve_a_starlette_app_in_one_process(serve):
    import httpx

    server = serve(APP, "--shard-mode", "subinterpreter", "--shards", "2")
    coordinator = int(server.wait_for(r"coordinator pid (\d+)", 1).group(1))
    for index in (0, 1):
        line = server.wait_for(rf"Started shard {index} \[(\d+)\] \(http: (\w+), loop: (\w+)\)", 1)
        assert (int(line.group(1)), line.group(2), line.group(3)) == (
            coordinator,
            "python",
            "asyncio",
        )
    seen = set()
    for _ in range(200):
        with httpx.Client() as fresh:  # a new connection: either shard may take it
            seen.add(_whoami(server, fresh))
        if len(seen) == 2:
            break
    assert len(seen) == 2, seen  # two interpreters answered, in one process
    assert server.stop() == 0
    assert server.output.count("Finished shard") == 2


def test_the_compiled_modules_load_in_every_subinterpreter_shard(serve):
    """_head.c, _send.c, _scope.c and _conn.c are built for multi-phase init and a
    per-interpreter GIL: each own-GIL interpreter imports its own copy (of httptools
    and uvloop, none loads).  (_eager.c is for 3.11 only.)"""
    import httpx

    server = serve(APP, "--shard-mode", "subinterpreter", "--shards", "2")
    seen = {}
    for _ in range(40):
        with httpx.Client() as client:  # (a new connection each time: both shards answer)
            answer = client.get(server.url + "/", timeout=5).json()
        seen[answer["interpreter"]] = all(
            answer[name]
            for name in ("head_split_compiled", "send_compiled", "scope_compiled", "conn_compiled")
        )
        if len(seen) == 2:
            break
    assert len(seen) == 2 and all(seen.values()), seen


def test_a_crashed_subinterpreter_shard_is_restarted(serve):
    import httpx

    server = serve(APP, "--shard-mode", "subinterpreter", "--shards", "1")
    with httpx.Client() as client:
        before = _whoami(server, client)
        try:
            client.get(server.url + "/crash", timeout=5)
        except httpx.HTTPError:
            pass  # the shard may be gone before its answer is out
    server.wait_for(r"shard 0 \[subinterpreter\] exited unexpectedly \(.*crash requested", 10)
    deadline = time.monotonic() + 10
    after = None
    while time.monotonic() < deadline:
        try:
            with httpx.Client() as client:
                after = _whoami(server, client)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    assert after is not None and after != before
    assert server.proc.poll() is None


class NewConnectionLoad:
    """Two threads, each a new connection per request (bounded: 30 s and ``limit``
    requests each), cycling through ``paths`` and recording (when, the answer's
    ``field``) and failures, until ``stop``."""

    def __init__(
        self, server, field: str, paths: tuple[str, ...] = ("/",), limit: int = 20_000
    ) -> None:
        self.server = server
        self.field = field
        self.paths = paths
        self.limit = limit
        self.failures: list[str] = []
        self.answered: list[tuple[float, int]] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._load) for _ in range(2)]
        for thread in self.threads:
            thread.start()

    def _load(self) -> None:
        import httpx

        deadline = time.monotonic() + 30
        for count in range(self.limit):
            if self.done.is_set() or time.monotonic() > deadline:
                break
            path = self.paths[count % len(self.paths)]
            try:
                with httpx.Client() as client:  # a new connection each time
                    response = client.get(self.server.url + path, timeout=5)
                    assert response.status_code == 200, (path, response.status_code)
                    self.answered.append((time.monotonic(), response.json()[self.field]))
            except Exception as exc:  # noqa: BLE001 - counted
                self.failures.append(f"{path}: {exc!r}")

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(10)

    def since(self, moment: float) -> set[int]:
        return {who for when, who in self.answered if when > moment}


def roll_under_load(server, load: NewConnectionLoad, timeout: float) -> None:
    """SIGHUP while ``load`` runs: no request fails, and the interpreters answering
    after the roll are all new ones."""
    import signal

    try:
        time.sleep(1.0)
        before = load.since(0)
        server.signal(signal.SIGHUP)
        server.wait_for(r"Rolling restart complete\.", timeout)
        restarted = time.monotonic()
        time.sleep(1.0)
    finally:
        load.stop()
    assert not load.failures, load.failures[:5]
    after = load.since(restarted + 0.2)
    assert after and not after & before, (before, after)


def test_rolling_restart_of_subinterpreter_shards_fails_no_request(serve):
    server = serve(APP, "--shard-mode", "subinterpreter", "--shards", "2")
    roll_under_load(server, NewConnectionLoad(server, "interpreter"), 20)


def test_in_place_upgrade_of_a_subinterpreter_server_fails_no_request(serve, tmp_path):
    """The new coordinator's interpreters serve the handed-over listeners; the old
    process (its shards are its own threads) drains and exits 0."""
    import signal

    from serving import process_gone

    server = serve(APP, "--shard-mode", "subinterpreter", "--shards", "2",
                   "--control-socket", str(tmp_path / "c.sock"))  # fmt: skip
    load = NewConnectionLoad(server, "pid")
    try:
        time.sleep(1.0)
        server.signal(signal.SIGUSR2)
        new = int(server.wait_for(r"Upgrade: started a new coordinator \(pid (\d+)\)", 10)[1])
        server.follow(new)
        server.wait_for(r"Upgrade complete: coordinator pid \d+ serves", 30)
        assert server.wait_exit(15) == 0, server.output
        exited = time.monotonic()
        time.sleep(1.0)
    finally:
        load.stop()
    assert not load.failures, load.failures[:5]
    after = load.since(exited)
    assert after == {new}, (after, new)  # (an interpreter shard's pid is its process's)
    assert not process_gone(new)


def test_preflight_names_the_module_that_refuses(serve):
    server = serve(
        "apps.needs_msgspec:app", "--shard-mode", "subinterpreter", "--shards", "2", ready=False
    )
    assert server.wait_exit(30) != 0
    lines = [line for line in server.lines if line.strip()]
    assert len(lines) == 1, lines
    assert "msgspec" in lines[0] and "--shard-mode process" in lines[0], lines[0]


def test_uvloop_is_refused_for_subinterpreter_shards(serve):
    server = serve(
        APP, "--shard-mode", "subinterpreter", "--loop", "uvloop", ready=False, port=False
    )
    assert server.wait_exit(15) != 0
    assert "--loop uvloop cannot load in a subinterpreter shard" in server.output


def test_a_placement_can_mix_process_and_subinterpreter_shards(tmp_path):
    """The library API: shard 0 a process, shard 1 a subinterpreter of the coordinator."""
    import signal
    import subprocess

    import httpx

    from serving import ROOT, TESTS

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = textwrap.dedent(f"""
        import shardserve
        from shardserve import Placement, ShardSpec
        placement = Placement([ShardSpec(0), ShardSpec(1, mode="subinterpreter")])
        raise SystemExit(shardserve.run("apps.subinterp:app", port={port}, placement=placement))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen: dict[int, int] = {}  # interpreter id -> pid
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            try:
                with httpx.Client() as client:
                    answer = client.get(f"http://127.0.0.1:{port}/", timeout=5).json()
                seen[answer["interpreter"]] = answer["pid"]
            except httpx.HTTPError:
                time.sleep(0.1)
        assert len(seen) == 2, seen
        assert seen.pop(0) != proc.pid  # the main interpreter of a child process
        assert list(seen.values()) == [proc.pid]  # a subinterpreter of the coordinator
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, output


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_pin_pins_each_subinterpreter_shards_thread(serve):
    import httpx

    cpus = sorted(os.sched_getaffinity(0))[:2]
    server = serve(
        APP, "--shard-mode", "subinterpreter", "--shards", "2", "--pin",
        "--cpus", ",".join(map(str, cpus)),
    )  # fmt: skip
    threads: dict[int, int] = {}
    for _ in range(200):
        with httpx.Client() as client:
            answer = client.get(server.url + "/", timeout=5).json()
        threads[answer["interpreter"]] = answer["thread"]
        if len(threads) == 2:
            break
    assert len(threads) == 2, threads
    pinned = set()
    for tid in threads.values():
        status = Path(f"/proc/{server.pid}/task/{tid}/status").read_text()
        pinned.add(status.split("Cpus_allowed_list:")[1].split()[0])
    assert pinned == {str(cpu) for cpu in cpus}, pinned
    # The coordinator's own thread is not pinned.
    status = Path(f"/proc/{server.pid}/status").read_text()
    assert status.split("Cpus_allowed_list:")[1].split()[0] not in pinned


def test_removing_and_adding_subinterpreter_shards(serve):
    """SIGTTOU: the removed shard's listener travels to another interpreter (Adopt,
    its fd through the queue) and every connection is still answered; SIGTTIN adds one."""
    import signal

    import httpx

    server = serve(APP, "--shard-mode", "subinterpreter", "--shards", "2")
    server.signal(signal.SIGTTOU)
    server.wait_for(r"Removing shard 1; 1 shards now\.", 5)
    server.wait_for(r"Finished shard 1", 10)
    answered = set()
    for _ in range(60):  # new connections land on both listeners (reuseport hash)
        with httpx.Client() as client:
            answered.add(_whoami(server, client))
    assert len(answered) == 1, answered
    server.signal(signal.SIGTTIN)
    server.wait_for(r"Added shard 1; 2 shards now\.", 10)
    for _ in range(200):
        with httpx.Client() as client:
            answered.add(_whoami(server, client))
        if len(answered) == 2:
            break
    assert len(answered) == 2, answered


@pytest.mark.timeout(90)
def test_subinterpreter_shards_back_off_at_the_fd_limit(serve):
    """Subinterpreter shards run stdlib asyncio, whose own accept loop spins and
    floods the log at EMFILE: they must pause instead (issue 14)."""
    server = serve(
        APP,
        "--shard-mode",
        "subinterpreter",
        "--shards",
        "2",
        "--timeout-keep-alive",
        "60",
        "--timeout-request-header",
        "60",
        fd_limit=128,
    )
    check_backs_off_at_fd_limit(server)
    assert server.stop() == 0


def test_websockets_in_subinterpreter_shards(serve):
    """websockets' sans-I/O protocol (its pure-Python fallback) inside an interpreter."""
    from websockets.sync.client import connect

    server = serve(APP, "--shard-mode", "subinterpreter", "--shards", "2")
    url = server.url.replace("http://", "ws://") + "/ws"
    with connect(url, open_timeout=5, close_timeout=5) as websocket:
        for text in ("hello", "x" * 70000, "bye"):
            websocket.send(text)
            interpreter, _, echoed = websocket.recv(timeout=5).partition(":")
            assert echoed == text
            assert int(interpreter) > 0  # not the main interpreter


def test_http2_in_subinterpreter_shards(serve):
    """h2 (pure Python) inside an interpreter: h2c prior knowledge, streams multiplexed
    on one connection (curl --parallel), each answered by a Starlette app."""
    server = serve(APP, "--shard-mode", "subinterpreter", "--shards", "2")
    urls = [server.url + "/"] * 6
    result = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "--parallel", "--parallel-immediate",
         "--max-time", "10", "-w", "\\n%{http_version}\\n", *urls],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # (curl --parallel writes bodies and -w lines as transfers finish: two bodies can
    # share a line, so the answers are found by pattern, not parsed line by line.)
    assert result.stdout.splitlines().count("2") == 6, result.stdout
    interpreters = re.findall(r'"interpreter":\s*(\d+)', result.stdout)
    assert len(interpreters) == 6 and all(int(i) > 0 for i in interpreters), result.stdout
    assert server.stop() == 0


def test_heartbeats_flow_from_subinterpreter_shards(serve):
    """With a 2 s heartbeat timeout (beats come once a second), shards that beat
    through the queue stay in place; without beats they would be replaced."""
    import httpx

    server = serve(
        APP, "--shard-mode", "subinterpreter", "--shards", "1", "--timeout-shard-heartbeat", "2"
    )
    with httpx.Client() as client:
        first = _whoami(server, client)
        time.sleep(5)
        assert _whoami(server, client) == first
    assert "heartbeat" not in server.output, server.output


def test_subinterpreter_shards_report_their_own_cpu_and_no_memory_of_their_own(serve):
    """A subinterpreter shard's CPU is its thread's; its memory is the coordinator's
    process, so it reports none (and /metrics has no memory series for it)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    server = serve(
        APP, "--shard-mode", "subinterpreter", "--shards", "2", "--metrics", "127.0.0.1:0"
    )
    port = int(server.wait_for(r"Metrics and health on http://127\.0\.0\.1:(\d+)/metrics", 1)[1])
    coordinator = int(server.wait_for(r"coordinator pid (\d+)", 1).group(1))
    with httpx.Client() as client:
        for _ in range(50):
            _whoami(server, client)
    deadline = time.monotonic() + 6
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        info = [dict(labels) for (name, labels) in samples if name == "shardserve_shard_info"]
        if samples.get(("shardserve_requests_total", ())) == 50 and len(info) == 2:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert {(i["shard"], i["pid"], i["mode"]) for i in info} == {
        ("0", str(coordinator), "subinterpreter"),
        ("1", str(coordinator), "subinterpreter"),
    }
    assert not [k for k in samples if k[0] == "shardserve_shard_resident_memory_bytes"]
    cpu = {
        dict(labels)["shard"]: value
        for (name, labels), value in samples.items()
        if name == "shardserve_shard_cpu_seconds_total"
    }
    assert set(cpu) == {"0", "1"} and all(value > 0 for value in cpu.values()), cpu
    # Each thread's own CPU: together no more than the whole process has used.
    with open(f"/proc/{coordinator}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    process_cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    assert sum(cpu.values()) <= process_cpu + 0.05, (cpu, process_cpu)


def test_reload_replaces_subinterpreter_shards_with_fresh_interpreters(serve, tmp_path):
    """--reload with subinterpreter shards: each new interpreter imports the edited
    module afresh; broken code leaves the old interpreters serving."""
    from test_reload import MODULE, Loop, app_source, dev_server, write

    source = tmp_path / f"{MODULE}.py"
    source.write_text(app_source("one"))
    server = dev_server(serve, tmp_path, "--shard-mode", "subinterpreter", "--shards", "2")
    loop = Loop(server.url + "/")
    try:
        saved = write(source, app_source("two"))
        assert loop.first("two", saved) is not None, server.output
        server.wait_for(r"Rolling restart complete\.", 10)
        write(source, app_source("three", "def oops(:\n"))
        server.wait_for(r"Not reloading: .*SyntaxError", 10)
        time.sleep(0.5)
        still = time.monotonic()
        time.sleep(0.5)
    finally:
        loop.stop()
    assert not loop.failures, loop.failures[:5]
    assert {text for when, text in loop.answers if when >= still} == {"two"}
