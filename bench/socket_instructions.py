"""Instructions per request of a real shardserve process on a real socket, event loop
and transport included (bench/hotpath.py leaves them out): the server runs under
callgrind, serving a fixed number of keep-alive GETs over 64 connections, twice (3 200
and 12 800 requests); the difference, divided by 9 600, is what one request costs in
user space.  Deterministic to a few instructions; kernel time is not counted.

    python bench/socket_instructions.py -- --http python --loop asyncio
    .venv313/bin/python bench/socket_instructions.py -- --shard-mode subinterpreter

The server runs on the Python running this script; the load is a plain-socket client
in this process.  Needs valgrind.  Not a benchmark to quote: the real figure is server
CPU per request under wrk (python -m bench).
"""

from __future__ import annotations

import argparse
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BODY = b"Hello, world!"  # (bench.apps:plaintext's)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def load(port: int, requests: int, connections: int, deadline: float) -> None:
    """``requests`` GETs, one in flight per connection, every connection busy at once."""
    connect(port, deadline).close()  # (the server is up)
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, bytes] = {}
    sent = done = 0
    for _ in range(connections):
        sock = connect(port, deadline)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        pending[sock] = b""
        sock.sendall(REQUEST)
        sent += 1
    try:
        while done < requests:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out after {done} responses")
            for key, _ in selector.select(1):
                sock = key.fileobj
                data = sock.recv(65536)
                if not data:
                    raise SystemExit("the server closed a connection")
                buffer = pending[sock] + data
                while (end := buffer.find(BODY)) >= 0:
                    buffer = buffer[end + len(BODY) :]
                    done += 1
                    if sent < requests:
                        sock.sendall(REQUEST)
                        sent += 1
                pending[sock] = buffer
    finally:
        for sock in pending:
            sock.close()
        selector.close()


def instructions(requests: int, connections: int, server_args: list[str]) -> int:
    port = free_port()
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "shardserve", "bench.apps:plaintext",
        "--port", str(port), "--no-access-log", *server_args,
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        load(port, requests, connections, time.monotonic() + 600)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            output, _ = server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    found = re.search(rb"Collected : (\d+)", output)
    if found is None:
        raise SystemExit(output.decode(errors="replace")[-2000:])
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("server_args", nargs="*", help="shardserve options, after --")
    args = parser.parse_args()
    low = instructions(3200, args.connections, args.server_args)
    high = instructions(12800, args.connections, args.server_args)
    print(f"{' '.join(args.server_args) or '(defaults)'}: {(high - low) // 9600} per request")


if __name__ == "__main__":
    main()
