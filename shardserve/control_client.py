"""`shardserve status | reload | stop | upgrade`: talk to a running coordinator's control socket.

    shardserve status [--control-socket PATH] [--json] [--watch [SECONDS]]
    shardserve reload [--control-socket PATH]
    shardserve stop [--control-socket PATH]
    shardserve upgrade [--control-socket PATH]

`upgrade` waits until the new coordinator serves (or has failed: exit status 1).

Without --control-socket, the one live socket under the runtime directory is used
(coord/control_socket.py says where coordinators create them), once that directory
and the sockets in it are found to be ours alone (check_private_directory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time

from .coord.control_socket import UnsafePath, check_own_socket, check_private_directory, runtime_dir
from .coord.upgrade import EXIT_TIMEOUT, READY_TIMEOUT
from .counters import COUNTS, ERRORS, ROW


class ControlError(Exception):
    """One line for the user."""


def find_socket(path: str | None) -> str:
    if path:
        return path
    directory = runtime_dir()
    candidates = []
    try:
        check_private_directory(directory)
        for candidate in sorted(directory.glob("*.sock")):
            with contextlib.suppress(FileNotFoundError):  # (removed meanwhile)
                check_own_socket(candidate)
                candidates.append(candidate)
    except FileNotFoundError:
        pass  # no server has run here
    except UnsafePath as exc:
        raise ControlError(str(exc)) from None
    alive = [str(c) for c in candidates if _alive(str(c))]
    if not alive:
        raise ControlError(f"no running shardserve found (no live socket in {directory})")
    if len(alive) > 1:
        raise ControlError(
            "several shardserve servers run; pick one: --control-socket " + " | ".join(alive)
        )
    return alive[0]


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def request(path: str, command: str) -> dict:
    with socket.socket(socket.AF_UNIX) as sock:
        # (an upgrade is answered once the new coordinator is ready, or has given up)
        sock.settimeout(READY_TIMEOUT + 2 * EXIT_TIMEOUT + 10 if command == "upgrade" else 10)
        try:
            sock.connect(path)
            sock.sendall(json.dumps({"command": command}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: no answer from the server") from None
    if "error" in reply:
        raise ControlError(reply["error"])
    return reply["result"]


def _cell(value) -> str:
    return "-" if value is None else str(value)


def _figure(value) -> str | None:
    return None if value is None else f"{value:.3g}"


def _mb(value) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _key(name: str):
    return lambda row: row[name]


# (heading, cell): the last 10 seconds' figures, then counts since the server started:
# the counter table's entries with a column heading, and the errors (counters.py).
COLUMNS = [
    ("shard", lambda r: r["index"]),
    ("pid", lambda r: r["pid"]),
    ("mode", lambda r: r["mode"]),
    ("cpus", lambda r: ",".join(map(str, r["cpus"])) if r["cpus"] else None),
    ("state", lambda r: r["state"]),
    ("req/s", lambda r: r["rps_10s"]),
    ("p50 ms", lambda r: _figure(r["p50_ms_10s"])),
    ("p99 ms", lambda r: _figure(r["p99_ms_10s"])),
    ("cpu %", lambda r: r["cpu_percent_10s"]),
    *(
        (count.status, _key(count.name))
        for count in COUNTS
        if count.status not in (None, ROW, ERRORS)
    ),
    ("errors", _key("errors")),
    ("restarts", lambda r: r["restarts"]),
    ("rss MB", lambda r: _mb(r["rss_bytes"])),
    ("uptime s", lambda r: r["uptime_s"]),
]


def render(status: dict) -> str:
    rows = [[_cell(get(row)) for _, get in COLUMNS] for row in status["shards"]]
    widths = [max(len(name), *(len(r[i]) for r in rows)) for i, (name, _) in enumerate(COLUMNS)]
    memory = _mb(status["coordinator_rss_bytes"])
    lines = [
        f"shardserve {status['state']} on {status['where']} (coordinator pid {status['pid']}, "
        f"rss {_cell(memory)} MB), {status['totals']['requests']} requests, "
        f"{status['reloads']} reloads",
        "  ".join(name.rjust(w) for (name, _), w in zip(COLUMNS, widths, strict=True)),
    ]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if any(row["mode"] != "process" for row in status["shards"]):
        lines.append("(subinterpreter shards share the coordinator's memory: see its rss)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"shardserve {argv[0]}", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--control-socket", metavar="PATH")
    if argv[0] == "status":
        parser.add_argument("--json", action="store_true", help="print the raw status as JSON")
        parser.add_argument(
            "--watch",
            nargs="?",
            type=float,
            const=2.0,
            metavar="SECONDS",
            help="refresh until Ctrl+C",
        )
    args = parser.parse_args(argv[1:])
    try:
        path = find_socket(args.control_socket)
        if argv[0] != "status":
            print(json.dumps(request(path, argv[0])))
            return 0
        while True:
            status = request(path, "status")
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                if args.watch:
                    sys.stdout.write("\x1b[H\x1b[2J")
                print(render(status), flush=True)
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except ControlError as exc:
        print(f"shardserve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
