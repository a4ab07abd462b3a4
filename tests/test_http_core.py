"""Core HTTP/1.1 behaviour of a real shardserve process, over real sockets.

Every test runs against both parser back-ends (the ``backend`` fixture).  The app is
``tests/apps/core.py``; see its docstring for the routes.
"""

from __future__ import annotations

import email.utils
import json
import re
import subprocess
import time

import httpx
import pytest

from serving import Response, connect, exchange, is_closed, parse_responses, read_until_close

APP = "apps.core:app"
TIMEOUT = 5.0
IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$"
)


# Raw HTTP helpers ----------------------------------------------------------------------


def request(
    path: str = "/echo",
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "1.1",
    host: bool = True,
) -> bytes:
    """A raw request; a Content-Length is added when there is a body."""
    lines = [f"{method} {path} HTTP/{version}"]
    if host:
        lines.append("Host: test")
    names = {name.lower() for name, _ in headers or []}
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ConnectionClosed(Exception):
    pass


class RawConnection:
    """A client socket that reads one response at a time, keeping what follows."""

    def __init__(self, server, timeout: float = TIMEOUT) -> None:
        self.sock = connect(server, timeout)
        self.timeout = timeout
        self.buffer = b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete response in time; have {self.buffer!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise ConnectionClosed(f"closed; have {self.buffer!r}")
        self.buffer += chunk

    def read_exact(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self._fill(deadline)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_line(self, deadline: float) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill(deadline)
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read_head(self, deadline: float | None = None) -> tuple[bytes, Response]:
        deadline = deadline or time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buffer:
            self._fill(deadline)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        response = parse_responses(head + b"\r\n\r\n", head_requests=1)[0]
        return head + b"\r\n\r\n", response

    def read_response(self, head_request: bool = False) -> tuple[bytes, Response]:
        """One final response (interim 1xx ones are returned too, as they come)."""
        deadline = time.monotonic() + self.timeout
        raw, response = self.read_head(deadline)
        if head_request or response.status < 200 or response.status in (204, 304):
            return raw, response
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.read_line(deadline).split(b";")[0], 16)
                if size == 0:
                    while self.read_line(deadline):  # trailer fields, then an empty line
                        pass
                    break
                body += self.read_exact(size, deadline)
                assert self.read_exact(2, deadline) == b"\r\n", "chunk not ended by CRLF"
            response.body = body
        elif response.header("content-length") is not None:
            response.body = self.read_exact(int(response.header("content-length")), deadline)
        else:
            raise AssertionError(f"unframed response body on a kept connection: {raw!r}")
        return raw, response

    def is_closed(self, timeout: float) -> bool:
        assert not self.buffer, f"unexpected bytes {self.buffer!r}"
        return is_closed(self.sock, timeout)


class BytesConnection(RawConnection):
    """RawConnection's response reader over bytes already received."""

    def __init__(self, data: bytes) -> None:
        self.buffer = data
        self.timeout = 0.1

    def _fill(self, deadline: float) -> None:
        raise ConnectionClosed(f"incomplete response: {self.buffer!r}")


def split_responses(data: bytes, head_flags: list[bool]) -> list[tuple[bytes, Response]]:
    """Parse one final response per request (``True``: answered a HEAD); nothing may
    follow the last one."""
    reader = BytesConnection(data)
    responses = [reader.read_response(head_request=flag) for flag in head_flags]
    assert reader.buffer == b"", f"unexpected bytes after the responses: {reader.buffer!r}"
    return responses


# 1. Methods and HEAD -------------------------------------------------------------------


def test_methods_reach_app(serve, backend):
    server = serve(APP, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            response = client.request(method, "/echo", content=b"x" if method != "GET" else None)
            assert response.status_code == 200, method
            assert response.headers["x-method"] == method
            assert response.json()["method"] == method
        response = client.head("/echo")
        assert response.status_code == 200
        assert response.headers["x-method"] == "HEAD"
        assert response.content == b""


def test_head_raw_no_body_keeps_content_length(serve, backend):
    server = serve(APP, "--http", backend)
    raw = (
        request("/fixed", "HEAD")
        + request("/fixed")
        + request("/echo", "HEAD")
        + request("/fixed", headers=[("Connection", "close")])
    )
    data = exchange(server, raw)
    # The bytes right after the HEAD response's head are the next response.
    first_head, _, rest = data.partition(b"\r\n\r\n")
    assert first_head.startswith(b"HTTP/1.1 200 ")
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:80]
    responses = split_responses(data, [True, False, True, False])
    (_, head1), (_, get1), (_, head2), (_, get2) = responses
    assert head1.header("content-length") == "10"
    assert get1.body == b"0123456789"
    # HEAD of the JSON route: the app's Content-Length stays, no chunked framing.
    assert head2.header("x-method") == "HEAD"
    assert int(head2.header("content-length")) > 0
    assert head2.header("transfer-encoding") is None
    assert get2.body == b"0123456789"


def test_head_httpx_then_get_on_same_connection(serve, backend):
    server = serve(APP, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        get1 = client.get("/echo")
        head = client.head("/fixed")
        get2 = client.get("/fixed")
        head2 = client.head("/echo")
        get3 = client.get("/echo")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == "10"
    assert head2.content == b"" and int(head2.headers["content-length"]) > 0
    assert get2.content == b"0123456789"
    assert get3.json()["method"] == "GET"
    # One connection served all five: a HEAD body would have corrupted the next one.
    assert get1.json()["client"] == get3.json()["client"]


def test_head_with_curl(serve, backend):
    server = serve(APP, "--http", backend)
    url = server.url + "/fixed"
    result = subprocess.run(
        ["curl", "-sS", "-v", "--http1.1", "--max-time", "5", "-I", url, url],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    heads = [h for h in result.stdout.replace("\r\n", "\n").split("\n\n") if h.strip()]
    assert len(heads) == 2
    for head in heads:
        assert head.startswith("HTTP/1.1 200")
        assert "content-length: 10" in head.lower()
    assert re.search(r"Re-?using existing connection", result.stderr), result.stderr


# 2. Request bodies ---------------------------------------------------------------------


def test_body_with_content_length(serve, backend):
    server = serve(APP, "--http", backend)
    payload = bytes(range(256)) * 800  # 200 KiB: more than the server buffers at once
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        small = client.post("/echo", content=b"hello")
        large = client.put("/echo", content=payload)
    assert small.json()["body"] == "hello"
    assert small.json()["events"][-1] == [5, False]
    data = large.json()
    assert data["body"].encode("latin-1") == payload
    assert data["events"][-1][1] is False
    assert all(more for _, more in data["events"][:-1])


def test_body_chunked_with_extensions_and_trailers(serve, backend):
    server = serve(APP, "--http", backend)
    raw = (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"6;a=b;flag\r\n world\r\n"
        b"a\r\n0123456789\r\n"
        b"0\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n"
    ) + request("/echo", "POST", body=b"next", headers=[("Connection", "close")])
    responses = parse_responses(exchange(server, raw))
    assert [r.status for r in responses] == [200, 200]
    first, second = (json.loads(r.body) for r in responses)
    assert first["body"] == "hello world0123456789"
    assert first["events"][-1][1] is False
    assert second["body"] == "next"


def test_body_in_pieces_gives_several_events(serve, backend):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        conn.send(request("/echo", "POST", headers=[("Content-Length", "15")]) + b"aaaaa")
        for piece in (b"bbbbb", b"ccccc"):
            time.sleep(0.15)
            conn.send(piece)
        _, response = conn.read_response()
    data = json.loads(response.body)
    assert data["body"] == "aaaaabbbbbccccc"
    events = data["events"]
    assert len(events) >= 3, events
    assert all(more for _, more in events[:-1]), events
    assert events[-1][1] is False
    assert sum(size for size, _ in events) == 15


def test_chunked_stream_from_httpx_gives_several_events(serve, backend):
    server = serve(APP, "--http", backend)

    def pieces():
        for piece in (b"one-", b"two-", b"three"):
            yield piece
            time.sleep(0.15)

    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(server.url + "/echo", content=pieces())
    assert response.status_code == 200
    data = response.json()
    assert data["body"] == "one-two-three"
    events = data["events"]
    assert sum(1 for _, more in events if more) >= 2, events
    assert all(more for _, more in events[:-1]), events
    assert events[-1][1] is False


def test_disconnect_delivered_when_client_leaves_mid_body(serve, backend):
    server = serve(APP, "--http", backend)
    conn = RawConnection(server)
    try:
        conn.send(
            request("/disconnect?tag=mid", "POST", headers=[("Content-Length", "100")]) + b"x" * 10
        )
        server.wait_for(r"RECV mid \d+ True", TIMEOUT)
    finally:
        conn.sock.close()
    server.wait_for(r"DISCONNECT mid", TIMEOUT)
    assert "COMPLETE mid" not in server.output


def test_receive_after_response_returns_disconnect(serve, backend):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        conn.send(request("/after?tag=done", "POST", body=b"payload"))
        _, response = conn.read_response()
        assert response.status == 200 and response.body == b"after"
        # The client keeps the connection open: the disconnect is about the exchange.
        match = server.wait_for(r"AFTER done (\S+) (\d+)", TIMEOUT)
        assert not conn.is_closed(0.05)
    assert match.group(1) == "http.disconnect"
    assert int(match.group(2)) < 500


# 3. Keep-alive -------------------------------------------------------------------------


def test_keep_alive_httpx_reuses_one_connection(serve, backend):
    server = serve(APP, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        responses = [client.get(f"/echo?i={i}") for i in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert [r.json()["query_string"] for r in responses] == [f"i={i}" for i in range(5)]
    assert len({tuple(r.json()["client"]) for r in responses}) == 1
    assert all("connection" not in r.headers for r in responses)


def test_keep_alive_raw_connection_stays_open(serve, backend):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        for i in range(3):
            conn.send(request(f"/echo?n={i}"))
            _, response = conn.read_response()
            assert response.status == 200
            assert json.loads(response.body)["query_string"] == f"n={i}"
            assert response.header("connection") is None
        assert not conn.is_closed(0.3)


def test_connection_close_from_client(serve, backend):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        conn.send(request("/fixed"))
        _, first = conn.read_response()
        assert first.header("connection") is None
        conn.send(request("/fixed", headers=[("Connection", "close")]))
        _, second = conn.read_response()
        assert second.body == b"0123456789"
        assert second.header("connection") == "close"
        assert conn.is_closed(2.0)


def test_app_connection_close_header_closes(serve, backend):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        conn.send(request("/close"))
        _, response = conn.read_response()
        assert response.body == b"bye"
        assert response.header_all("connection") == ["close"]
        assert conn.is_closed(2.0)


def test_pipelined_requests_after_connection_close_are_not_answered(serve, backend):
    server = serve(APP, "--http", backend)
    raw = request("/echo?n=1", headers=[("Connection", "close")]) + request("/echo?n=2")
    data = exchange(server, raw)
    [(_, response)] = split_responses(data, [False])  # nothing after the first
    assert json.loads(response.body)["query_string"] == "n=1"
    assert response.header("connection") == "close"


def test_http10_closes_by_default(serve, backend):
    server = serve(APP, "--http", backend)
    data = exchange(server, request("/fixed", version="1.0", host=False))
    [response] = parse_responses(data)
    assert response.status == 200
    assert response.body == b"0123456789"
    assert response.header("connection") == "close"
    # And the server closes right after the response (not at some timeout).
    with RawConnection(server) as conn:
        conn.send(request("/fixed", version="1.0", host=False))
        conn.read_response()
        assert conn.is_closed(2.0)


def test_http10_keep_alive_when_asked(serve, backend):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        for _ in range(2):
            conn.send(request("/echo", version="1.0", headers=[("Connection", "keep-alive")]))
            _, response = conn.read_response()
            assert response.status == 200
            assert response.header("connection") == "keep-alive"
            assert json.loads(response.body)["http_version"] == "1.0"
        assert not conn.is_closed(0.3)


def test_keep_alive_timeout(serve, backend):
    server = serve(APP, "--http", backend, "--timeout-keep-alive", "1")
    with RawConnection(server) as conn:
        conn.send(request("/fixed"))
        conn.read_response()
        idle_since = time.monotonic()
        assert not conn.is_closed(0.5), "closed before the keep-alive timeout"
        assert conn.is_closed(2.5), "still open 3 s after the response"
        assert time.monotonic() - idle_since >= 0.9


# 4. Pipelining -------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(serve, backend):
    server = serve(APP, "--http", backend)
    chunked = b"4\r\nbody\r\n3\r\n-p4\r\n0\r\n\r\n"
    raw = (
        request("/p1")
        + request("/p2", "POST", body=b"body-p2")
        + request("/p3", "HEAD")
        + request("/p4", "POST", headers=[("Transfer-Encoding", "chunked")])
        + chunked
        + request("/p5", "PUT", body=b"x" * 3000)
        + request("/p6", "DELETE", headers=[("Connection", "close")])
    )
    data = exchange(server, raw)
    responses = [r for _, r in split_responses(data, [False, False, True, False, False, False])]
    assert [r.status for r in responses] == [200] * 6
    assert [r.header("x-method") for r in responses] == [
        "GET",
        "POST",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
    ]
    bodies = {i: json.loads(r.body) for i, r in enumerate(responses) if i != 2}
    assert [b["path"] for b in bodies.values()] == ["/p1", "/p2", "/p4", "/p5", "/p6"]
    assert bodies[1]["body"] == "body-p2"
    assert bodies[3]["body"] == "body-p4"
    assert bodies[4]["body"] == "x" * 3000
    assert responses[-1].header("connection") == "close"


# 5. Response framing -------------------------------------------------------------------


def test_declared_length_keeps_connection_reusable(serve, backend):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        for _ in range(3):
            conn.send(request("/fixed"))
            _, response = conn.read_response()
            assert response.body == b"0123456789"
            assert response.header("content-length") == "10"
            assert response.header("transfer-encoding") is None
            assert response.header("connection") is None
        assert not conn.is_closed(0.2)


SENT_BY = {"/more": b"0123456789", "/more-split": b"abcdefgh"}


@pytest.mark.parametrize("declared", [True, False])
def test_large_response_body_framing(serve, backend, declared):
    server = serve(APP, "--http", backend)
    size = 300_000
    expected = (bytes(range(97, 123)) * 4096 * 3)[:size]
    with RawConnection(server) as conn:
        conn.send(request(f"/big?n={size}&cl={int(declared)}") + request("/fixed"))
        _, response = conn.read_response()
        assert response.body == expected
        if declared:
            assert response.header("content-length") == str(size)
        else:
            assert response.header("transfer-encoding") == "chunked"
        _, following = conn.read_response()
        assert following.body == b"0123456789"
        assert not conn.is_closed(0.1)


@pytest.mark.parametrize("route", sorted(SENT_BY))
def test_more_than_content_length_closes(serve, backend, route):
    server = serve(APP, "--http", backend)
    data = exchange(server, request(route) + request("/fixed"))
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if status == 200:
        # Head already out: a prefix of what the app sent, at most the declared 5
        # bytes, then the connection ends.
        assert b"content-length: 5" in head.lower()
        assert len(body) <= 5
        assert body == SENT_BY[route][: len(body)]
    else:
        # Nothing written yet: the server's own 500, complete and closing.
        [response] = parse_responses(data)
        assert response.status == 500
        assert response.header("connection") == "close"
    # The pipelined second request never gets an answer on this connection.
    assert data.count(b"HTTP/1.1 ") == 1, data


def test_fewer_than_content_length_closes(serve, backend):
    server = serve(APP, "--http", backend)
    data = exchange(server, request("/fewer") + request("/fixed"))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 10" in head.lower()
    # The short body, then the connection ends: no second response glued behind it.
    assert body == b"12345", data


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("n=1", b"piece0"),
        ("n=3", b"piece0piece1piece2"),
        ("n=3&empty_last=1", b"piece0piece1piece2"),
        ("n=3&empty_mid=1", b"piece0piece1piece2"),
        ("n=0&empty_last=1", b""),
    ],
)
def test_chunked_response_framing(serve, backend, query, expected):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        conn.send(request(f"/chunks?{query}") + request("/fixed"))
        raw_head, response = conn.read_head()
        assert response.status == 200
        assert response.header("transfer-encoding") == "chunked"
        assert response.header("content-length") is None
        assert response.header("connection") is None
        deadline = time.monotonic() + TIMEOUT
        # Read chunk by chunk: each is non-empty until exactly one 0-size terminator.
        body = b""
        while True:
            size = int(conn.read_line(deadline), 16)
            if size == 0:
                assert conn.read_line(deadline) == b""
                break
            body += conn.read_exact(size, deadline)
            assert conn.read_exact(2, deadline) == b"\r\n"
        assert body == expected
        # What follows is exactly the next response.
        _, following = conn.read_response()
        assert following.status == 200 and following.body == b"0123456789"
        assert not conn.is_closed(0.1)


@pytest.mark.parametrize("keep_alive", [False, True])
def test_http10_streaming_is_close_delimited(serve, backend, keep_alive):
    # Without a Content-Length an HTTP/1.0 body ends with the connection, even when
    # the client asked to keep it.
    server = serve(APP, "--http", backend)
    headers = [("Connection", "keep-alive")] if keep_alive else []
    with RawConnection(server) as conn:
        conn.send(request("/chunks?n=3", version="1.0", host=False, headers=headers))
        started = time.monotonic()
        data = read_until_close(conn.sock, timeout=3.0)
        assert time.monotonic() - started < 2.0, "not closed after the body"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert b"keep-alive" not in head.lower()
    assert body == b"piece0piece1piece2"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/status?code=204", 204),
        ("GET", "/status?code=304", 304),
        ("HEAD", "/chunks?n=3", 200),
        ("HEAD", "/status?code=200", 200),
    ],
)
def test_no_body_responses(serve, backend, method, path, status):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        conn.send(request(path, method) + request("/fixed"))
        raw_head, response = conn.read_head()
        assert response.status == status
        assert response.header("transfer-encoding") is None
        # Straight after the head: the next response, not a body or chunk terminator.
        raw_next, following = conn.read_response()
        assert raw_next.startswith(b"HTTP/1.1 200 "), raw_next
        assert following.body == b"0123456789"
        assert not conn.is_closed(0.1)


# 6. Expect: 100-continue ---------------------------------------------------------------


def test_expect_continue_sent_when_app_reads(serve, backend):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        conn.send(
            request("/echo", "POST", headers=[("Content-Length", "5"), ("Expect", "100-continue")])
        )
        raw, interim = conn.read_head()
        assert raw == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert interim.status == 100
        conn.send(b"hello")
        _, final = conn.read_response()
        assert final.status == 200
        assert json.loads(final.body)["body"] == "hello"
        # Only one interim response.
        conn.send(request("/fixed"))
        raw_next, _ = conn.read_response()
        assert raw_next.startswith(b"HTTP/1.1 200 ")


def test_expect_continue_not_sent_when_app_does_not_read(serve, backend):
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        conn.send(
            request(
                "/no-read", "POST", headers=[("Content-Length", "5"), ("Expect", "100-continue")]
            )
        )
        raw, final = conn.read_response()
        assert raw.startswith(b"HTTP/1.1 200 "), raw
        assert final.body == b"no-read"
        assert b"100 Continue" not in conn.buffer
        # The client may still send the body; the next request must then work, unless
        # the server said it would close.
        conn.send(b"hello" + request("/fixed", headers=[("Connection", "close")]))
        rest = read_until_close(conn.sock)
        if final.header("connection") == "close":
            assert rest == b""
        else:
            [following] = parse_responses(conn.buffer + rest)
            assert following.status == 200 and following.body == b"0123456789"


def test_expect_continue_ignored_for_http10(serve, backend):
    # RFC 9110 section 10.1.1: a 100-continue expectation in an HTTP/1.0 request MUST
    # be ignored (an HTTP/1.0 client cannot parse a 1xx response).
    server = serve(APP, "--http", backend)
    with RawConnection(server) as conn:
        conn.send(
            request(
                "/echo",
                "POST",
                version="1.0",
                host=False,
                headers=[("Content-Length", "5"), ("Expect", "100-continue")],
            )
        )
        conn.sock.settimeout(0.5)
        try:
            early = conn.sock.recv(65536)
        except TimeoutError:
            early = b""
        assert early == b"", f"sent to an HTTP/1.0 client before its body: {early!r}"
        conn.send(b"hello")
        data = read_until_close(conn.sock)
    [response] = parse_responses(data)
    assert response.status == 200
    assert json.loads(response.body)["body"] == "hello"


# 7. Date, Server and default headers ---------------------------------------------------


def test_date_header_format_and_rate(serve, backend):
    server = serve(APP, "--http", backend)
    seen = []
    start = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        for _ in range(60):
            elapsed = time.monotonic() - start
            if elapsed > 1.5:
                break
            response = client.get("/fixed")
            [date] = response.headers.get_list("date")
            assert IMF_FIXDATE.match(date), date
            seen.append(date)
            time.sleep(0.04)
    elapsed = time.monotonic() - start
    stamps = [email.utils.parsedate_to_datetime(d).timestamp() for d in seen]
    assert abs(stamps[-1] - time.time()) < 3
    assert stamps == sorted(stamps), seen
    distinct = sorted(set(stamps))
    # It moves on (1.5 s covers a second boundary) but at most once a second.
    assert len(distinct) >= 2, seen
    assert len(distinct) <= int(elapsed) + 2, seen
    assert all(b - a >= 1 for a, b in zip(distinct, distinct[1:], strict=False))


def test_default_server_and_date_headers(serve, backend):
    server = serve(APP, "--http", backend)
    response = httpx.get(server.url + "/fixed", timeout=TIMEOUT)
    assert response.headers.get_list("server") == ["shardserve"]
    assert len(response.headers.get_list("date")) == 1


def test_no_server_no_date_headers(serve, backend):
    server = serve(APP, "--http", backend, "--no-server-header", "--no-date-header")
    for path in ("/fixed", "/chunks?n=2"):
        response = httpx.get(server.url + path, timeout=TIMEOUT)
        assert response.status_code == 200
        assert "server" not in response.headers
        assert "date" not in response.headers
    # The server's own error responses too.
    data = exchange(server, request("/fixed", host=False))
    [error] = parse_responses(data)
    assert error.status == 400
    assert error.header("server") is None and error.header("date") is None


def test_custom_headers_on_every_response(serve, backend):
    server = serve(APP, "--http", backend, "--header", "x-a:1", "--header", "x-b:2")
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        for path, status in [
            ("/fixed", 200),
            ("/chunks?n=2", 200),
            ("/echo", 200),
            ("/status?code=204", 204),
            ("/fail", 500),  # the server's own 500
        ]:
            response = client.get(path)
            assert response.status_code == status, path
            assert response.headers.get_list("x-a") == ["1"], path
            assert response.headers.get_list("x-b") == ["2"], path
            assert response.headers["server"] == "shardserve"
    data = exchange(server, request("/fixed", host=False))
    [error] = parse_responses(data)
    assert error.status == 400
    assert error.header_all("x-a") == ["1"] and error.header_all("x-b") == ["2"]


def test_app_server_and_date_headers_replace_defaults(serve, backend):
    server = serve(APP, "--http", backend)
    data = exchange(server, request("/own-headers", headers=[("Connection", "close")]))
    [response] = parse_responses(data)
    assert response.header_all("server") == ["custom/1.0"]
    assert response.header_all("date") == ["Thu, 01 Jan 1970 00:00:00 GMT"]
    assert response.body == b"ok"
    # The defaults are still there for other responses on the same server.
    other = httpx.get(server.url + "/fixed", timeout=TIMEOUT)
    assert other.headers.get_list("server") == ["shardserve"]


# 8. root_path, raw_path, query_string, absolute-form -----------------------------------


def test_root_path(serve, backend):
    server = serve(APP, "--http", backend, "--root-path", "/api")
    data = httpx.get(server.url + "/x/y%20z?q=1", timeout=TIMEOUT).json()
    assert data["root_path"] == "/api"
    assert data["path"] == "/api/x/y z"
    assert data["raw_path"] == "/api/x/y%20z"
    assert data["query_string"] == "q=1"


def test_raw_path_and_query_string(serve, backend):
    server = serve(APP, "--http", backend)
    raw = request("/a%2Fb?x=%20y&z&w=a%2Fb+c", headers=[("Connection", "close")])
    [response] = parse_responses(exchange(server, raw))
    data = json.loads(response.body)
    assert data["path"] == "/a/b"
    assert data["raw_path"] == "/a%2Fb"
    assert data["query_string"] == "x=%20y&z&w=a%2Fb+c"
    assert data["root_path"] == ""


def test_absolute_form_target(serve, backend):
    server = serve(APP, "--http", backend)
    raw = (
        b"GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
        + b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    )
    responses = parse_responses(exchange(server, raw))
    assert [r.status for r in responses] == [200, 200]
    first, second = (json.loads(r.body) for r in responses)
    assert first["path"] == "/x"
    assert first["raw_path"] == "/x"
    assert first["query_string"] == "y=1"
    assert second["path"] == "/"
    assert second["query_string"] == ""


def test_the_date_header_is_formatted_as_email_utils_would():
    """state.http_date replaces email.utils.formatdate (not imported into shards)."""
    import random
    from email.utils import formatdate

    from shardserve.shard.state import http_date

    rng = random.Random(7)
    for second in [0, 951782400, 1764515000, *(rng.randrange(0, 2**33) for _ in range(5000))]:
        assert http_date(second) == formatdate(second, usegmt=True).encode(), second
