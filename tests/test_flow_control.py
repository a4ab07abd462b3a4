"""Flow control both ways: a big upload to a slow app, a big download to a slow client.

Without read flow control the server would buffer whatever the client sends faster
than the app reads; without write flow control it would buffer whatever the app sends
faster than the client reads.  Either way its memory would grow with the transfer.
These tests push 1 GiB through a server whose resident memory must stay within
``RSS_BOUND_KIB`` of its idle size (sampled every 20 ms while the transfer runs), and
check every byte arrives (count and CRC-32, with each 64 KiB / 1 MiB piece stamped
with its index, so loss, duplication and reordering all show).

Sizes and timings (measured on a 2-core machine, where either direction runs at
~1 GiB/s when nobody holds back): the slow side is paced by bytes, not by calls, to
``SLOW_RATE`` = 100 MiB/s (the app sleeps after each ``receive()``, the client after
each ``recv()``, until its byte count is back within the rate), about a tenth of
what the fast side can push.  A fixed sleep per call would not do: a server without
flow control would hand the app ever bigger chunks and the app would keep up.  1 GiB
then takes ~10 s per test, well under 30 s, and a server without flow control would
have to hold ~90% of it (a mutation run with pause_reading/pause_writing disabled
peaked at ~1 GiB).  The httpx variants move 256 MiB, four times the bound.
"""

from __future__ import annotations

import time
import zlib

import httpx

from apps.flow import pattern_chunk
from serving import RssMonitor, connect

APP = "apps.flow:app"
GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024
# Memory the server may grow by above its idle size while the transfer runs.
RSS_BOUND_KIB = 60 * 1024
# How fast the slow side consumes, in bytes per second (see the module docstring).
SLOW_RATE = 100 * MIB
# Overall limit for one transfer, far above the ~10 s one takes.
DEADLINE = 60.0


class Pacer:
    """Hold a consumer to ``rate`` bytes per second, however big its pieces are."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.done = 0

    def consumed(self, count: int) -> None:
        self.done += count
        ahead = self.started + self.done / self.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


def start_server(serve, backend):
    server = serve(APP, "--http", backend, "--no-access-log")
    # Warm up (first request imports and allocates what every later one reuses),
    # so that "idle" RSS is that of a server that has served.
    warm = httpx.get(server.url + "/download?size=1000", timeout=5)
    assert warm.status_code == 200
    assert len(warm.content) == 1000
    return server


def read_head(sock, deadline: float) -> tuple[bytes, bytes]:
    """(response head, the body bytes that came with it)."""
    data = b""
    for _ in range(1000):
        if b"\r\n\r\n" in data:
            break
        assert time.monotonic() < deadline, "no response head before the deadline"
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the response head: {data!r}"
        data += chunk
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep
    return head, rest


def header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


# Upload ------------------------------------------------------------------------------


def test_big_upload_to_slow_app_keeps_memory_flat(serve, backend):
    """1 GiB with Content-Length from a raw socket as fast as it goes, to an app that
    reads at SLOW_RATE.  The app must count every byte, and RSS stay flat."""
    server = start_server(serve, backend)
    size = GIB
    block = MIB
    crc = 0
    started = time.monotonic()
    deadline = started + DEADLINE
    with RssMonitor(server, RSS_BOUND_KIB) as rss, connect(server, timeout=30) as sock:
        sock.sendall(
            b"POST /upload?rate=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (SLOW_RATE, size)
        )
        for index in range(size // block):
            assert time.monotonic() < deadline, f"upload stalled after {index} MiB"
            data = pattern_chunk(index, block)
            crc = zlib.crc32(data, crc)
            sock.sendall(data)
        head, body = read_head(sock, deadline)
        for _ in range(100):
            if not (chunk := sock.recv(65536)):
                break
            body += chunk
    elapsed = time.monotonic() - started
    assert head.startswith(b"HTTP/1.1 200 "), head
    result = httpx.Response(200, content=body).json()
    assert result["bytes"] == size
    assert result["crc"] == crc
    rss.check(f"{size // MIB} MiB passing through")
    # The app was handed the body in pieces no bigger than what the server may
    # buffer: with no read flow control it would get tens of MiB at a time.
    assert result["max_chunk"] <= 16 * MIB, result
    assert elapsed < DEADLINE


def test_chunked_upload_from_httpx_keeps_memory_flat(serve, backend):
    """256 MiB streamed by httpx from a generator (Transfer-Encoding: chunked)."""
    server = start_server(serve, backend)
    blocks = 256
    crc = 0

    def body():
        nonlocal crc
        for index in range(blocks):
            data = pattern_chunk(index, MIB)
            crc = zlib.crc32(data, crc)
            yield data

    with RssMonitor(server, RSS_BOUND_KIB) as rss:
        response = httpx.post(
            server.url + f"/upload?rate={SLOW_RATE}", content=body(), timeout=DEADLINE
        )
    assert response.status_code == 200
    assert response.request.headers["transfer-encoding"] == "chunked"
    result = response.json()
    assert result["bytes"] == blocks * MIB
    assert result["crc"] == crc
    rss.check(f"{blocks} MiB passing through")
    assert result["max_chunk"] <= 16 * MIB, result


# Download ----------------------------------------------------------------------------


def expected_download(size: int, chunk: int) -> int:
    crc = 0
    for index in range(size // chunk):
        crc = zlib.crc32(pattern_chunk(index, chunk), crc)
    return crc


def test_big_download_to_slow_client_keeps_memory_flat(serve, backend):
    """The app streams 1 GiB in 64 KiB messages as fast as send() lets it; the client
    reads 256 KiB at a time, paced to SLOW_RATE.  RSS must stay flat (the app's
    send() has to wait for the socket) and every byte arrive, in order."""
    server = start_server(serve, backend)
    size = GIB
    chunk = 64 * 1024
    expected_crc = expected_download(size, chunk)
    started = time.monotonic()
    deadline = started + DEADLINE
    received = 0
    crc = 0
    with RssMonitor(server, RSS_BOUND_KIB) as rss, connect(server, timeout=30) as sock:
        sock.sendall(
            b"GET /download?size=%d&chunk=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n" % (size, chunk)
        )
        head, data = read_head(sock, deadline)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert header(head, "content-length") == str(size)
        received, crc = len(data), zlib.crc32(data)
        pacer = Pacer(SLOW_RATE)
        for _ in range(size // 4096 + 10):  # recv returns at least ~4 KiB per call here
            assert time.monotonic() < deadline, f"download stalled at {received} bytes"
            data = sock.recv(256 * 1024)
            if not data:
                break
            received += len(data)
            crc = zlib.crc32(data, crc)
            pacer.consumed(len(data))
    assert received == size
    assert crc == expected_crc
    rss.check(f"{size // MIB} MiB passing through")


def test_streamed_download_with_httpx_keeps_memory_flat(serve, backend):
    """256 MiB read through httpx's streaming API, slowly."""
    server = start_server(serve, backend)
    size = 256 * MIB
    chunk = 64 * 1024
    expected_crc = expected_download(size, chunk)
    deadline = time.monotonic() + DEADLINE
    received = crc = 0
    with (
        RssMonitor(server, RSS_BOUND_KIB) as rss,
        httpx.stream(
            "GET", server.url + f"/download?size={size}&chunk={chunk}", timeout=30
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-length"] == str(size)
        pacer = Pacer(SLOW_RATE)
        for data in response.iter_raw(256 * 1024):
            assert time.monotonic() < deadline, f"download stalled at {received} bytes"
            received += len(data)
            crc = zlib.crc32(data, crc)
            pacer.consumed(len(data))
    assert received == size
    assert crc == expected_crc
    rss.check(f"{size // MIB} MiB passing through")
