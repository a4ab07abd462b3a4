"""Placement: how many shards, on which CPUs, steering, refusals, the library API.

Real servers on real sockets: shard pids come from the "Started shard I [PID]" lines,
their CPUs from /proc/PID/status, and which shard answered from the ``pid`` in
``apps.echo:scope_json``'s reply.  The pure parts (cgroup quota, /sys topology, CPU
lists, resolve_placement) run on fake trees built in tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shardserve
from serving import ROOT, TESTS, Server, exchange
from shardserve.config import Config
from shardserve.coord import placement
from shardserve.coord.placement import (
    Placement,
    ShardSpec,
    auto_shard_count,
    cgroup_cpu_limit,
    format_cpu_list,
    node_cpus,
    parse_cpu_list,
    physical_core_cpus,
    resolve_placement,
)
from shardserve.errors import ConfigError

APP = "apps.echo:scope_json"
STARTED = re.compile(r"Started shard (\d+) \[(\d+)\]")
USABLE = sorted(os.sched_getaffinity(0))


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def shard_pids(server: Server, count: int) -> dict[int, int]:
    """Shard index -> pid, from the start-up lines (all present once the server is ready)."""
    pids = {int(m.group(1)): int(m.group(2)) for m in STARTED.finditer(server.output)}
    assert sorted(pids) == list(range(count)), server.output
    assert len(set(pids.values())) == count, server.output
    assert server.pid not in pids.values(), server.output
    return pids


def cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def answered_by(server: Server) -> int:
    """The pid of the shard that answers a request on a new connection."""
    raw = exchange(server, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:200]
    return json.loads(body)["pid"]


def answering(server: Server, connections: int) -> set[int]:
    return {answered_by(server) for _ in range(connections)}


def start_server(serve, argv: list[str]) -> Server:
    """Start a command the ``serve`` fixture cannot build (a prefix, a script); it still
    stops it at teardown."""
    server = Server(argv, server_env(), ROOT)
    serve.servers.append(server)
    return server


# --shards auto -------------------------------------------------------------------------


def test_auto_starts_one_shard_per_usable_cpu(serve):
    server = serve(APP, "--shards", "auto")
    count = len(USABLE)
    limit = cgroup_cpu_limit()
    assert limit is None or limit >= count, "this test expects no cgroup CPU quota"
    assert count == 2, "this machine has CPUs 0 and 1"
    assert f"Starting 2 shards (2 usable CPUs), coordinator pid {server.pid}" in server.output
    pids = shard_pids(server, 2)
    for pid in pids.values():
        assert cpus_allowed(pid) == "0-1"  # not pinned
    assert answering(server, 10) <= set(pids.values())


def test_auto_under_taskset_starts_one_shard(serve):
    argv = ["taskset", "-c", "0", sys.executable, "-m", "shardserve", APP, "--port", "0"]
    server = start_server(serve, [*argv, "--shards", "auto"])
    try:
        server.wait_ready()
        assert f"Starting 1 shard (1 usable CPU), coordinator pid {server.pid}" in server.output, (
            server.output
        )
        pids = shard_pids(server, 1)
        assert cpus_allowed(pids[0]) == "0"
        assert answering(server, 3) == {pids[0]}
    finally:
        assert server.stop() == 0, server.output


def test_auto_with_cpus_counts_the_listed_cpus(serve):
    server = serve(APP, "--cpus", "1", "--shards", "auto")
    assert re.search(r"Starting 1 shard \(1 CPUs? in --cpus\)", server.output), server.output
    pids = shard_pids(server, 1)
    assert cpus_allowed(pids[0]) == "1"
    assert answering(server, 3) == {pids[0]}


# --pin and --cpus ----------------------------------------------------------------------


def test_pin_puts_shard_i_on_cpu_i(serve):
    server = serve(APP, "--shards", "2", "--pin")
    assert "Starting 2 shards (--shards 2)" in server.output
    pids = shard_pids(server, 2)
    assert cpus_allowed(pids[0]) == "0"
    assert cpus_allowed(pids[1]) == "1"
    assert cpus_allowed(server.pid) == "0-1"  # the coordinator itself is not pinned
    assert answering(server, 10) <= set(pids.values())


def test_pin_follows_the_order_of_cpus(serve):
    server = serve(APP, "--shards", "2", "--pin", "--cpus", "1,0")
    pids = shard_pids(server, 2)
    assert cpus_allowed(pids[0]) == "1"
    assert cpus_allowed(pids[1]) == "0"


def test_single_pinned_shard_runs_under_the_coordinator(serve):
    server = serve(APP, "--shards", "1", "--pin", "--cpus", "1")
    assert f"Starting 1 shard (--shards 1), coordinator pid {server.pid}" in server.output
    pids = shard_pids(server, 1)
    assert cpus_allowed(pids[0]) == "1"
    assert answering(server, 3) == {pids[0]}


def test_cpus_without_pin_lets_every_shard_use_the_list(serve):
    server = serve(APP, "--shards", "2", "--cpus", "1")
    pids = shard_pids(server, 2)
    assert cpus_allowed(pids[0]) == "1"
    assert cpus_allowed(pids[1]) == "1"


def test_cpus_applies_to_a_single_shard_too(serve):
    """``--cpus 1`` with the default one shard: whatever process serves, it runs on CPU 1."""
    server = serve(APP, "--cpus", "1")
    pid = answered_by(server)
    assert cpus_allowed(pid) == "1", server.output


# Reuseport steering ------------------------------------------------------------------------

CLIENT = r"""
import json, os, socket, sys, time
port, cpu, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
os.sched_setaffinity(0, {cpu})
pids = []
deadline = time.monotonic() + 15
for _ in range(count):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        for _ in range(1000):
            chunk = sock.recv(65536)
            if not chunk or time.monotonic() > deadline:
                break
            data += chunk
    pids.append(json.loads(data.partition(b"\r\n\r\n")[2])["pid"])
print(json.dumps({"affinity": sorted(os.sched_getaffinity(0)), "pids": pids}))
"""


def client_on_cpu(port: int, cpu: int, count: int) -> list[int]:
    """``count`` new connections from a process pinned to ``cpu``: who answered each."""
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, str(port), str(cpu), str(count)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["affinity"] == [cpu]
    assert len(report["pids"]) == count
    return report["pids"]


def test_cpu_steering_sends_each_connection_to_the_clients_cpu(serve):
    server = serve(APP, "--shards", "2", "--pin", "--cpus", "0-1", "--reuseport-steering", "cpu")
    pids = shard_pids(server, 2)
    assert cpus_allowed(pids[0]) == "0"
    assert cpus_allowed(pids[1]) == "1"
    for cpu in (0, 1, 0):
        answered = client_on_cpu(server.port, cpu, 10)
        assert answered == [pids[cpu]] * 10, (cpu, pids, answered)


def test_hash_steering_spreads_connections_over_both_shards(serve):
    """2**-29 odds per client of seeing one shard only, if the kernel hashes."""
    server = serve(APP, "--shards", "2", "--pin", "--cpus", "0-1", "--reuseport-steering", "hash")
    pids = shard_pids(server, 2)
    for cpu in (0, 1):
        answered = client_on_cpu(server.port, cpu, 30)
        assert set(answered) == set(pids.values()), (cpu, pids, answered)


# Refusals ---------------------------------------------------------------------------------


def refusal(*args: str, preexec_fn=None, timeout: float = 10.0) -> str:
    """Run a server that must refuse to start: its one line on stderr, nothing else."""
    argv = [sys.executable, "-m", "shardserve", APP, *args]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server_env(),
        cwd=ROOT,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=5)
        raise AssertionError(f"still running after {timeout} s:\n{out}\n{err}") from None
    elapsed = time.monotonic() - started
    assert proc.returncode != 0, out + err
    assert "Traceback" not in out + err, out + err
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("shardserve: error: "), err
    assert elapsed < 5, (elapsed, err)
    return lines[0]


REFUSED = [
    (["--shards", "0"], ["--shards"]),
    (["--shards", "-1"], ["--shards"]),
    (["--shards", "abc"], ["--shards", "abc"]),
    (["--shards", "2", "--cpus", "0-7"], ["--cpus", "not usable"]),
    (["--shards", "auto", "--cpus", "0-7"], ["--cpus", "not usable"]),
    (["--shards", "2", "--cpus", "x"], ["--cpus", "x"]),
    (["--shards", "2", "--cpus", "3-1"], ["--cpus", "3-1"]),
    (["--shards", "2", "--cpus", ","], ["--cpus"]),
    (["--shards", "2", "--cpus", "-1"], ["--cpus"]),
    (["--shards", "2", "--pin", "--cpus", "0-7"], ["--cpus", "not usable"]),
    (["--shards", "3", "--pin"], ["--pin", "3"]),
    (["--shards", "2", "--pin", "--cpus", "1"], ["--pin", "2"]),
    (["--shards", "2", "--reuseport-steering", "cpu"], ["--reuseport-steering cpu"]),
    (
        ["--shards", "2", "--pin", "--cpus", "1,0", "--reuseport-steering", "cpu"],
        ["--reuseport-steering cpu"],
    ),
    (
        ["--shards", "1", "--pin", "--cpus", "1", "--reuseport-steering", "cpu"],
        ["--reuseport-steering cpu"],
    ),
    (["--reuseport-steering", "cpu"], ["--reuseport-steering cpu"]),
]


@pytest.mark.parametrize(("args", "expected"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_refused_with_one_line(args, expected):
    line = refusal("--port", "0", *args)
    for fragment in expected:
        assert fragment in line, line


def test_cpu_steering_with_uds_is_refused(tmp_path):
    sock = tmp_path / "s.sock"
    line = refusal(
        "--uds", str(sock), "--shards", "2", "--pin", "--cpus", "0-1",
        "--reuseport-steering", "cpu",
    )  # fmt: skip
    assert "--reuseport-steering cpu" in line and "--uds" in line, line
    assert not sock.exists()


def test_absurd_cpu_range_is_refused_quickly():
    """A CPU number no machine has: refused in one line, not expanded into a list of
    ten billion CPUs (the address-space limit turns that into a prompt MemoryError)."""

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    line = refusal(
        "--port", "0", "--shards", "2", "--cpus", "0-10000000000", preexec_fn=limit_memory
    )
    assert "--cpus" in line, line


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "reuseport"])
def test_port_held_by_another_process_is_refused(reuseport):
    holder = socket.socket()
    try:
        if reuseport:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen(8)
        port = holder.getsockname()[1]
        line = refusal("--port", str(port), "--shards", "2")
        assert f"127.0.0.1:{port}" in line and "already in use" in line, line
        # The holder still owns the port: a connection reaches it, not a stray shard.
        holder.settimeout(5)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            conn, _ = holder.accept()
            conn.close()
    finally:
        holder.close()


# --uds with several shards --------------------------------------------------------------


def uds_pid(path: Path) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        for _ in range(1000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:200]
    return json.loads(body)["pid"]


def test_uds_is_served_by_every_shard(serve, tmp_path):
    path = tmp_path / "shards.sock"
    server = serve(APP, "--uds", str(path), "--shards", "2", port=False, ready=False)
    server.wait_for(re.escape(f"shardserve running on http+unix://{path} ("), timeout=15)
    pids = shard_pids(server, 2)
    stopped = None
    try:
        # With one shard stopped, the other alone must answer: both serve the socket.
        for index in (0, 1):
            other = pids[1 - index]
            stopped = pids[index]
            os.kill(stopped, signal.SIGSTOP)
            assert {uds_pid(path) for _ in range(4)} == {other}
            os.kill(stopped, signal.SIGCONT)
            stopped = None
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
    assert server.stop() == 0, server.output
    assert not path.exists()


# The library API ---------------------------------------------------------------------------

LIBRARY_SCRIPT = """
import sys
import shardserve

sys.exit(shardserve.run({app!r}, placement={placement}, port=0))
"""


def test_library_runs_a_placement(serve, tmp_path):
    script = tmp_path / "serve_placed.py"
    placement_code = "shardserve.Placement.on_cpus([0, 1])"
    script.write_text(LIBRARY_SCRIPT.format(app=APP, placement=placement_code))
    server = start_server(serve, [sys.executable, str(script)])
    try:
        server.wait_ready()
        assert f"Starting 2 shards (placement given), coordinator pid {server.pid}" in server.output
        pids = shard_pids(server, 2)
        assert cpus_allowed(pids[0]) == "0"
        assert cpus_allowed(pids[1]) == "1"
        assert answering(server, 10) <= set(pids.values())
    finally:
        code = server.stop()
    assert code == 0, server.output
    for index, pid in pids.items():
        assert f"Finished shard {index} [{pid}]" in server.output


def test_library_placement_needs_an_import_string():
    async def app(scope, receive, send):  # pragma: no cover - never served
        pass

    with pytest.raises(ConfigError, match="import string"):
        shardserve.run(app, placement=Placement.on_cpus([0]))


# resolve_placement (pure) -------------------------------------------------------------------


def test_resolve_placement_from_the_flags():
    given, reason = resolve_placement(Config(app="m:a", shards=2, pin=True, cpus="1,0"))
    assert given.shards == [ShardSpec(0, (1,)), ShardSpec(1, (0,))]
    assert given.pinned and reason == "--shards 2"

    unpinned, _ = resolve_placement(Config(app="m:a", shards=3, cpus="0-1"))
    assert unpinned.shards == [ShardSpec(i, (0, 1)) for i in range(3)]
    assert not unpinned.pinned

    free, _ = resolve_placement(Config(app="m:a", shards=2))
    assert [spec.cpus for spec in free.shards] == [None, None]

    listed, reason = resolve_placement(Config(app="m:a", shards="auto", cpus="1"))
    assert listed.shards == [ShardSpec(0, (1,))]
    assert re.fullmatch(r"1 CPUs? in --cpus", reason), reason


def test_resolve_placement_checks_a_given_placement():
    on_cpus = Placement.on_cpus([0, 1])
    assert resolve_placement(Config(app="m:a"), on_cpus) == (on_cpus, "placement given")
    with pytest.raises(ConfigError, match="7"):
        resolve_placement(Config(app="m:a"), Placement.on_cpus([0, 7]))
    with pytest.raises(ConfigError, match="mode"):
        resolve_placement(Config(app="m:a"), Placement.on_cpus([0], mode="thread"))
    steer = Config(app="m:a", reuseport_steering="cpu")
    assert resolve_placement(steer, on_cpus)[0] is on_cpus
    with pytest.raises(ConfigError, match="reuseport-steering"):
        resolve_placement(steer, Placement.on_cpus([1, 0]))
    with pytest.raises(ConfigError, match="reuseport-steering"):
        resolve_placement(steer, Placement.on_cpus([0, 1], pin=False))


def test_placement_helpers():
    assert Placement.on_cpus([1, 0]).shards == [ShardSpec(0, (1,)), ShardSpec(1, (0,))]
    unpinned = Placement.on_cpus([0, 1], pin=False)
    assert unpinned.shards == [ShardSpec(0, (0, 1)), ShardSpec(1, (0, 1))]
    assert not unpinned.pinned
    every = Placement.every_cpu()
    assert every.pinned and len(every) == len(USABLE)
    assert [spec.cpus for spec in every.shards] == [(cpu,) for cpu in USABLE]


# cgroup CPU quota on fake trees ----------------------------------------------------------


def fake_cgroup(tmp_path: Path, cgroup_lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_lines)
    root = tmp_path / "cgroup"
    root.mkdir()
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return proc, root


V2_CASES = {
    "own-limit": ({"a/b/cpu.max": "150000 100000\n"}, 1.5),
    "parent-limit": ({"a/b/cpu.max": "max 100000\n", "a/cpu.max": "250000 100000\n"}, 2.5),
    "tightest-ancestor-wins": (
        {"a/b/cpu.max": "300000 100000", "a/cpu.max": "50000 100000", "cpu.max": "max 100000"},
        0.5,
    ),
    "child-tighter": ({"a/b/cpu.max": "100000 100000", "a/cpu.max": "400000 100000"}, 1.0),
    "root-limit": ({"cpu.max": "200000 50000"}, 4.0),
    "max-everywhere": ({"a/b/cpu.max": "max 100000", "a/cpu.max": "max 100000"}, None),
    "no-files": ({}, None),
    "garbage-ignored": ({"a/b/cpu.max": "lots\n", "a/cpu.max": "200000 100000"}, 2.0),
    "zero-period-ignored": ({"a/b/cpu.max": "100000 0"}, None),
}


@pytest.mark.parametrize(("files", "expected"), V2_CASES.values(), ids=V2_CASES.keys())
def test_cgroup_v2_limit(tmp_path, files, expected):
    proc, root = fake_cgroup(tmp_path, "0::/a/b\n", files)
    assert cgroup_cpu_limit(proc, root) == expected


V1_LINES = "12:pids:/x\n4:cpu,cpuacct:/x/y\n3:memory:/x\n1:name=systemd:/x\n"
V1_CASES = {
    "combined-mount": (
        {
            "cpu,cpuacct/x/y/cpu.cfs_quota_us": "200000\n",
            "cpu,cpuacct/x/y/cpu.cfs_period_us": "100000\n",
        },
        2.0,
    ),
    "cpu-mount": (
        {"cpu/x/y/cpu.cfs_quota_us": "150000", "cpu/x/y/cpu.cfs_period_us": "100000"},
        1.5,
    ),
    "tightest-ancestor-wins": (
        {
            "cpu,cpuacct/x/y/cpu.cfs_quota_us": "400000",
            "cpu,cpuacct/x/y/cpu.cfs_period_us": "100000",
            "cpu,cpuacct/x/cpu.cfs_quota_us": "50000",
            "cpu,cpuacct/x/cpu.cfs_period_us": "100000",
        },
        0.5,
    ),
    "unlimited": (
        {"cpu,cpuacct/x/y/cpu.cfs_quota_us": "-1", "cpu,cpuacct/x/y/cpu.cfs_period_us": "100000"},
        None,
    ),
    "no-files": ({}, None),
    # A container without a cgroup namespace: its own cgroup is mounted as the root.
    "mounted-at-its-own-cgroup": (
        {"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
        0.5,
    ),
}


@pytest.mark.parametrize(("files", "expected"), V1_CASES.values(), ids=V1_CASES.keys())
def test_cgroup_v1_limit(tmp_path, files, expected):
    proc, root = fake_cgroup(tmp_path, V1_LINES, files)
    assert cgroup_cpu_limit(proc, root) == expected


def test_cgroup_hybrid_takes_the_tighter_of_v1_and_v2(tmp_path):
    lines = "2:cpuacct:/\n1:cpu:/\n0::/svc\n"
    files = {
        "cpu/cpu.cfs_quota_us": "300000",
        "cpu/cpu.cfs_period_us": "100000",
        "svc/cpu.max": "120000 100000",
    }
    proc, root = fake_cgroup(tmp_path, lines, files)
    assert cgroup_cpu_limit(proc, root) == pytest.approx(1.2)


def test_cgroup_cpuacct_alone_is_not_a_quota(tmp_path):
    files = {"cpuacct/cpu.cfs_quota_us": "100000", "cpuacct/cpu.cfs_period_us": "100000"}
    proc, root = fake_cgroup(tmp_path, "3:cpuacct:/\n", files)
    assert cgroup_cpu_limit(proc, root) is None


def test_cgroup_without_proc_file(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "nowhere", tmp_path) is None


@pytest.mark.parametrize(
    ("limit", "cpus", "count", "capped"),
    [
        (None, [0, 1, 2, 3], 4, False),
        (1.5, [0, 1, 2, 3], 2, True),
        (1.5, [0, 1], 2, False),
        (0.5, [0, 1, 2, 3], 1, True),
        (0.01, [0, 1], 1, True),
        (3.0, [0, 1, 2, 3], 3, True),
        (8.0, [0, 1, 2, 3], 4, False),
        (None, [5], 1, False),
    ],
)
def test_auto_shard_count_rounds_a_quota_up(monkeypatch, limit, cpus, count, capped):
    monkeypatch.setattr(placement, "cgroup_cpu_limit", lambda *args, **kwargs: limit)
    got, reason = auto_shard_count(cpus)
    assert got == count, reason
    plural = "s" if len(cpus) != 1 else ""
    assert reason.startswith(f"{len(cpus)} usable CPU{plural}"), reason
    assert ("capped by the cgroup CPU quota of" in reason) == capped, reason
    if capped:
        assert reason.endswith(f"quota of {limit:g}"), reason


def test_auto_shard_count_defaults_to_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(placement, "cgroup_cpu_limit", lambda *args, **kwargs: None)
    assert auto_shard_count() == (len(USABLE), f"{len(USABLE)} usable CPUs")


# /sys topology on fake trees -------------------------------------------------------------


def fake_sys(tmp_path: Path, siblings: dict[int, str], nodes: dict[int, str]) -> Path:
    root = tmp_path / "sys"
    for cpu, text in siblings.items():
        topology = root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(text + "\n")
    for node, text in nodes.items():
        directory = root / "devices" / "system" / "node" / f"node{node}"
        directory.mkdir(parents=True)
        (directory / "cpulist").write_text(text + "\n")
    return root


def test_physical_core_cpus(tmp_path):
    interleaved = fake_sys(tmp_path / "a", {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}, {})
    assert physical_core_cpus([0, 1, 2, 3], interleaved) == [0, 1]
    assert physical_core_cpus([2, 3], interleaved) == [2, 3]
    adjacent = fake_sys(tmp_path / "b", {0: "0-1", 1: "0-1", 2: "2-3", 3: "2-3"}, {})
    assert physical_core_cpus([0, 1, 2, 3], adjacent) == [0, 2]
    assert physical_core_cpus([1, 2, 3], adjacent) == [1, 2]
    # No topology: every CPU counts as a core of its own.
    assert physical_core_cpus([0, 1, 2], tmp_path / "empty") == [0, 1, 2]


def test_placement_physical_cores_on_a_fake_tree(tmp_path):
    smt = fake_sys(tmp_path / "smt", {0: "0-1", 1: "0-1"}, {})
    assert Placement.physical_cores(sys_root=smt).shards == [ShardSpec(0, (0,))]
    separate = fake_sys(tmp_path / "sep", {0: "0,2", 1: "1,3"}, {})
    placed = Placement.physical_cores(sys_root=separate)
    assert placed.shards == [ShardSpec(0, (0,)), ShardSpec(1, (1,))]
    assert placed.pinned


def test_placement_numa_node_on_a_fake_tree(tmp_path):
    root = fake_sys(tmp_path, {}, {0: "0-1", 1: "2-3", 2: "1,3"})
    assert node_cpus(1, root) == [2, 3]
    assert Placement.numa_node(0, sys_root=root).shards == [
        ShardSpec(0, (0,)),
        ShardSpec(1, (1,)),
    ]
    assert Placement.numa_node(2, sys_root=root).shards == [ShardSpec(0, (1,))]
    with pytest.raises(ConfigError, match="no CPU this process may use"):
        Placement.numa_node(1, sys_root=root)
    with pytest.raises(ConfigError, match="no NUMA node 5"):
        Placement.numa_node(5, sys_root=root)


# CPU lists ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3,8", [0, 1, 2, 3, 8]),
        ("0", [0]),
        ("5-5", [5]),
        (" 1 , 3-4 \n", [1, 3, 4]),
        ("3,1", [3, 1]),
        ("0,0,1,0-1", [0, 1]),
        ("0-2,", [0, 1, 2]),
        ("10-12,2", [10, 11, 12, 2]),
    ],
)
def test_parse_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", " ", ",", "x", "3-1", "-1", "1-", "1-x", "0-3-5", "1.5"])
def test_parse_cpu_list_errors(text):
    with pytest.raises(ConfigError):
        parse_cpu_list(text)


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        ([0, 1, 2, 3, 8], "0-3,8"),
        ([0], "0"),
        ([8, 0, 2, 1], "0-2,8"),
        ([1, 3, 5], "1,3,5"),
        ([0, 1, 3, 4, 6], "0-1,3-4,6"),
        ([2, 1, 1, 0], "0-2"),
    ],
)
def test_format_cpu_list(cpus, text):
    assert format_cpu_list(cpus) == text


@pytest.mark.parametrize("text", ["0-3,8", "0", "1,3,5", "0-1,3-4,6", "0-63,128-191"])
def test_cpu_list_round_trip(text):
    cpus = parse_cpu_list(text)
    assert format_cpu_list(cpus) == text
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


def test_inherited_fd_is_shared_by_two_shards():
    """--fd with --shards 2: both shards accept on the one inherited listener."""
    import httpx

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    argv = [sys.executable, "-m", "shardserve", "apps.echo:scope_json"]
    argv += ["--fd", str(listener.fileno()), "--shards", "2"]
    proc = subprocess.Popen(
        argv,
        pass_fds=[listener.fileno()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 15
        attempts = 0
        while len(pids) < 2 and time.monotonic() < deadline and attempts < 200:
            attempts += 1
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/", headers={"connection": "close"}, timeout=5
                )
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            assert response.status_code == 200
            pids.add(response.json()["pid"])
        assert len(pids) == 2, f"only {pids} answered"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        listener.close()
    assert proc.returncode == 0
