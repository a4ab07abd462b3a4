"""Drive the shard's HTTP pipeline without sockets, to tune the hot path.

Feeds a plaintext GET to 64 ``HttpConnection`` objects with an in-memory transport,
as uvloop would (from a loop callback, outside any task), and lets the app answer.
No kernel time is included, so this measures only shardserve's own Python work.

    python bench/hotpath.py --requests 300000           # microseconds per request
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/hotpath.py --requests 12800        # instructions (deterministic):
    # run twice (e.g. 3200 and 12800 requests) and divide the difference by 9600.

Not a benchmark to quote: the real figure is server CPU per request under wrk
(python -m bench).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.apps import plaintext  # noqa: E402
from shardserve.config import Config  # noqa: E402
from shardserve.shard.http.protocol import HttpConnection  # noqa: E402
from shardserve.shard.loop import new_event_loop  # noqa: E402
from shardserve.shard.state import ShardState  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
CONNECTIONS = 64


class MemoryTransport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 5555) if name == "peername" else ("127.0.0.1", 8000)

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def drive(requests: int, http: str) -> None:
    loop = asyncio.get_running_loop()
    state = ShardState(Config(app="bench.apps:plaintext", http=http), plaintext, loop)
    connections = [HttpConnection(state) for _ in range(CONNECTIONS)]
    for connection in connections:
        connection.connection_made(MemoryTransport())

    def feed_all() -> None:
        for connection in connections:
            connection.data_received(REQUEST)

    started = time.perf_counter()
    for _ in range(requests // CONNECTIONS):
        loop.call_soon(feed_all)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    answered = sum(c.transport.writes for c in connections)
    hosts = len(asyncio.all_tasks()) - 1
    for connection in connections:
        connection.connection_lost(None)
    await asyncio.sleep(0)
    print(
        f"{http}: {elapsed / requests * 1e6:.2f} us/request "
        f"({answered} responses, {hosts} tasks alive at the end)"
    )
    assert answered == requests // CONNECTIONS * CONNECTIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--http", default="httptools")
    parser.add_argument("--loop", default="uvloop")
    args = parser.parse_args()
    loop = new_event_loop(args.loop)
    try:
        loop.run_until_complete(drive(args.requests, args.http))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
