"""Run the Autobahn|Testsuite fuzzing client against shardserve's WebSocket server.

Usage::

    python tests/autobahn/run_autobahn.py [--cases 1.*,2.*,...] [--keep]
    python tests/autobahn/run_autobahn.py --against uvicorn      # check the runner itself
    python tests/autobahn/run_autobahn.py --install-only         # just prepare wstest

Steps, each with a deadline:

1. Find Python 2.7 (Autobahn|Testsuite is Python 2 only): ``--python2``, else
   ``$(pyenv root)/versions/2.7.*/bin/python2.7`` when pyenv exists, else ``python2.7`` on
   PATH. Create or reuse a virtualenv for the suite in ``.autobahn-venv/`` at the repo root
   (git-ignored) and install the pinned ``autobahntestsuite`` there if it is not there yet.
   ``virtualenv<20.22`` comes from the Python 2.7 if it has it, else it is installed into a
   temporary directory, so that interpreter is left unchanged.
2. Start the server: by default ``python -m shardserve echo:app --app-dir tests/autobahn
   --shards 2`` on 127.0.0.1 and a free port, ``--ws websockets --ws-max-size 32 MiB
   --no-access-log`` (the repo's ``.venv/bin/python`` if present, else this interpreter);
   ``--against uvicorn`` serves the same app with uvicorn (from ``.bench-venv/``);
   ``--server-cmd 'CMD ... {port}'`` runs any other server. Before the suite, one WebSocket
   handshake checks that the server upgrades at all (and shows the extension it agreed).
3. Write the fuzzingclient spec and run ``wstest -m fuzzingclient -s spec.json``; it is
   killed if it runs past ``--timeout``.
4. Stop the server (SIGINT, then SIGKILL of its process group), always.
5. Read ``index.json``, print the count per behavior and every case that did not pass
   (description and the report's result), and exit 1 if any case did not pass (OK,
   NON-STRICT and INFORMATIONAL pass; FAILED, UNIMPLEMENTED, anything else does not), the
   server crashed (it exited early, or logged a traceback, an ASGI app exception or a shard
   restart), did not stop within 20 s of SIGINT, or the report is missing. Exit 2 means a
   prerequisite is missing (one line says which).

Default cases (427): ``1.*`` to ``10.*``, all 301; and a subset of the compression
groups 12 and 13 (permessage-deflate, 1000 echoed messages a case). Sub-case n of every
group sends the same sizes: 1-9 are 16 B to 64 KiB unfragmented, 10 is 128 KiB, 11-18 are
8-128 KiB auto-fragmented into 256 B-32 KiB frames. 12.1-12.5 vary the data (JSON text,
bitmap, German text sent as binary, HTML text, PDF) under the default offer; 13.1-13.7 vary
the offer on JSON data (default; server_no_context_takeover; server_max_window_bits 9; 15;
both, with 9; both, with 15; three offers to choose from). Taken: sub-cases 1-9 of every
group, and all of 12.1 and 13.2 (fragmented compressed messages, with and without context
takeover). Measured on this 2-CPU machine against uvicorn (12.x/13.x seconds, sub-cases
1-9 / 10-18): 12.1 7/27, 12.2 12/81, 12.3 20/127, 12.4 11/36, 12.5 9/60, 13.1 7/26,
13.2 7/26, 13.3 10/44, 13.4 7/24, 13.5 10/41, 13.6 7/27, 13.7 10/50; all of 12 and 13
took 688 s. Cases 1-10 take 17 s (9.x: 8 s). The default set took 192 s of wstest against
shardserve --shards 2 and 190 s against uvicorn (the single-threaded Python 2 client is the
bottleneck), under the 5-minute budget; the 420 s default --timeout leaves room. The rest:
``--cases 12.*,13.* --timeout 1200``.

Reports: ``.autobahn-reports/<agent>/`` (git-ignored), replaced on each run; with ``--keep``
each run goes to a new ``.autobahn-reports/<agent>-<time>/`` and earlier ones stay. Each
holds ``spec.json``, ``wstest.log``, ``server.log`` and the suite's ``index.json``/
``index.html`` with one JSON and HTML file per case.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = ROOT / ".autobahn-venv"
REPORTS = ROOT / ".autobahn-reports"

# Cases 1-10: all. Compression (12.x, 13.x; 1000 messages a case): sub-cases 1-9 (16 B to
# 64 KiB messages, unfragmented) of every group, and 10-18 (128 KiB; 8 KiB-128 KiB
# messages auto-fragmented into 256 B-32 KiB frames) of 12.1 and 13.2 only: sub-cases 10-18
# are 75-85% of the groups' time (see the module docstring). Patterns with a '*' are
# prefix regexes to wstest ('12.1.1*' would also take 12.1.10-18), so these are listed.
DEFAULT_CASES = (
    [f"{n}.*" for n in range(1, 11)]
    + ["12.1.*"]
    + [f"12.{g}.{i}" for g in range(2, 6) for i in range(1, 10)]
    + [f"13.1.{i}" for i in range(1, 10)]
    + ["13.2.*"]
    + [f"13.{g}.{i}" for g in range(3, 8) for i in range(1, 10)]
)
# Cases left out of every run, each with its reason. None so far: every case in
# DEFAULT_CASES is expected to pass.
EXCLUDE_CASES: list[str] = []

WS_MAX_SIZE = 32 * 1024 * 1024  # 9.1.6/9.2.6 send 16 MiB messages
PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")

VIRTUALENV_REQ = "virtualenv<20.22"
PINS = [
    "setuptools==44.1.1",
    "txaio==2.1.0",
    "incremental==16.10.1",
    "pyOpenSSL==19.1.0",
    "cryptography==3.3.2",
    "Twisted==19.10.0",
    "zope.interface==4.6.0",
    "jinja2==2.11.3",
    "markupsafe==1.1.1",
    "Werkzeug==1.0.1",
    "klein==17.10.0",
    "service_identity==18.1.0",
    "unittest2==1.1.0",
    "six==1.16.0",
    "autobahn[twisted,accelerate]==0.10.9",
]
SUITE = "autobahntestsuite==25.10.1"  # installed with --no-deps

# websockets >= 17.4 fails a message of 4096 fragments or more with 1009 "too many
# fragments" (a DoS limit, read from this variable in its asyncio, sync and legacy
# layers). 9.3.1-9.3.3 and 9.4.1-9.4.3 send 4 MiB in 64 B-1 KiB fragments (up to 65536),
# so, like --ws-max-size for 9.x's 16 MiB messages, the limit is raised for the run.
SERVER_ENV = {"WEBSOCKETS_MAX_FRAGMENTS": str(65536 + 1)}

SERVER_READY_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 20.0
SHARDSERVE_READY = re.compile(r"shardserve running on http://127\.0\.0\.1:(\d+) \(")
TRACEBACK = "Traceback (most recent call last):"
SERVER_PROBLEMS = re.compile(
    r"Exception in ASGI application|exited unexpectedly|Shard \d+ failed|did not stop in time"
)


class Prerequisite(Exception):
    """Something the run needs is missing: one line, exit status 2."""


class RunError(Exception):
    """The run could not complete: one line, exit status 1."""


def say(message: str) -> None:
    print(f"[autobahn] {message}", flush=True)


# Subprocesses with deadlines -----------------------------------------------------------


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (started with ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_bounded(
    argv: list[str], timeout: float, log: Path | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run ``argv`` in its own process group; kill the group past ``timeout``.

    Returns the exit status and the output (also appended to ``log`` when given).
    """
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait(10)
            raise RunError(f"{shlex.join(argv)} ran past its {timeout:.0f} s deadline") from None
        finally:
            kill_group(proc)  # anything it left behind
        out.seek(0)
        text = out.read()
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {shlex.join(argv)}\n{text}\n")
    return proc.returncode, text


def py2_env() -> dict[str, str]:
    """This environment, minus what would point Python 2 at Python 3 packages."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    return env


# Step 1: Python 2.7 and the suite's virtualenv ------------------------------------------


def find_python2(explicit: str | None) -> Path:
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise Prerequisite(f"--python2 {explicit}: not an executable file")
        return path
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            root = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            root = ""
        if root:

            def version_key(p: Path) -> tuple[int, ...]:
                return tuple(int(x) if x.isdigit() else -1 for x in p.name.split("."))

            versions = sorted(Path(root, "versions").glob("2.7*"), key=version_key)
            for version in reversed(versions):  # newest 2.7 first
                candidate = version / "bin" / "python2.7"
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return candidate
    found = shutil.which("python2.7")
    if found:
        return Path(found)
    raise Prerequisite(
        "Python 2.7 not found (no pyenv with a 2.7 version, no python2.7 on PATH); "
        "Autobahn|Testsuite needs it: install one (e.g. `pyenv install 2.7.18`) "
        "or pass --python2 PATH"
    )


def pins_stamp(python2: Path) -> str:
    spec = "\n".join([str(python2), VIRTUALENV_REQ, *PINS, SUITE])
    return hashlib.sha256(spec.encode()).hexdigest()


def ensure_suite(python2: Path, venv: Path, timeout: float) -> Path:
    """Return the ``wstest`` of ``venv``, creating the virtualenv and installing if needed."""
    wstest = venv / "bin" / "wstest"
    stamp_file = venv / ".shardserve-pins"
    stamp = pins_stamp(python2)
    if wstest.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return wstest

    started = time.monotonic()
    env = py2_env()
    venv.mkdir(parents=True, exist_ok=True)
    log = venv / "install.log"
    log.write_text("")
    say(f"installing Autobahn|Testsuite into {venv} with {python2} (a few minutes; log: {log})")

    def step(argv: list[str], what: str, step_env: dict[str, str] = env) -> None:
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            raise RunError(f"installing the suite ran past its {timeout:.0f} s deadline")
        rc, out = run_bounded(argv, remaining, log, step_env)
        if rc != 0:
            tail = " | ".join(out.strip().splitlines()[-3:])
            raise RunError(
                f"{what} failed (exit {rc}; see {log}; removing {venv} starts afresh): {tail}"
            )

    venv_python = venv / "bin" / "python"
    if not venv_python.is_file():
        with tempfile.TemporaryDirectory(prefix="autobahn-bootstrap-") as boot:
            boot_env = dict(env)
            rc, _ = run_bounded([str(python2), "-c", "import virtualenv"], 60, log, env)
            if rc != 0:  # not in that Python: bring one along without installing into it
                step(
                    [str(python2), "-m", "pip", "install", "--target", boot, VIRTUALENV_REQ],
                    "installing virtualenv",
                )
                boot_env["PYTHONPATH"] = boot
            step(
                [str(python2), "-m", "virtualenv", "--python", str(python2), str(venv)],
                "creating the virtualenv",
                boot_env,
            )
    pip = [str(venv_python), "-m", "pip", "install"]
    step([*pip, *PINS], "installing the pinned dependencies")
    step([*pip, "--no-deps", SUITE], "installing autobahntestsuite")
    rc, out = run_bounded([str(wstest), "--help"], 120, log, env)
    if rc != 0 or "fuzzingclient" not in out:
        tail = " | ".join(out.strip().splitlines()[-3:])
        raise RunError(f"the installed wstest does not run (exit {rc}; see {log}): {tail}")
    stamp_file.write_text(stamp)
    say(f"installed in {time.monotonic() - started:.1f} s; `wstest --help` runs")
    return wstest


# Step 2: the server ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def repo_python(venv_dir: str, modules: str) -> str:
    """``ROOT/venv_dir/bin/python`` if present, else this interpreter; it must import them."""
    candidate = ROOT / venv_dir / "bin" / "python"
    python = str(candidate) if candidate.is_file() else sys.executable
    try:
        proc = subprocess.run(
            [python, "-c", f"import {modules}"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        raise Prerequisite(f"{python} -c 'import {modules}' did not finish in 60 s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise Prerequisite(f"{python} cannot import {modules}: {last}")
    return python


@dataclass
class ServerSpec:
    agent: str
    argv: list[str]
    port: int | None  # None: read it from shardserve's "running on" line
    env: dict[str, str] = field(default_factory=dict)


def shardserve_spec(shards: int) -> ServerSpec:
    python = repo_python(".venv", "shardserve, websockets")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        help_text = subprocess.run(
            [python, "-m", "shardserve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
            cwd=ROOT,
        ).stdout
    except subprocess.TimeoutExpired:
        raise Prerequisite(f"{python} -m shardserve --help did not finish in 60 s") from None
    if "--ws-max-size" not in help_text:
        raise Prerequisite(
            "this shardserve has no --ws-max-size option: its WebSocket support "
            "(shardserve/shard/ws/) has not landed yet; check the runner with --against uvicorn"
        )
    argv = [
        python,
        "-m",
        "shardserve",
        "echo:app",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--shards",
        str(shards),
        "--ws",
        "websockets",
        "--ws-max-size",
        str(WS_MAX_SIZE),
        "--no-access-log",
        "--log-level",
        "info",
    ]
    return ServerSpec("shardserve", argv, None, env)


def uvicorn_spec() -> ServerSpec:
    python = repo_python(".bench-venv", "uvicorn, websockets")
    port = free_port()
    argv = [
        python,
        "-m",
        "uvicorn",
        "echo:app",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ws",
        "websockets",
        "--ws-max-size",
        str(WS_MAX_SIZE),
        "--no-access-log",
    ]
    return ServerSpec("uvicorn", argv, port)


def custom_spec(template: str, agent: str) -> ServerSpec:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", agent):
        raise Prerequisite(f"--agent {agent!r}: use letters, digits, '.', '_' and '-'")
    if "{port}" not in template:
        raise Prerequisite("--server-cmd must contain {port} (where the server should listen)")
    port = free_port()
    return ServerSpec(agent, shlex.split(template.replace("{port}", str(port))), port)


class Server:
    """A server process in its own process group, output to a log file."""

    def __init__(self, spec: ServerSpec, log: Path) -> None:
        self.spec = spec
        self.log = log
        self.port = spec.port
        self.stop_problem: str | None = None
        self.exited_early: int | None = None
        self._out = log.open("w")
        env = {**os.environ, **SERVER_ENV, **spec.env, "PYTHONUNBUFFERED": "1"}
        try:
            self.proc = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        except OSError as exc:
            self._out.close()
            raise Prerequisite(f"cannot start the server ({spec.argv[0]}): {exc}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join("    " + line for line in self.output().splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RunError(
                    f"the server exited ({self.proc.returncode}) before it was ready; "
                    f"its output:\n{self.tail()}"
                )
            if self.port is None:
                match = SHARDSERVE_READY.search(self.output())
                if match:
                    self.port = int(match.group(1))
            if self.port is not None:
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
            if time.monotonic() > deadline:
                raise RunError(
                    f"the server was not ready within {timeout:.0f} s; its output:\n{self.tail()}"
                )
            time.sleep(0.1)

    def check_alive(self) -> None:
        if self.exited_early is None and self.proc.poll() is not None:
            self.exited_early = self.proc.returncode

    def stop(self) -> None:
        """SIGINT, then SIGKILL of the whole group; never raises."""
        self.check_alive()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(SERVER_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.stop_problem = (
                        f"the server did not stop within {SERVER_STOP_TIMEOUT:.0f} s of "
                        "SIGINT; killed"
                    )
                    kill_group(self.proc)
                    self.proc.wait(10)
        finally:
            kill_group(self.proc)  # shards or workers it may have left
            self._out.close()


def websocket_precheck(port: int, timeout: float = 10.0) -> str:
    """One handshake (offering permessage-deflate), then a clean close.

    Returns the Sec-WebSocket-Extensions the server agreed to ('' for none); raises
    RunError when the server does not answer 101.
    """
    request = (
        "GET / HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        "\r\n"
    ).encode()
    try:
        return _handshake(port, request, timeout)
    except OSError as exc:
        raise RunError(f"WebSocket handshake with 127.0.0.1:{port} failed: {exc}") from None


def _handshake(port: int, request: bytes, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                chunk = b""
            if not chunk:
                break
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if not re.match(r"HTTP/1\.1 101\b", status):
            raise RunError(
                f"the server answered a WebSocket upgrade with {status or 'nothing'!r}, "
                "not '101 Switching Protocols': no WebSocket support?"
            )
        extensions = ""
        for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                extensions = value.strip()
        # Close frame, code 1000, masked with a zero key (valid, and simple).
        sock.sendall(bytes([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]))
        with contextlib.suppress(OSError):
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.recv(4096)
    return extensions


def log_problems(text: str) -> list[str]:
    """What in a server log says it crashed or failed: one entry per traceback or line.

    A traceback is named by the line logged before it and the exception it ends with (the
    last of a chain).
    """
    lines = text.splitlines()
    problems = []
    consumed: set[int] = set()
    i = 0
    while i < len(lines):
        if not lines[i].startswith(TRACEBACK):
            i += 1
            continue
        before = lines[i - 1].strip() if i and not lines[i - 1].startswith(" ") else ""
        if before:
            consumed.add(i - 1)
        exc = "(no exception line)"
        j = i + 1
        while j < len(lines):
            line = lines[j]
            j += 1
            if not line.strip() or line.startswith((" ", "\t", TRACEBACK)):
                continue
            if line.startswith(("During handling of the above", "The above exception")):
                continue  # a chained exception follows
            exc = line.strip()
            k = j
            while k < len(lines) and not lines[k].strip():
                k += 1
            if k < len(lines) and lines[k].startswith(
                ("During handling of the above", "The above exception")
            ):
                continue
            break
        problems.append(f"traceback in server log: {before + ' -> ' if before else ''}{exc}")
        i = j
    for n, line in enumerate(lines):
        if n not in consumed and SERVER_PROBLEMS.search(line):
            problems.append(f"server log: {line.strip()}")
    return problems


# Step 3: the suite ---------------------------------------------------------------------


def write_spec(path: Path, agent: str, port: int, outdir: Path, cases: list[str]) -> None:
    spec = {
        "options": {"failByDrop": False},
        "outdir": str(outdir),
        "servers": [{"agent": agent, "url": f"ws://127.0.0.1:{port}"}],
        "cases": cases,
        "exclude-cases": EXCLUDE_CASES,
        "exclude-agent-cases": {},
    }
    path.write_text(json.dumps(spec, indent=2) + "\n")


def run_wstest(wstest: Path, spec: Path, log: Path, timeout: float, server: Server) -> None:
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(wstest), "-m", "fuzzingclient", "-s", str(spec)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=py2_env(),
            cwd=spec.parent,
            start_new_session=True,
        )
        try:
            next_note = started + 30
            while proc.poll() is None:
                now = time.monotonic()
                if now - started > timeout:
                    kill_group(proc)
                    proc.wait(10)
                    raise RunError(
                        f"wstest ran past its {timeout:.0f} s deadline (--timeout); killed"
                    )
                if now >= next_note:
                    done = log.read_text(errors="replace").count("Running test case ID")
                    say(f"... {now - started:.0f} s, {done} cases started")
                    next_note += 30
                server.check_alive()
                time.sleep(0.2)
        finally:
            kill_group(proc)
    if proc.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise RunError(f"wstest exited with {proc.returncode} (see {log}): {tail}")


# Step 5: the report --------------------------------------------------------------------


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in case_id.split("."))


def plain(text: object, limit: int = 400) -> str:
    flat = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", str(text))).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def summarize(outdir: Path, agent: str) -> tuple[int, list[str]]:
    """Print the summary; return the number of cases and the ids of those not passing."""
    index_file = outdir / "index.json"
    if not index_file.is_file():
        raise RunError(f"no report: {index_file} is missing")
    index = json.loads(index_file.read_text())
    results = index.get(agent)
    if not results:
        raise RunError(f"no results for agent {agent!r} in {index_file}")
    counts: dict[str, int] = {}
    bad = []
    for case_id in sorted(results, key=case_key):
        behavior = results[case_id].get("behavior", "?")
        counts[behavior] = counts.get(behavior, 0) + 1
        if behavior not in PASSING:
            bad.append(case_id)
    say(f"{len(results)} cases, by behavior:")
    for behavior in [*PASSING, *sorted(set(counts) - set(PASSING))]:
        if behavior in counts:
            print(f"    {behavior:<15} {counts[behavior]:>4}")
    if bad:
        say(f"{len(bad)} cases did not pass:")
    for case_id in bad:
        entry = results[case_id]
        detail: dict = {}
        report = entry.get("reportfile")
        if report and (outdir / report).is_file():
            with contextlib.suppress(ValueError, OSError):
                detail = json.loads((outdir / report).read_text())
        print(
            f"  {case_id}  {entry.get('behavior')} (close: {entry.get('behaviorClose')}, "
            f"remote close code: {entry.get('remoteCloseCode')})"
        )
        print(f"      description: {plain(detail.get('description', '?'))}")
        print(f"      expectation: {plain(detail.get('expectation', '?'))}")
        print(f"      result:      {plain(detail.get('result', '?'))}")
        if detail.get("resultClose"):
            print(f"      close:       {plain(detail['resultClose'])}")
    return len(results), bad


# Main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run Autobahn|Testsuite's fuzzingclient against shardserve (or another "
        "server) serving tests/autobahn/echo.py.",
    )
    parser.add_argument(
        "--cases",
        help="comma-separated case ids or patterns ('9.*'; default: the set in the "
        "module docstring)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="write the report to a new timestamped directory, keeping earlier reports "
        "(default: replace .autobahn-reports/<agent>/)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--against",
        choices=["shardserve", "uvicorn"],
        default="shardserve",
        help="server to test (default: %(default)s; uvicorn comes from .bench-venv/)",
    )
    target.add_argument(
        "--server-cmd",
        metavar="CMD",
        help="any other server command serving the echo app on 127.0.0.1:{port}",
    )
    parser.add_argument("--agent", default="custom", help="agent name for --server-cmd")
    parser.add_argument("--shards", type=int, default=2, help="shardserve --shards (default 2)")
    parser.add_argument(
        "--timeout", type=float, default=420, help="wstest deadline in seconds (default 420)"
    )
    parser.add_argument(
        "--install-timeout",
        type=float,
        default=900,
        help="deadline for installing the suite, in seconds (default 900)",
    )
    parser.add_argument("--python2", help="the Python 2.7 to install the suite with")
    parser.add_argument("--venv", type=Path, default=VENV, help="the suite's virtualenv")
    parser.add_argument(
        "--install-only",
        action="store_true",
        help="create/check the suite's virtualenv and exit",
    )
    return parser.parse_args(argv)


def on_sigterm(signum: int, frame: object) -> None:
    """A SIGTERM (e.g. a cancelled CI job) unwinds like Ctrl-C, so the server is stopped."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # and a second one does not cut that short
    print("error: terminated (SIGTERM); stopping the server", file=sys.stderr)
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Prerequisite as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        say(f"total {time.monotonic() - started:.1f} s")


def run(args: argparse.Namespace) -> int:
    python2 = find_python2(args.python2)
    wstest = ensure_suite(python2, args.venv.resolve(), args.install_timeout)
    if args.install_only:
        say(f"wstest ready: {wstest}")
        return 0

    if args.server_cmd:
        spec = custom_spec(args.server_cmd, args.agent)
    elif args.against == "uvicorn":
        spec = uvicorn_spec()
    else:
        if args.shards < 1:
            raise Prerequisite("--shards must be at least 1")
        spec = shardserve_spec(args.shards)
    if args.cases is None:
        cases, what = DEFAULT_CASES, "the default set"
    else:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        what = ",".join(cases)
        if not cases:
            raise Prerequisite("--cases is empty")

    name = spec.agent + (time.strftime("-%Y%m%d-%H%M%S") if args.keep else "")
    workdir = REPORTS / name
    if workdir.exists():
        shutil.rmtree(workdir)
    outdir = workdir / "report"
    outdir.mkdir(parents=True)

    problems: list[str] = []
    suite_error: RunError | None = None
    server = Server(spec, workdir / "server.log")
    try:
        server.wait_ready(SERVER_READY_TIMEOUT)
        say(f"{spec.agent} ready on 127.0.0.1:{server.port}: {shlex.join(spec.argv)}")
        extensions = websocket_precheck(server.port)
        say(f"handshake OK; extensions agreed: {extensions or 'none'}")
        spec_file = workdir / "spec.json"
        write_spec(spec_file, spec.agent, server.port, outdir, cases)
        say(f"wstest -m fuzzingclient, cases: {what} (deadline {args.timeout:.0f} s)")
        suite_started = time.monotonic()
        run_wstest(wstest, spec_file, workdir / "wstest.log", args.timeout, server)
        say(f"wstest finished in {time.monotonic() - suite_started:.1f} s")
    except RunError as exc:
        suite_error = exc
    finally:
        server.stop()
        if server.exited_early is not None:
            problems.append(f"the server exited ({server.exited_early}) during the run")
        if server.stop_problem:
            problems.append(server.stop_problem)
        problems += log_problems(server.output())

    for problem, count in Counter(problems).most_common(10):
        say(f"PROBLEM: {problem}" + (f" ({count} times)" if count > 1 else ""))
    if len(set(problems)) > 10:
        say(f"... and {len(set(problems)) - 10} other kinds of server problems")
    if problems:
        say(f"server log: {server.log}")
    if suite_error is not None:
        raise suite_error

    total, bad = summarize(outdir, spec.agent)
    say(f"report: {outdir / 'index.html'}")
    if bad or problems:
        say(f"FAIL: {len(bad)} of {total} cases did not pass; {len(problems)} server problems")
        return 1
    say(f"PASS: all {total} cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
