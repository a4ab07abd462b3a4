"""Drive one shard's HTTP/2 pipeline without sockets: where an h2 request's time goes.

An h2 client (the same library) sends plaintext GETs, ``--streams`` per packet, to
one ``H2Connection`` with an in-memory transport.  The client's packets are built
first, so only the server's side runs in the timed part: the ``data_received``
calls, inside which the app runs and answers.  Repeatable under callgrind (run it
with two --requests and subtract, as for bench/hotpath.py).

    python bench/hotpath_h2.py --requests 20000 --streams 10     # microseconds per request
    python bench/hotpath_h2.py --requests 8000 --profile        # share of time, by package

Not a benchmark to quote (no kernel, no TLS): the real figure is server CPU per request
under h2load (python -m bench --workloads h2c-plaintext-m10).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.apps import plaintext  # noqa: E402
from bench.hotpath import MemoryTransport  # noqa: E402
from shardserve.config import Config  # noqa: E402
from shardserve.shard.h2.connection import H2Connection  # noqa: E402
from shardserve.shard.loop import new_event_loop  # noqa: E402
from shardserve.shard.state import ShardState  # noqa: E402

HEADERS = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:8000"),
    (b"user-agent", b"h2load"),
]
WIDE = 2**31 - 1  # the largest window
# (label, a path fragment), first match wins: shardserve's own h2/ folder is not h2's.
PACKAGES = (
    ("shardserve's HPACK codec", "/shardserve/shard/h2/codec.py"),
    ("shardserve's HTTP/2 glue", "/shardserve/shard/h2/"),
    ("shardserve's request cycle etc.", "/shardserve/"),
    ("h2", "/h2/"),
    ("hpack", "/hpack/"),
    ("hyperframe", "/hyperframe/"),
    ("asyncio", "/asyncio/"),
    ("logging", "/logging/"),
)


class CapturingTransport(MemoryTransport):
    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)


async def drive(requests: int, streams: int, profile: cProfile.Profile | None) -> float:
    loop = asyncio.get_running_loop()
    config = Config(app="bench.apps:plaintext", access_log=False)
    state = ShardState(config, plaintext, loop)
    server = H2Connection(state, state.http2, "http")
    transport = CapturingTransport()
    server.connection_made(transport)
    packets = client_packets(requests, streams)
    spent = 0.0

    def timed(data: bytes) -> None:
        nonlocal spent
        if profile is not None:
            profile.enable()
        started = time.perf_counter()
        server.data_received(data)
        spent += time.perf_counter() - started
        if profile is not None:
            profile.disable()

    for data in packets:
        loop.call_soon(timed, data)  # (from a loop callback, as a transport would)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        transport.out.clear()  # (read by nobody: the client's windows are wide open)
    answered = state.counters.h2_requests
    assert answered == requests // streams * streams, answered
    server.connection_lost(None)
    await asyncio.sleep(0)
    return spent / answered


def client_packets(requests: int, streams: int) -> list[bytes]:
    """What an h2 client sends, built before the server runs: so that only the
    server's work is counted (also by callgrind), the client opens its windows wide
    once and never needs to read an answer."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
    )
    client.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WIDE}
    )
    client.initiate_connection()
    client.increment_flow_control_window(WIDE - 65535)
    packets = [client.data_to_send()]
    stream_id = 1
    for _ in range(requests // streams):
        for _ in range(streams):
            client.send_headers(stream_id, HEADERS, end_stream=True)
            del client.streams[stream_id]  # (never answered here: forget it)
            stream_id += 2
        packets.append(client.data_to_send())
    return packets


def by_package(profile: cProfile.Profile) -> dict[str, float]:
    shares: dict[str, float] = {}
    for (filename, _, _), (_, _, own, _, _) in pstats.Stats(profile).stats.items():
        package = next((label for label, part in PACKAGES if part in filename), "other")
        shares[package] = shares.get(package, 0.0) + own
    total = sum(shares.values())
    return {package: own / total for package, own in sorted(shares.items(), key=lambda i: -i[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=10, help="requests per packet")
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument("--profile", action="store_true", help="cProfile, by package")
    args = parser.parse_args()
    profile = cProfile.Profile() if args.profile else None
    loop = new_event_loop(args.loop)
    try:
        seconds = loop.run_until_complete(drive(args.requests, args.streams, profile))
    finally:
        loop.close()
    print(f"h2, {args.streams} streams a packet: {seconds * 1e6:.1f} us/request (server side)")
    if profile is not None:
        for package, share in by_package(profile).items():
            print(f"  {package:32s} {share * 100:5.1f}% of the profiled time")


if __name__ == "__main__":
    main()
