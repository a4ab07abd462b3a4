"""Robustness: failing apps, malformed input, slow clients and the server's limits.

Everything here runs a real shardserve process (the ``serve`` fixture) and talks to it
over real sockets on 127.0.0.1, against every parser back-end (the ``backend``
fixture).  The misbehaving apps live in ``tests/apps/faulty.py``.
"""

from __future__ import annotations

import re
import select
import signal
import socket
import subprocess
import time

import httpx
import pytest

from serving import connect, is_closed, parse_responses

APP = "apps.faulty:app"


# Helpers --------------------------------------------------------------------------


def get(path: str, *, close: bool = False, extra: bytes = b"") -> bytes:
    head = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % path.encode()
    if close:
        head += b"Connection: close\r\n"
    return head + extra + b"\r\n"


def read_to_close(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Read until the server closes or ``timeout`` passes: (data, closed_by_server)."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return b"".join(chunks), False
        except ConnectionResetError:
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


def read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    """Read until ``marker`` has arrived (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{marker!r} not received in {timeout}s; got {data!r}"
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}; got {data!r}"
        data += chunk
    return data


def split_head(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, raw rest) of a response whose body may be cut short."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def assert_serves(server) -> None:
    """A fresh connection still gets a normal answer."""
    response = httpx.get(server.url + "/ok", timeout=5)
    assert response.status_code == 200
    assert response.text == "ok 0"


def assert_canned(response, status: int) -> None:
    """A response the server made itself: the status, plain text, connection: close."""
    assert response.status == status, response
    assert response.header("connection") == "close", response
    assert (response.header("content-type") or "").startswith("text/plain"), response
    assert response.header("server") == "shardserve", response
    assert int(response.header("content-length")) == len(response.body), response


# 1. Application errors ------------------------------------------------------------

# Routes that fail before anything was written: the client gets a clean 500 and a close.
FAIL_BEFORE_WRITE = [
    ("/raise-before", "Exception in ASGI application"),
    ("/raise-after-start", "Exception in ASGI application"),
    ("/return-none", "ASGI callable returned without starting a response"),
    ("/return-after-start", "ASGI callable returned without completing"),
    ("/body-before-start", "Exception in ASGI application"),
    ("/start-twice", "Exception in ASGI application"),
    ("/unknown-type", "Exception in ASGI application"),
    ("/unknown-type-after-start", "Exception in ASGI application"),
    ("/float-status", "invalid HTTP status 200.0"),
]


@pytest.mark.parametrize(
    ("path", "logged"), FAIL_BEFORE_WRITE, ids=[p for p, _ in FAIL_BEFORE_WRITE]
)
def test_app_failure_before_write_gives_500_and_close(serve, backend, path, logged):
    server = serve(APP, "--http", backend)
    with connect(server) as sock:
        sock.sendall(get(path))  # keep-alive request: the close is the server's decision
        data, closed = read_to_close(sock)
    assert closed, f"connection left open after a failed app: {data!r}"
    responses = parse_responses(data)
    assert len(responses) == 1, data
    assert_canned(responses[0], 500)
    assert responses[0].body == b"Internal Server Error"
    server.wait_for(re.escape(logged), timeout=5)
    assert_serves(server)


def test_app_answering_after_the_client_left_is_no_error(serve, backend):
    """The client leaves mid-body; the app's late answer fails quietly (no traceback,
    no access-log line for a response never sent) and the server goes on."""
    server = serve(APP, "--http", backend)
    with connect(server) as sock:
        sock.sendall(
            b"POST /respond-after-disconnect HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab"
        )
    server.wait_for(r"RESPONDING AFTER DISCONNECT", timeout=5)
    assert_serves(server)
    server.signal(signal.SIGTERM)  # (an unretrieved task exception shows at exit)
    assert server.wait_exit(15) == 0
    assert "Traceback" not in server.output and "exception" not in server.output.lower()
    assert "/respond-after-disconnect" not in server.output


def test_app_exception_is_logged_with_traceback(serve, backend):
    server = serve(APP, "--http", backend)
    assert httpx.get(server.url + "/raise-before", timeout=5).status_code == 500
    server.wait_for(r"Exception in ASGI application", timeout=5)
    server.wait_for(r"Boom: before the response started", timeout=5)
    assert "Traceback" in server.output


@pytest.mark.parametrize("path", ["/raise-after-body", "/return-after-body"])
def test_app_failure_mid_chunked_body_truncates_and_closes(serve, backend, path):
    server = serve(APP, "--http", backend)
    with connect(server) as sock:
        sock.sendall(get(path))
        data, closed = read_to_close(sock)
    assert closed, f"connection left open after a broken response: {data!r}"
    status, headers, rest = split_head(data)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    # The first chunk arrived, and nothing else: no terminating zero-length chunk, no 500.
    assert rest == b"7\r\npartial\r\n", data
    assert b"500" not in rest
    logged = "Exception in ASGI application" if "raise" in path else "ASGI callable returned"
    server.wait_for(logged, timeout=5)
    assert_serves(server)


def test_app_failure_mid_content_length_body_truncates_and_closes(serve, backend):
    server = serve(APP, "--http", backend)
    with connect(server) as sock:
        sock.sendall(get("/raise-after-body-length"))
        data, closed = read_to_close(sock)
    assert closed
    status, headers, rest = split_head(data)
    assert status == 200
    assert headers["content-length"] == "100"
    assert rest == b"x" * 10  # 90 bytes short: the client can tell it was cut off
    server.wait_for("Exception in ASGI application", timeout=5)
    assert_serves(server)


@pytest.mark.parametrize("path", ["/raise-after-body", "/raise-after-body-length"])
def test_truncated_response_is_an_error_for_curl(serve, backend, path):
    server = serve(APP, "--http", backend)
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", server.url + path],
        capture_output=True,
        text=True,
        timeout=10,
    )
    # 18: "Partial file" / "transfer closed with outstanding read data remaining".
    assert result.returncode == 18, (result.returncode, result.stderr)
    assert_serves(server)


def test_message_after_final_body_closes_connection(serve, backend):
    server = serve(APP, "--http", backend)
    with connect(server) as sock:
        sock.sendall(get("/after-final"))
        data = read_until(sock, b"\r\n\r\ndone")
        responses = parse_responses(data)
        assert [(r.status, r.body) for r in responses] == [(200, b"done")]
        assert b"extra" not in data
        # The app then broke the protocol: the connection must not be reused.
        assert is_closed(sock, timeout=3), "keep-alive connection survived an app error"
    server.wait_for("Exception in ASGI application", timeout=5)
    assert_serves(server)


def test_server_keeps_serving_after_every_app_failure(serve, backend):
    server = serve(APP, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/ok").text == "ok 0"
        for path, _ in FAIL_BEFORE_WRITE:
            with httpx.Client(base_url=server.url, timeout=5) as other:
                assert other.get(path).status_code == 500, path
        for path in ("/raise-after-body", "/return-after-body", "/raise-after-body-length"):
            with (
                httpx.Client(base_url=server.url, timeout=5) as other,
                pytest.raises(httpx.RemoteProtocolError),
            ):
                other.get(path)
        # The connection opened before all that is still alive and well.
        response = client.get("/ok")
        assert response.status_code == 200
        assert response.text == "ok 0"
    assert_serves(server)
    assert server.proc.poll() is None


# 2. Header injection --------------------------------------------------------------

INJECTIONS = [
    "/header-crlf-value",
    "/header-lf-value",
    "/header-cr-value",
    "/header-crlf-name",
    "/header-lf-name",
]


@pytest.mark.parametrize("path", INJECTIONS)
def test_cr_or_lf_in_response_header_is_refused(serve, backend, path):
    server = serve(APP, "--http", backend)
    with connect(server) as sock:
        sock.sendall(get(path))
        data, closed = read_to_close(sock)
    assert closed
    assert b"x-injected" not in data.lower(), data
    assert b"injected?" not in data, data
    responses = parse_responses(data)
    assert len(responses) == 1, data
    assert_canned(responses[0], 500)
    server.wait_for("Exception in ASGI application", timeout=5)
    assert_serves(server)


# 3. Malformed requests --------------------------------------------------------------

LIMITS = (
    "--limit-request-line",
    "100",
    "--limit-request-fields",
    "10",
    "--limit-request-field-size",
    "200",
)

HOST = b"Host: 127.0.0.1\r\n"

BAD_REQUESTS = {
    "garbage-line": (b"this is not http\r\n\r\n", 400),
    "garbage-binary": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "method-at-sign": (b"G@T / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "method-control-char": (b"G\x01T / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "method-paren": (b"GET(x) / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "version-2.0": (b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", 505),
    "version-1.7": (b"GET / HTTP/1.7\r\n" + HOST + b"\r\n", 400),
    "version-httx": (b"GET / HTTX/1.1\r\n" + HOST + b"\r\n", 400),
    "target-too-long": (b"GET /" + b"a" * 199 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414),
    "too-many-fields": (
        b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"X-H%d: v\r\n" % i for i in range(20)) + b"\r\n",
        431,
    ),
    "field-too-large": (b"GET / HTTP/1.1\r\n" + HOST + b"X-Long: " + b"a" * 500 + b"\r\n\r\n", 431),
    "content-length-and-chunked": (
        b"POST /ok HTTP/1.1\r\n"
        + HOST
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "duplicate-content-length-differing": (
        b"POST /ok HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    "duplicate-content-length-same": (
        b"POST /ok HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    "content-length-abc": (
        b"POST /ok HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n\r\nhello",
        400,
    ),
    "content-length-negative": (
        b"POST /ok HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\nhello",
        400,
    ),
    "chunk-size-zz": (
        b"POST /ok HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "control-char-in-field-name": (b"GET / HTTP/1.1\r\n" + HOST + b"X-\x01Bad: 1\r\n\r\n", 400),
    "missing-host": (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\n" + HOST + b"X-Foo : bar\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_request_is_answered_and_closed(serve, backend, case):
    raw, status = BAD_REQUESTS[case]
    server = serve(APP, "--http", backend, *LIMITS)
    with connect(server) as sock:
        sock.sendall(raw)
        data, closed = read_to_close(sock)
    assert closed, f"connection left open after {case}: {data!r}"
    responses = parse_responses(data)
    assert len(responses) == 1, data
    assert_canned(responses[0], status)
    assert server.proc.poll() is None
    assert_serves(server)


SMUGGLING_FRAMINGS = {
    "te-gzip": b"Transfer-Encoding: gzip\r\n",
    "te-chunked-gzip": b"Transfer-Encoding: chunked, gzip\r\n",
    "te-with-cl": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    "cl-list": b"Content-Length: 5, 5\r\n",
}


@pytest.mark.parametrize("framing", list(SMUGGLING_FRAMINGS))
def test_request_rejected_for_its_framing_never_reaches_the_app(serve, backend, framing):
    """Some back-ends report a head before they find its framing bad: the app must
    still never run for it (the route would log an exception if it did)."""
    server = serve(APP, "--http", backend)
    raw = b"POST /raise-before HTTP/1.1\r\n" + HOST + SMUGGLING_FRAMINGS[framing] + b"\r\n"
    with connect(server) as sock:
        sock.sendall(raw + b"5\r\nhello\r\n0\r\n\r\n")
        data, closed = read_to_close(sock)
    assert closed
    responses = parse_responses(data)
    assert len(responses) == 1, data
    assert responses[0].status in (400, 501)
    assert_serves(server)
    assert "Exception in ASGI application" not in server.output


def test_malformed_request_after_good_one_on_same_connection(serve, backend):
    """A keep-alive connection that goes bad gets its earlier answer, then the error."""
    server = serve(APP, "--http", backend, *LIMITS)
    raw = get("/ok") + b"G@T / HTTP/1.1\r\n" + HOST + b"\r\n"
    with connect(server) as sock:
        sock.sendall(raw)
        data, closed = read_to_close(sock)
    assert closed
    responses = parse_responses(data)
    assert [r.status for r in responses] == [200, 400]
    assert responses[0].body == b"ok 0"
    assert_canned(responses[1], 400)
    assert_serves(server)


def test_endless_request_line_sent_in_pieces_gets_414(serve, backend):
    """A request target that never ends (no CRLF), sent in 1 KiB pieces: the server
    answers 414 as soon as the target passes the limit instead of buffering it all."""
    server = serve(APP, "--http", backend, *LIMITS)
    sent = 0
    with connect(server) as sock:
        sock.sendall(b"GET /")
        piece = b"a" * 1024
        for _ in range(1024):  # at most 1 MiB; the server should stop us after ~100 bytes
            readable, _, _ = select.select([sock], [], [], 0.01)
            if readable:
                break
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        data, closed = read_to_close(sock)
    assert closed
    assert sent < 64 * 1024, f"server read {sent} bytes of request target before answering"
    responses = parse_responses(data)
    assert len(responses) == 1, data
    assert_canned(responses[0], 414)
    assert_serves(server)


# 4. Slow clients ---------------------------------------------------------------------


def test_partial_head_times_out_with_408(serve, backend):
    server = serve(APP, "--http", backend, "--timeout-request-header", "1")
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
        data, closed = read_to_close(sock, timeout=5)
        elapsed = time.monotonic() - started
    assert closed
    assert 0.5 <= elapsed < 3, elapsed
    responses = parse_responses(data)
    assert len(responses) == 1, data
    assert_canned(responses[0], 408)
    assert_serves(server)


def test_trickled_head_is_cut_off(serve, backend):
    """One header line every 0.3 s never completes the head: cut off after ~1 s."""
    server = serve(APP, "--http", backend, "--timeout-request-header", "1")
    lines_sent = 0
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
        for i in range(20):  # 20 lines = 6 s, far past the timeout
            readable, _, _ = select.select([sock], [], [], 0.3)
            if readable or time.monotonic() - started > 5:
                break
            try:
                sock.sendall(b"X-Trickle-%d: %d\r\n" % (i, i))
            except (BrokenPipeError, ConnectionResetError):
                break
            lines_sent += 1
        data, closed = read_to_close(sock, timeout=5)
        elapsed = time.monotonic() - started
    assert closed
    assert elapsed < 3, elapsed
    assert lines_sent >= 1
    responses = parse_responses(data)
    assert len(responses) == 1, data
    assert_canned(responses[0], 408)
    assert_serves(server)


# 5. Concurrency limit ------------------------------------------------------------------


def test_limit_concurrency_answers_503_beyond_the_limit(serve, backend):
    server = serve(APP, "--http", backend, "--limit-concurrency", "2")
    holders = [connect(server) for _ in range(2)]
    try:
        for sock in holders:
            sock.sendall(get("/hold?seconds=2", close=True))
        # Both requests are inside the app once their first chunk arrives.
        heads = [read_until(sock, b"held\n") for sock in holders]

        # A third concurrent request is refused.
        with connect(server) as third:
            third.sendall(get("/ok"))
            data, closed = read_to_close(third)
        assert closed
        responses = parse_responses(data)
        assert len(responses) == 1, data
        assert_canned(responses[0], 503)
        refused = httpx.get(server.url + "/ok", timeout=5)
        assert refused.status_code == 503
        assert refused.headers["connection"] == "close"

        # The held requests are unaffected and finish normally.
        for sock, head in zip(holders, heads, strict=True):
            rest, closed = read_to_close(sock, timeout=5)
            assert closed
            (response,) = parse_responses(head + rest)
            assert response.status == 200
            assert response.body == b"held\ndone\n"
    finally:
        for sock in holders:
            sock.close()

    # With them gone, requests succeed again, two at a time as well.
    with (
        httpx.Client(base_url=server.url, timeout=5) as a,
        httpx.Client(base_url=server.url, timeout=5) as b,
    ):
        assert a.get("/ok").status_code == 200
        assert b.get("/ok").status_code == 200
        assert a.get("/ok").text == "ok 0"


# 7. Maximum requests -----------------------------------------------------------------


def test_limit_max_requests_stops_the_server(serve, backend):
    server = serve(APP, "--http", backend, "--limit-max-requests", "3")
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for _ in range(3):
            response = client.get("/ok")
            assert response.status_code == 200
            assert response.text == "ok 0"
    assert server.wait_exit(timeout=10) == 0
    assert re.search(r"[Mm]aximum request limit of 3", server.output), server.output
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.port), timeout=2).close()


# Framing and routing checks, alike on every back-end (shardserve/shard/http/framing.py)

FRAMING_REJECTS = {
    "host-invalid": (b"GET /raise-before HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "host-userinfo": (b"GET /raise-before HTTP/1.1\r\nHost: user@127.0.0.1\r\n\r\n", 400),
    "host-repeated": (b"GET /raise-before HTTP/1.1\r\n" + HOST + HOST + b"\r\n", 400),
    "host-repeated-http10": (b"GET /raise-before HTTP/1.0\r\n" + HOST + HOST + b"\r\n", 400),
    "obs-fold": (b"GET /raise-before HTTP/1.1\r\n" + HOST + b"X-A: a\r\n b\r\n\r\n", 400),
    "te-http10": (
        b"POST /raise-before HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-gzip": (
        b"POST /raise-before HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\nhello",
        400,
    ),
    "te-trailing-comma": (
        b"POST /raise-before HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-chunked-twice": (
        b"POST /raise-before HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-gzip-chunked": (
        b"POST /raise-before HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "te-gzip-chunked-invalid-host": (
        b"POST /raise-before HTTP/1.1\r\nHost: a b\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "connect-origin-form": (b"CONNECT /raise-before HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "connect-no-port": (b"CONNECT 127.0.0.1 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "connect-absolute-form": (
        b"CONNECT http://127.0.0.1/raise-before HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
    ),
}


@pytest.mark.parametrize("case", list(FRAMING_REJECTS))
def test_framing_reject_is_answered_alike_and_closed(serve, backend, case):
    """Every back-end answers these with the same status, closes, and never runs the
    app for them (the route would log an exception if it did)."""
    raw, status = FRAMING_REJECTS[case]
    server = serve(APP, "--http", backend)
    with connect(server) as sock:
        sock.sendall(raw)
        data, closed = read_to_close(sock)
    assert closed, f"connection left open after {case}: {data!r}"
    assert data.startswith(b"HTTP/1.1 %d " % status), data
    responses = parse_responses(data)
    assert len(responses) == 1, data
    assert_canned(responses[0], status)
    assert_serves(server)
    assert "Exception in ASGI application" not in server.output
