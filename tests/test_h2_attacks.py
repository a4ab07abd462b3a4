"""HTTP/2 attacks (issue 16), each made by hand with the raw client (tests/h2client.py)
against a real server on loopback, each bounded by a frame count and a deadline.

Every test asserts how the attack is answered (GOAWAY ENHANCE_YOUR_CALM, a refused
or reset stream, a close), that the shard's memory stayed bounded where it could have
grown (its RSS read from /proc while the attack runs), and that the shard still serves
a normal client afterwards, on a connection opened before the attack and a new one.

- Rapid reset (CVE-2023-44487): streams opened and reset in a loop.
- "MadeYouReset": the server's own resets (malformed or refused streams) count too.
- Floods of PING, SETTINGS, WINDOW_UPDATE, PRIORITY and empty DATA frames.
- CONTINUATION flood: a header block that never ends, in big frames or empty ones.
- HPACK bomb: a small header block that decodes past --h2-max-header-list-size.
- Slow readers: PINGs sent by a client that never reads; a response into a window
  opened wide that is never read; a window kept shut (--timeout-send).
"""

from __future__ import annotations

import select
import time

import h2.exceptions
import httpx
import pytest
from h2client import (
    ENHANCE_YOUR_CALM,
    ContinuationFrame,
    DataFrame,
    H2Client,
    PingFrame,
    PriorityFrame,
    SettingCodes,
    SettingsFrame,
    WindowUpdateFrame,
    padding_block,
)

from serving import RssMonitor

APP = "apps.h2apps:app"
MIB = 1024 * 1024
# How much a shard's RSS may grow while an attack runs.
RSS_BOUND_KIB = 40 * 1024


def start(serve, *args: str):
    server = serve(APP, "--no-access-log", *args)
    with client(server) as c:  # warm up: what every later request reuses is allocated
        assert c.get("/").status == 200
        assert c.get("/big?n=100000").status == 200
    return server


def client(server, **kwargs) -> H2Client:
    c = H2Client.to(server, **kwargs)
    c.handshake()
    return c


def still_serves(server, bystander: H2Client | None = None) -> None:
    """A connection opened before the attack, a new h2 one and HTTP/1.1 are all served."""
    if bystander is not None:
        response = bystander.get("/", timeout=5)
        assert response.status == 200 and response.body == b"ok", bystander.describe()
        assert not bystander.goaways, bystander.describe()
    with client(server) as c:
        response = c.get("/echo", method="POST", body=b"still here")
        assert response.status == 200 and response.body == b"still here", response
    assert httpx.get(server.url + "/", timeout=5).text == "ok"


def synced(c: H2Client, deadline: float) -> None:
    """Write what is queued and a PING, and wait for its ACK: the server has read
    everything before it (so batches reach it one by one, not piled up)."""
    target = c.ping_acks + 1
    c.ping()
    c.run(lambda: c.ping_acks >= target or bool(c.goaways), deadline)


def assert_calmed(c: H2Client) -> None:
    assert c.goaways, f"no GOAWAY: {c.describe()}"
    assert c.goaways[-1].error_code == ENHANCE_YOUR_CALM, c.describe()
    assert c.wait_closed(5), f"not closed after GOAWAY: {c.describe()}"


# Rapid reset and the server's own resets ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/hold?s=0.5",
    ],
    ids=["quick-app", "slow-app"],
)
def test_rapid_reset_gets_goaway_enhance_your_calm(serve, path):
    """Streams opened and reset at once, 40 to a write.  With a slow app the reset
    streams' apps are still running, so the streams beyond the concurrency limit are
    refused as well: those refusals spend the same budget."""
    server = start(serve)
    bystander = client(server)
    try:
        with RssMonitor(server, RSS_BOUND_KIB, min_samples=1) as rss, client(server) as c:
            deadline = time.monotonic() + 10
            opened = 0
            for _ in range(100):  # up to 100 batches of 40 streams
                if c.goaways or c.closed or c.h2_error or time.monotonic() > deadline:
                    break
                try:
                    for _ in range(40):
                        sid = c.start(path)
                        c.reset(sid)
                        opened += 1
                except h2.exceptions.H2Error:
                    break
                synced(c, deadline)
            c.wait(lambda: c.closed, 5)
            assert_calmed(c)
            # The budget is about 200 resets a second: the server stopped taking streams
            # (GOAWAY's last stream id) long before the 4000 this client can send.
            assert c.goaways[-1].last_stream_id < 2 * 1000, (opened, c.goaways)
        rss.check("a rapid reset attack")
        still_serves(server, bystander)
    finally:
        bystander.close()


@pytest.mark.parametrize("cause", ["malformed", "refused"])
def test_server_resets_count_in_the_same_budget(serve, cause):
    """MadeYouReset: streams the server itself resets (malformed requests, or streams
    beyond --h2-max-concurrent-streams) spend the reset budget too."""
    server = start(serve, "--h2-max-concurrent-streams", "1")
    with client(server, validate=False) as c:
        if cause == "refused":
            held = c.request("/hold?s=3&tag=held")
            server.wait_for(r"HOLD held", 5)
        deadline = time.monotonic() + 10
        sent = 0
        for _ in range(100):
            if c.goaways or c.closed or c.h2_error or time.monotonic() > deadline:
                break
            for _ in range(40):
                if cause == "malformed":
                    c.send_headers_raw([*c.request_headers("/"), ("X-Upper", "1")])
                else:
                    c.send_headers_raw(c.request_headers("/?refused"))
                sent += 1
            synced(c, deadline)
        c.wait(lambda: c.closed, 5)
        assert_calmed(c)
        # Reset one by one before the GOAWAY, and no more than about the budget.
        assert 100 <= len(c.resets) < 1000, (sent, c.describe())
        assert c.goaways[-1].last_stream_id < 2 * 1000, (sent, c.goaways)
        if cause == "refused":
            assert c.goaways[-1].last_stream_id >= held
    still_serves(server)


def test_moderate_use_is_not_an_attack(serve):
    """What a busy but honest client does stays well inside every budget."""
    server = start(serve)
    with client(server) as c:
        for index in range(300):  # 300 requests on one connection
            assert c.get("/").status == 200
            if index % 3 == 0:
                c.ping()
        for _ in range(50):  # 50 cancelled requests, a second's worth
            sid = c.start("/hold?s=0.2")
            c.flush()
            time.sleep(0.02)
            c.reset(sid)
        for _ in range(20):
            c.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65535})
            c.open_window(1)
        c.pump(0.5)
        assert c.get("/").status == 200
        assert not c.goaways and not c.closed and c.h2_error is None, c.describe()


# Floods of control frames -------------------------------------------------------------------

FLOODS = {
    "ping": lambda c, i: PingFrame(0, opaque_data=b"%08d" % i),
    "settings": lambda c, i: SettingsFrame(0),
    "window_update": lambda c, i: WindowUpdateFrame(0, window_increment=1),
    "priority": lambda c, i: PriorityFrame(2 * i + 1001, depends_on=0, stream_weight=16),
    "empty_data": lambda c, i: DataFrame(c.flood_stream, data=b""),
}


@pytest.mark.parametrize("kind", list(FLOODS))
def test_control_frame_flood_gets_goaway(serve, kind):
    server = start(serve)
    bystander = client(server)
    try:
        with RssMonitor(server, RSS_BOUND_KIB, min_samples=1) as rss, client(server) as c:
            c.pump(0.2)
            if kind == "empty_data":
                c.flood_stream = c.start("/drain", method="POST", end_stream=False)
                c.flush()
            frames = 5000  # five times the budget, sent at once
            c.send_raw(b"".join(FLOODS[kind](c, i).serialize() for i in range(frames)))
            c.flush(time.monotonic() + 5)
            c.wait(lambda: c.closed, 5)
            assert_calmed(c)
        rss.check(f"a {kind} flood")
        still_serves(server, bystander)
    finally:
        bystander.close()


# CONTINUATION flood -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16000, 0], ids=["big-frames", "empty-frames"])
def test_continuation_flood_is_bounded(serve, size):
    server = start(serve)
    bystander = client(server)
    try:
        with (
            RssMonitor(server, RSS_BOUND_KIB, min_samples=1) as rss,
            client(server, validate=False) as c,
        ):
            sid = c.send_headers_raw(c.request_headers("/hold?tag=cont"), end_headers=False)
            payload = padding_block(size) if size else b""
            frame = ContinuationFrame(sid, data=payload).serialize()
            per_chunk = max(1, MIB // len(frame))
            chunk = frame * per_chunk
            limit = 64 * MIB if size else 4 * MIB  # bytes this test is willing to send
            deadline = time.monotonic() + 12
            written = 0
            for _ in range(limit // len(chunk) + 1):
                if c.closed or c.goaways or time.monotonic() > deadline:
                    break
                c.send_raw(chunk)
                c.flush(deadline)
                written += len(chunk)
            c.wait(lambda: c.closed, 5)
            assert c.goaways, f"no GOAWAY: {c.describe()}"
            assert c.goaways[-1].error_code != 0, c.describe()
            assert c.closed, c.describe()
            if size:  # closed long before 64 MiB of header block went in
                assert c.sent_bytes < 32 * MIB, c.sent_bytes
        rss.check("a CONTINUATION flood")
        assert "HOLD cont" not in server.output
        still_serves(server, bystander)
    finally:
        bystander.close()


# HPACK bomb ------------------------------------------------------------------------------------


def test_hpack_bomb_is_refused_after_decoding(serve):
    server = start(serve)
    bystander = client(server)
    try:
        with RssMonitor(server, RSS_BOUND_KIB, min_samples=1) as rss:
            for round_ in range(10):
                with client(server, validate=False) as c:
                    before = c.sent_bytes
                    # One 4 KB header indexed once, then referenced 4000 times by one byte:
                    # ~8 KB on the wire, 16 MB once decoded (the limit is 64 KiB).
                    headers = c.request_headers(f"/hold?s=0&tag=bomb{round_}")
                    sid = c.send_headers_raw(headers + [("x-bomb", "a" * 4000)] * 4000)
                    c.flush()
                    assert c.sent_bytes - before < 20000, c.sent_bytes - before
                    c.wait(lambda s=sid: s in c.resets or c.goaways or c.responses[s].ended, 5)
                    refused = sid in c.resets or bool(c.goaways) or c.responses[sid].status == 431
                    assert refused, c.describe()
        rss.check("HPACK bombs")
        assert "HOLD bomb" not in server.output
        still_serves(server, bystander)
    finally:
        bystander.close()


def test_max_header_list_size_flag(serve):
    server = start(serve, "--h2-max-header-list-size", "8192")
    with client(server) as c:
        assert c.get("/", headers=[("x-fits", "f" * 4000)]).status == 200
    with client(server) as c:
        sid = c.request("/hold?s=0&tag=toolarge", headers=[("x-large", "l" * 10000)])
        c.wait(lambda: sid in c.resets or c.goaways or c.responses[sid].ended, 5)
        assert sid in c.resets or c.goaways or c.responses[sid].status == 431, c.describe()
    assert "HOLD toolarge" not in server.output
    still_serves(server)


# Slow readers ---------------------------------------------------------------------------------


def test_pings_from_a_client_that_never_reads_are_bounded(serve):
    """The PING ACKs cannot be written: the server must not buffer them without bound
    (it stops reading the client, or closes it as a flood)."""
    server = start(serve)
    bystander = client(server)
    try:
        with RssMonitor(server, RSS_BOUND_KIB, min_samples=1) as rss:
            c = client(server, rcvbuf=4096)
            try:
                blob = b"".join(
                    PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(1000)
                )
                deadline = time.monotonic() + 6
                sent = 0
                stalled_since = None
                outcome = "deadline"
                for _ in range(1_000_000):
                    now = time.monotonic()
                    if now > deadline or sent > 300 * MIB:
                        break
                    _, writable, _ = select.select([], [c.sock], [], 0.1)
                    if not writable:
                        stalled_since = stalled_since or now
                        if now - stalled_since > 1.5:
                            outcome = "server stopped reading"
                            break
                        continue
                    stalled_since = None
                    try:
                        sent += c.sock.send(blob)
                    except BlockingIOError:
                        continue
                    except OSError:
                        outcome = "closed"
                        break
                assert outcome != "deadline", f"sent {sent} bytes of PINGs, all read"
            finally:
                c.close()
        rss.check(f"a PING flood that is never read ({outcome}, {sent} bytes sent)")
        still_serves(server, bystander)
    finally:
        bystander.close()


def test_response_into_a_wide_window_never_read_is_bounded(serve):
    server = start(serve)
    bystander = client(server)
    try:
        with RssMonitor(server, RSS_BOUND_KIB, min_samples=1) as rss:
            c = H2Client.to(
                server,
                settings={SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1},
                rcvbuf=65536,
            )
            try:
                c.handshake()
                c.open_window(2**31 - 1 - 65535)
                c.request("/stream?tag=wide&n=20000&size=16384")  # 312 MiB
                c.flush()
                time.sleep(1.5)  # never reading
                early = len([ln for ln in server.lines if "SENT wide" in ln])
                time.sleep(1.5)
                late = len([ln for ln in server.lines if "SENT wide" in ln])
                assert late < 20000
                assert late - early < 200, (early, late)  # the app's send waits
            finally:
                c.close()
        rss.check("a 312 MiB response nobody reads")
        server.wait_for(r"ENDED wide", 10)  # the app ends once the client is gone
        still_serves(server, bystander)
    finally:
        bystander.close()


def test_window_kept_shut_is_closed_after_timeout_send(serve):
    server = start(serve, "--timeout-send", "1")
    with client(server, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}, auto_ack=False) as c:
        sid = c.request("/stream?tag=shut&n=10&size=16384")
        c.wait(lambda: bool(c.responses[sid].headers), 5)
        began = time.monotonic()
        assert c.wait_closed(6), c.describe()
        took = time.monotonic() - began
    assert 0.7 < took < 4.0, took
    server.wait_for(r"ENDED shut", 5)
    still_serves(server)


def test_slow_but_steady_reader_outlives_timeout_send(serve):
    server = start(serve, "--timeout-send", "1")
    with client(server, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}, auto_ack=False) as c:
        size = 16384
        sid = c.request(f"/stream?tag=steady&n=8&size={size}")
        for _ in range(8):  # one chunk's window every 0.4 s: 3.2 s in all
            c.open_window(size, sid)
            c.open_window(size)
            c.pump(0.4)
        response = c.response(sid, 5)
        assert response.ended and len(response.data) == 8 * size
        assert not c.closed and not c.goaways, c.describe()
