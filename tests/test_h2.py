"""HTTP/2 (issue 16): h2c by prior knowledge and h2 over TLS (ALPN), against real
servers with real clients: curl, httpx, nghttp, h2load, and a raw frame-level client
(tests/h2client.py) for what the others cannot say.

Attacks (floods, rapid reset, CONTINUATION, HPACK bombs, slow readers) are in
tests/test_h2_attacks.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
from h2client import (
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    DataFrame,
    H2Client,
    SettingCodes,
)

from apps.h2apps import pattern
from serving import ROOT, TESTS, connect, parse_responses, read_until_close, serving_inherited_fd

APP = "apps.h2apps:app"
MIB = 1024 * 1024
# The parser back-ends HTTP/2 must work beside (the preface is recognised before them).
H2_BACKENDS = ["httptools", "python"]


# Helpers ---------------------------------------------------------------------------------


def tls_args(certs) -> list[str]:
    return ["--ssl-keyfile", str(certs[0]), "--ssl-certfile", str(certs[1])]


def alpn_context(certs, protocols: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs[2]))
    context.set_alpn_protocols(protocols)
    return context


def run(*argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def curl(*args: str) -> subprocess.CompletedProcess:
    return run("curl", "-sS", "--max-time", "10", *args)


def h2c_client(**kwargs) -> httpx.Client:
    """httpx speaking HTTP/2 by prior knowledge to a cleartext server."""
    return httpx.Client(http1=False, http2=True, timeout=kwargs.pop("timeout", 10), **kwargs)


def client(server, **kwargs) -> H2Client:
    c = H2Client.to(server, **kwargs)
    c.handshake()
    return c


def output_lines(server, pattern_: str) -> list[re.Match]:
    regex = re.compile(pattern_)
    return [m for line in server.output.splitlines() if (m := regex.search(line))]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# Negotiation and real clients ---------------------------------------------------------------


@pytest.mark.parametrize("backend", H2_BACKENDS)
def test_curl_prior_knowledge(serve, backend):
    server = serve(APP, "--http", backend)
    result = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", server.url + "/scope?x=1")
    assert result.returncode == 0, result.stderr
    body, version = result.stdout.rsplit("\n", 1)
    assert version == "2"
    scope = json.loads(body)
    assert scope["http_version"] == "2"
    assert scope["scheme"] == "http"
    assert scope["query_string"] == "x=1"
    server.wait_for(r'"GET /scope\?x=1 HTTP/2(\.0)?" 200', timeout=5)


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
@pytest.mark.parametrize("backend", H2_BACKENDS)
def test_raw_h2c_on_each_loop_and_parser(serve, backend, loop):
    server = serve(APP, "--http", backend, "--loop", loop)
    with client(server) as c:
        for _ in range(3):  # three streams, one connection
            response = c.get("/")
            assert response.status == 200 and response.body == b"ok", response
        sid = c.request("/echo", method="POST", body=b"hello h2")
        assert c.response(sid).body == b"hello h2"
        assert not c.goaways and c.h2_error is None, c.describe()


def test_httpx_over_tls_negotiates_h2_by_alpn(serve, certs):
    server = serve(APP, *tls_args(certs))
    assert server.scheme == "https"
    with httpx.Client(http2=True, verify=certs[3], timeout=10) as hc:
        for index in range(3):
            response = hc.get(server.url + f"/scope?i={index}")
            assert response.status_code == 200
            assert response.http_version == "HTTP/2"
            scope = response.json()
            assert scope["http_version"] == "2"
            assert scope["scheme"] == "https"
        response = hc.post(server.url + "/echo", content=b"z" * 300_000)
        assert response.http_version == "HTTP/2"
        assert response.content == b"z" * 300_000
    # The raw client agrees: ALPN picked h2 among h2 and http/1.1.
    c = H2Client((server.host, server.port), tls=alpn_context(certs, ["h2", "http/1.1"]))
    with c:
        assert c.alpn == "h2"
        c.handshake()
        assert c.get("/").body == b"ok"


def test_http11_still_served_on_the_same_port_and_over_tls(serve, certs):
    plain = serve(APP)
    with httpx.Client(timeout=10) as hc:
        response = hc.get(plain.url + "/scope")
        assert response.http_version == "HTTP/1.1"
        assert response.json()["http_version"] == "1.1"
    with client(plain) as c:  # h2c on the same port, same server
        assert c.get("/").status == 200
    tls = serve(APP, *tls_args(certs))
    with httpx.Client(http2=False, verify=certs[3], timeout=10) as hc:
        response = hc.get(tls.url + "/scope")
        assert response.http_version == "HTTP/1.1"
        assert response.json()["http_version"] == "1.1"
        assert response.json()["scheme"] == "https"
    # A client that offers only http/1.1 gets it.
    context = alpn_context(certs, ["http/1.1"])
    with (
        socket.create_connection((tls.host, tls.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = read_until_close(sock, 5)
    [response] = parse_responses(data)
    assert response.status == 200 and response.body == b"ok"


def test_curl_http2_over_tls(serve, certs):
    server = serve(APP, *tls_args(certs))
    result = curl("--http2", "--cacert", str(certs[2]), "-w", "\n%{http_version}", server.url + "/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n2"


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_nghttp_get(serve, certs, tls):
    server = serve(APP, *(tls_args(certs) if tls else []))
    result = run("nghttp", "-v", "-t", "10", server.url + "/trailers?n=2")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"recv SETTINGS frame <length=\d+, flags=0x00, stream_id=0>", out), out
    assert "(niv=" in out
    # (nghttp opens its request stream after a few PRIORITY-only idle streams.)
    status = re.search(r"recv \(stream_id=(\d+)\) :status: 200", out)
    assert status, out
    sid = status[1]
    assert "part0" in out and "part1" in out  # (interleaved with the frame log)
    assert re.search(rf"recv \(stream_id={sid}\) x-checksum: 2", out), out  # the trailers
    assert re.search(rf"recv HEADERS frame <length=\d+, flags=0x05, stream_id={sid}>", out), out


def test_h2load_fixed_count_all_succeed(serve):
    server = serve(APP, "--no-access-log")
    result = run(
        "h2load", "-n", "400", "-c", "2", "-m", "10", "-t", "1", server.url + "/", timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(
        r"requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed", result.stdout
    ), result.stdout
    assert "status codes: 400 2xx" in result.stdout, result.stdout


def test_upgrade_h2c_is_served_as_http11(serve):
    server = serve(APP)
    with connect(server) as sock:
        sock.sendall(
            b"GET /scope HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\n"
            b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        sock.settimeout(5)
        data = b""
        for _ in range(100):
            if b"}" in data:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    [response] = parse_responses(data)
    assert response.status == 200, response
    assert json.loads(response.body)["http_version"] == "1.1"


def test_response_header_block_larger_than_a_frame_goes_in_continuations(serve):
    """30 KB of response headers: HEADERS and CONTINUATION frames of at most the
    client's frame size, read whole by h2 and by curl."""
    server = serve(APP)
    with H2Client.to(server) as c:
        response = c.get("/big-headers?n=30")
    assert response.status == 200 and response.body == b"big-headers", response
    fillers = [name for name, _ in response.headers if name.startswith(b"x-filler-")]
    assert len(fillers) == 30 and response.header("x-filler-29") == b"v" * 1000
    done = subprocess.run(
        ["curl", "-s", "-D", "-", "-o", "/dev/null", "--http2-prior-knowledge"]
        + [server.url + "/big-headers?n=30"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout.startswith("HTTP/2 200"), done
    assert done.stdout.count("x-filler-") == 30, done.stdout[:300]


@pytest.mark.parametrize("backend", H2_BACKENDS)
def test_no_http2_answers_the_preface_505(serve, backend):
    server = serve(APP, "--http", backend, "--no-http2")
    with connect(server) as sock:
        sock.sendall(PREFACE)
        data = read_until_close(sock, 5)
    [response] = parse_responses(data)
    assert response.status == 505, response  # (HTTP/2.0: a version not served here)
    assert response.header("connection") == "close", response
    assert httpx.get(server.url + "/", timeout=5).text == "ok"  # HTTP/1.1 served


def test_no_http2_over_tls_offers_only_http11(serve, certs):
    server = serve(APP, "--no-http2", *tls_args(certs))
    with httpx.Client(http2=True, verify=certs[3], timeout=10) as hc:
        response = hc.get(server.url + "/scope")
    assert response.http_version == "HTTP/1.1"
    assert response.json()["http_version"] == "1.1"
    # A client offering only h2: no h2 (no protocol chosen, or the handshake refused).
    try:
        context = alpn_context(certs, ["h2"])
        with (
            socket.create_connection((server.host, server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            assert sock.selected_alpn_protocol() in (None, "http/1.1")
    except ssl.SSLError:
        pass


def test_explicit_http2_flag(serve):
    server = serve(APP, "--http2")
    with client(server) as c:
        assert c.get("/").body == b"ok"


def test_uds(serve, tmp_path):
    path = tmp_path / "h2.sock"
    server = serve(APP, "--uds", str(path), port=False, ready=False)
    server.wait_for(rf"shardserve running on http\+unix://{path} \(", timeout=15)
    result = curl("--http2-prior-knowledge", "--unix-socket", str(path), "http://localhost/scope")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["http_version"] == "2"
    with H2Client(str(path)) as c:
        c.handshake()
        assert c.get("/").body == b"ok"


def test_fd(tmp_path):
    with serving_inherited_fd(tmp_path / "output.txt", APP) as (port, proc):
        with H2Client(("127.0.0.1", port), timeout=10) as c:
            c.handshake(10)
            response = c.get("/scope")
            assert response.status == 200
            assert json.loads(response.body)["http_version"] == "2"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


# Semantics: scope, headers --------------------------------------------------------------


def test_scope_of_an_h2_stream(serve):
    server = serve(APP)
    with client(server) as c:
        sid = c.request(
            "/scope/a%20b?x=1&y=%20",
            method="POST",
            headers=[("x-one", "1"), ("cookie", "a=1"), ("cookie", "b=2"), ("x-two", "2")],
            body=b"12345",
            authority="example.org:8443",
        )
        response = c.response(sid)
    assert response.status == 200, response
    scope = json.loads(response.body)
    assert scope["type"] == "http"
    assert scope["http_version"] == "2"
    assert scope["scheme"] == "http"
    assert scope["method"] == "POST"
    assert scope["path"] == "/scope/a b"
    assert scope["raw_path"] == "/scope/a%20b"
    assert scope["query_string"] == "x=1&y=%20"
    assert scope["body_length"] == 5
    headers = scope["headers"]
    assert headers[0] == ["host", "example.org:8443"], headers
    assert not [name for name, _ in headers if name.startswith(":")], headers
    names = [name for name, _ in headers]
    assert names.index("x-one") < names.index("x-two")
    assert "http.response.trailers" in scope["extensions"]
    assert scope["extensions"]["http.response.trailers"] == {}
    assert scope["server"][1] == server.port
    assert scope["client"][0] == "127.0.0.1"


def test_scope_over_tls_is_https(serve, certs):
    server = serve(APP, *tls_args(certs))
    with H2Client((server.host, server.port), tls=alpn_context(certs, ["h2"])) as c:
        c.handshake()
        scope = json.loads(c.get("/scope").body)
    assert scope["scheme"] == "https" and scope["http_version"] == "2"


def test_response_headers_lowercase_without_connection_specific(serve):
    server = serve(APP)
    http11 = httpx.get(server.url + "/", timeout=5)
    with client(server) as c:
        response = c.get("/conn-headers")
    assert response.status == 200 and response.body == b"conn-headers", response
    names = [name for name, _ in response.headers]
    for name in names:
        assert name == name.lower(), names
    for forbidden in (
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    ):
        assert forbidden not in names, response.headers
    assert response.header("x-custom-header") == b"Mixed"
    # server and date defaults as on HTTP/1.1.
    assert response.header("server") == http11.headers["server"].encode()
    assert response.header("date") is not None
    assert names[0] == b":status"


def test_status_without_body(serve):
    server = serve(APP)
    with client(server) as c:
        for code in (204, 304, 404, 500):
            response = c.get(f"/status?code={code}")
            assert response.status == code and response.body == b"", response


# Bodies and flow control ------------------------------------------------------------------


def test_five_mib_request_body_echoed_and_five_mib_response(serve):
    server = serve(APP, "--no-access-log")
    body = os.urandom(5 * MIB)
    with client(server, timeout=30) as c:
        sid = c.request("/echo", method="POST", body=body)
        response = c.response(sid, 30)
        assert response.status == 200 and response.header("content-length") == b"%d" % len(body)
        assert response.body == body
        big = c.get(f"/big?n={5 * MIB}", 30)
        assert big.status == 200
        assert big.body == pattern(5 * MIB)
        assert c.h2_error is None and not c.goaways, c.describe()


def test_five_mib_with_httpx_over_tls(serve, certs):
    server = serve(APP, "--no-access-log", *tls_args(certs))
    body = os.urandom(5 * MIB)
    with httpx.Client(http2=True, verify=certs[3], timeout=30) as hc:
        response = hc.post(server.url + "/echo", content=body)
        assert response.http_version == "HTTP/2"
        assert response.content == body
        assert hc.get(server.url + f"/big?n={5 * MIB}").content == pattern(5 * MIB)


def test_app_that_never_reads_bounds_the_stream_to_its_window(serve):
    server = serve(APP)
    with client(server) as c:
        settings = c.handshake()
        assert settings.get(SettingCodes.INITIAL_WINDOW_SIZE, 65535) == 65535
        sid = c.start("/hold?s=4&tag=noread", method="POST", end_stream=False)
        sent = c.send_body(sid, b"x" * 300_000, end_stream=False, timeout=1.5)
        assert sent == 65535, sent
        c.pump(0.5)
        assert c.window_update_total(sid) == 0, c.window_updates
        # Past the window: the server must refuse it (stream or connection error).
        c.send_raw(DataFrame(sid, data=b"y" * 1000))
        c.wait(lambda: sid in c.resets or c.goaways, 3)
        codes = [c.resets.get(sid)] + [g.error_code for g in c.goaways]
        assert FLOW_CONTROL_ERROR in codes, c.describe()
    with client(server) as c:  # and serves on
        assert c.get("/").body == b"ok"


def test_connection_window_bounds_all_streams_together(serve):
    server = serve(
        APP,
        "--h2-initial-stream-window-size",
        "32768",
        "--h2-initial-connection-window-size",
        "131072",
    )
    with client(server) as c:
        assert c.handshake().get(SettingCodes.INITIAL_WINDOW_SIZE) == 32768
        c.pump(0.3)  # the connection's WINDOW_UPDATE, if the server sends one
        sids = [c.start(f"/hold?s=4&tag=w{i}", method="POST", end_stream=False) for i in range(6)]
        total = 0
        for sid in sids:
            sent = c.send_body(sid, b"x" * 40000, end_stream=False, timeout=0.6)
            assert sent <= 32768
            total += sent
        assert total == 131072, total
        c.pump(0.5)
        assert not [u for u in c.window_updates if u[0] in sids], c.window_updates


def test_window_updates_follow_the_app_reading(serve):
    """An app that reads gets the whole upload even with small windows."""
    server = serve(APP, "--h2-initial-stream-window-size", "16384")
    body = os.urandom(MIB)
    with client(server, timeout=20) as c:
        sid = c.request("/scope", method="POST", body=body)
        scope = json.loads(c.response(sid).body)
    assert scope["body_length"] == MIB
    assert scope["receives"] >= MIB // 16384 // 2  # streamed, not gathered at once


def test_response_waits_while_the_client_window_is_shut(serve):
    server = serve(APP)
    n, size = 40, 16384
    with client(server, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}, auto_ack=False) as c:
        sid = c.request(f"/stream?tag=shut&n={n}&size={size}")
        c.wait(lambda: bool(c.responses[sid].headers), 5)
        assert c.responses[sid].status == 200
        c.pump(1.5)
        response = c.responses[sid]
        assert len(response.data) == 0, "DATA sent into a shut window"
        sent = output_lines(server, r"SENT shut (\d+)")
        assert len(sent) < n, "the app's sends all returned while the window was shut"
        assert not output_lines(server, r"ENDED shut")
        c.open_window(n * size, sid)
        c.open_window(n * size)  # and the connection's
        response = c.response(sid, 10)
    assert response.ended and len(response.data) == n * size
    assert c.h2_error is None, c.h2_error  # never more than the windows allowed
    server.wait_for(r"ENDED shut", 5)
    assert not output_lines(server, r"SEND-ERROR shut")


def test_max_inbound_frame_size_is_advertised_and_used(serve):
    server = serve(APP, "--h2-max-inbound-frame-size", "32768")
    with client(server) as c:
        assert c.handshake().get(SettingCodes.MAX_FRAME_SIZE) == 32768
        c.pump(0.2)  # (the server has our ACK of its SETTINGS)
        sid = c.start("/echo", method="POST", end_stream=False)
        c.send_raw(DataFrame(sid, data=b"q" * 32768, flags=["END_STREAM"]))
        response = c.response(sid)
    assert response.status == 200 and response.body == b"q" * 32768


def test_default_settings_advertised(serve):
    server = serve(APP)
    with client(server) as c:
        settings = c.handshake()
    assert settings.get(SettingCodes.MAX_CONCURRENT_STREAMS) == 100
    assert settings.get(SettingCodes.MAX_FRAME_SIZE, 16384) == 16384
    assert settings.get(SettingCodes.ENABLE_PUSH, 0) == 0


# Resets and trailers ------------------------------------------------------------------------


def test_rst_stream_gives_the_app_http_disconnect(serve):
    server = serve(APP)
    with client(server) as c:
        sid = c.start("/wait-disconnect?tag=rst1", method="POST", end_stream=False)
        c.flush()
        server.wait_for(r"WAITING rst1", 5)
        c.reset(sid)
        c.flush()
        server.wait_for(r"DISCONNECT rst1", 5)
        assert c.get("/").body == b"ok"  # the connection lives on
        assert not c.goaways, c.describe()
    assert not output_lines(server, r"NO-DISCONNECT rst1")


def test_rst_stream_ends_a_streaming_app(serve):
    server = serve(APP)
    with client(server) as c:
        sid = c.request("/stream?tag=rst2&n=3000&size=1000&sleep=0.01")
        c.wait(lambda: len(c.responses[sid].data) >= 3000, 5)
        c.reset(sid)
        c.flush()
        server.wait_for(r"ENDED rst2", 5)
        sent = len(output_lines(server, r"SENT rst2"))
        time.sleep(0.3)
        assert len(output_lines(server, r"SENT rst2")) <= sent + 1
        assert sent < 3000
        assert c.get("/").body == b"ok"


def test_response_trailers(serve):
    server = serve(APP)
    with client(server) as c:
        response = c.get("/trailers?n=3")
    assert response.status == 200
    assert response.body == b"part0part1part2"
    assert response.trailers == [(b"x-checksum", b"3"), (b"x-done", b"yes")], response
    headers_frames = [f for f in c.frames if type(f).__name__ == "HeadersFrame"]
    assert len(headers_frames) == 2
    assert "END_STREAM" in headers_frames[-1].flags
    last = [f for f in c.frames if getattr(f, "stream_id", 0) == 1][-1]
    assert last is headers_frames[-1]


# Malformed requests: stream errors (RFC 9113 8.3) ------------------------------------------

GOOD = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/")]
MALFORMED = {
    "missing-method": [(":scheme", "http"), (":authority", "x"), (":path", "/")],
    "missing-scheme": [(":method", "GET"), (":authority", "x"), (":path", "/")],
    "missing-path": [(":method", "GET"), (":scheme", "http"), (":authority", "x")],
    "duplicate-method": [*GOOD, (":method", "POST")],
    "duplicate-scheme": [*GOOD[:2], (":scheme", "https"), *GOOD[2:]],
    "duplicate-path": [*GOOD, (":path", "/other")],
    "unknown-pseudo": [*GOOD, (":foo", "bar")],
    "response-pseudo": [*GOOD, (":status", "200")],
    "pseudo-after-regular": [*GOOD[:3], ("x-a", "1"), GOOD[3]],
    "uppercase-name": [*GOOD, ("X-Upper", "1")],
    "connection": [*GOOD, ("connection", "keep-alive")],
    "keep-alive": [*GOOD, ("keep-alive", "timeout=5")],
    "proxy-connection": [*GOOD, ("proxy-connection", "keep-alive")],
    "transfer-encoding": [*GOOD, ("transfer-encoding", "chunked")],
    "upgrade": [*GOOD, ("upgrade", "websocket")],
    "te-gzip": [*GOOD, ("te", "gzip")],
    "empty-path": [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "")],
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_a_stream_error(serve, case):
    server = serve(APP)
    with client(server, validate=False) as c:
        assert c.get("/").status == 200  # (HPACK state in use before)
        sid = c.send_headers_raw(MALFORMED[case])
        c.flush()
        c.wait(lambda: sid in c.resets or c.goaways or c.closed, 5)
        assert c.resets.get(sid) == PROTOCOL_ERROR, c.describe()
        assert not c.goaways, c.describe()
        response = c.get("/after")  # the same connection serves on
        assert response.status == 200 and response.body == b"ok", response
        assert c.h2_error is None, c.h2_error
    assert "Traceback" not in server.output


def test_te_trailers_is_allowed(serve):
    server = serve(APP)
    with client(server, validate=False) as c:
        sid = c.send_headers_raw([*GOOD, ("te", "trailers")])
        assert c.response(sid).status == 200


# Limits ---------------------------------------------------------------------------------------


def test_streams_beyond_the_limit_are_refused(serve):
    server = serve(APP, "--h2-max-concurrent-streams", "2")
    with client(server) as c:
        assert c.handshake().get(SettingCodes.MAX_CONCURRENT_STREAMS) == 2
        c.pump(0.2)
        first = c.request("/hold?s=2&tag=lim1")
        second = c.request("/hold?s=2&tag=lim2")
        server.wait_for(r"HOLD lim1", 5)
        server.wait_for(r"HOLD lim2", 5)
        third = c.send_headers_raw(c.request_headers("/hold?s=0&tag=lim3"))
        c.flush()
        c.wait(lambda: third in c.resets, 3)
        assert c.resets.get(third) == REFUSED_STREAM, c.describe()
        assert c.response(first, 5).body == b"held lim1"
        assert c.response(second, 5).body == b"held lim2"
        assert c.get("/").body == b"ok"  # room again
        assert not c.goaways
    assert not output_lines(server, r"HOLD lim3")


def test_header_list_within_the_limit_is_served(serve):
    server = serve(APP, "--h2-max-header-list-size", "65536")
    with client(server) as c:
        response = c.get("/scope", headers=[("x-big", "v" * 30000)])
    assert response.status == 200
    headers = dict((k, v) for k, v in json.loads(response.body)["headers"])
    assert headers["x-big"] == "v" * 30000


# Timeouts ------------------------------------------------------------------------------------


def test_keep_alive_timeout_closes_an_idle_connection_with_goaway(serve):
    server = serve(APP, "--timeout-keep-alive", "1")
    with client(server) as c:
        assert c.get("/").status == 200
        began = time.monotonic()
        goaway = c.wait_goaway(5)
        assert goaway is not None, c.describe()
        assert goaway.error_code == NO_ERROR
        assert goaway.last_stream_id == 1
        assert c.wait_closed(3), c.describe()
        took = time.monotonic() - began
    assert 0.7 < took < 4, took


def test_keep_alive_timeout_spares_a_connection_with_a_stream_open(serve):
    server = serve(APP, "--timeout-keep-alive", "1")
    with client(server) as c:
        response = c.get("/hold?s=2.5&tag=ka", timeout=6)
        assert response.status == 200 and response.body == b"held ka", response
        assert not c.closed and not c.goaways, c.describe()


# Frameworks --------------------------------------------------------------------------------


def test_starlette_over_h2(serve, certs):
    server = serve("apps.frameworks:starlette_app", *tls_args(certs))
    with httpx.Client(http2=True, verify=certs[3], base_url=server.url, timeout=10) as hc:
        response = hc.get("/text")
        assert response.http_version == "HTTP/2"
        assert response.text == "hello from starlette"
        assert response.headers["x-middleware"] == "yes"
        assert hc.get("/json/abc", params={"a": "1"}).json() == {
            "framework": "starlette",
            "query": {"a": "1"},
            "path_param": "abc",
        }
        with hc.stream("GET", "/stream", params={"n": "20"}) as streamed:
            received = b"".join(streamed.iter_bytes())
        assert received == b"".join(f"chunk-{i}\n".encode() for i in range(20))
        body = os.urandom(200_000)
        echoed = hc.post("/echo", content=body, headers={"content-type": "application/x-test"})
        assert echoed.json()["length"] == len(body)
        assert echoed.json()["content_type"] == "application/x-test"
        assert hc.get("/missing").status_code == 404


def test_fastapi_over_h2c(serve):
    server = serve("apps.frameworks:fastapi_app")
    with h2c_client(base_url=server.url) as hc:
        response = hc.get("/items/5", params={"q": "x"})
        assert response.http_version == "HTTP/2"
        assert response.json() == {"item_id": 5, "q": "x"}
        created = hc.post("/items", json={"name": "n", "price": 2.5, "quantity": 2})
        assert created.status_code == 201 and created.json()["total"] == 5.0
        assert hc.post("/items", json={"name": ""}).status_code == 422
        assert hc.get("/sync", params={"value": 21}).json()["doubled"] == 42
        secure = hc.get("/secure", headers={"x-token": "secret-token"})
        assert secure.json()["token"] == "secret-token"
        assert hc.get("/secure", headers={"x-token": "no"}).status_code == 401
        assert hc.get("/lifespan").json()["greeting"] == "hello from lifespan"


# Metrics and status --------------------------------------------------------------------------


def metrics_port(server) -> int:
    return int(server.wait_for(r"Metrics and health on http://127\.0\.0\.1:(\d+)/metrics", 5)[1])


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def error_kinds(samples) -> dict[str, float]:
    return {
        dict(labels)["kind"]: value
        for (name, labels), value in samples.items()
        if name == "shardserve_errors_total"
    }


def test_metrics_and_status_count_h2(serve, tmp_path):
    control = str(tmp_path / "ctl.sock")
    server = serve(
        APP,
        "--metrics",
        "127.0.0.1:0",
        "--control-socket",
        control,
        "--h2-max-concurrent-streams",
        "1",
    )
    port = metrics_port(server)
    with client(server) as c:  # connection 1: three requests
        for _ in range(3):
            assert c.get("/").status == 200
    with client(server, validate=False) as c:  # connection 2: one refused, one malformed
        held = c.request("/hold?s=1&tag=m")
        server.wait_for(r"HOLD m", 5)
        refused = c.send_headers_raw(c.request_headers("/"))
        c.wait(lambda: refused in c.resets, 3)
        assert c.resets[refused] == REFUSED_STREAM
        assert c.response(held, 5).status == 200
        bad = c.send_headers_raw([*GOOD, ("connection", "close")])
        c.wait(lambda: bad in c.resets, 3)
        assert c.resets[bad] == PROTOCOL_ERROR
    with client(server) as c:  # connection 3: a PING flood
        for _ in range(3000):
            c.ping()
        c.wait(lambda: bool(c.goaways), 5)
        assert c.goaways and c.goaways[0].error_code == ENHANCE_YOUR_CALM, c.describe()

    def counted():
        samples = scrape(port)
        kinds = error_kinds(samples)
        if (
            samples.get(("shardserve_http2_requests_total", ()), 0) >= 4
            and kinds.get("http2_flood", 0) >= 1
        ):
            return samples
        return None

    samples = wait_until(counted, 8, "h2 counters in /metrics")
    assert samples[("shardserve_http2_connections_total", ())] == 3
    assert samples[("shardserve_http2_requests_total", ())] == 4  # 3 + the held one
    kinds = error_kinds(samples)
    assert kinds["http2_refused"] == 1, kinds
    assert kinds["http2_protocol"] == 1, kinds
    assert kinds["http2_flood"] == 1, kinds

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    status = subprocess.run(
        [sys.executable, "-m", "shardserve", "status", "--control-socket", control, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )
    assert status.returncode == 0, status.stderr
    totals = json.loads(status.stdout)["totals"]
    assert totals["h2_connections"] == 3, totals
    assert totals["h2_requests"] == 4, totals
    assert totals["h2_refused"] == 1, totals
    assert totals["h2_protocol"] == 1, totals
    assert totals["h2_floods"] == 1, totals


# Lifecycle: shutdown, limit-max-requests, rolling restarts ----------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_sends_goaway_and_finishes_streams(serve, signum):
    server = serve(APP)
    idle = client(server)
    busy = client(server)
    try:
        assert idle.get("/").status == 200
        assert busy.get("/").status == 200  # stream 1
        sid = busy.request("/hold?s=2&tag=shut")  # stream 3, in flight
        server.wait_for(r"HOLD shut", 5)
        signalled = time.monotonic()
        server.signal(signum)
        goaway = busy.wait_goaway(3)
        assert goaway is not None, busy.describe()
        assert goaway.error_code == NO_ERROR
        assert goaway.last_stream_id == sid
        # The idle connection: GOAWAY and closed at once.
        assert idle.wait_goaway(2) is not None, idle.describe()
        assert idle.goaways[0].error_code == NO_ERROR
        assert idle.wait_closed(2), idle.describe()
        response = busy.response(sid, 6)
        assert response.status == 200 and response.body == b"held shut", response
        assert time.monotonic() - signalled > 1.0
        assert busy.wait_closed(5), busy.describe()
        assert server.wait_exit(10) == 0
    finally:
        idle.close()
        busy.close()
    assert "Traceback" not in server.output


def test_limit_max_requests_goaway_lets_accepted_streams_finish(serve):
    server = serve("apps.lifecycle:app", "--shards", "2", "--limit-max-requests", "5")
    deadline = time.monotonic() + 15
    outcomes = []
    for _ in range(30):  # connections, until one is told to go away
        if time.monotonic() > deadline:
            break
        with client(server) as c:
            sids = []
            for _ in range(12):  # pairs of streams in flight, until GOAWAY
                if c.goaways or c.closed or c.h2_error:
                    break
                sids += [c.request("/slow?seconds=0.05"), c.request("/slow?seconds=0.05")]
                c.wait(
                    lambda: (
                        bool(c.goaways)
                        or all(
                            c.responses[s].ended or c.responses[s].reset is not None
                            for s in sids  # noqa: B023 - called at once
                        )
                    ),
                    3,
                )
            if not c.goaways:
                continue
            goaway = c.goaways[0]
            c.wait(lambda: c.closed, 5)
            outcomes.append((goaway, {s: c.responses[s] for s in sids}))
            break
    assert outcomes, server.output
    goaway, responses = outcomes[0]
    assert goaway.error_code == NO_ERROR
    for sid, response in responses.items():
        if sid <= goaway.last_stream_id:
            assert response.ended and response.status == 200, (goaway, response)
        else:
            assert response.status is None, (goaway, response)  # never processed
    assert re.search(r"Replacing shard \d \[\d+\]: it served 5 requests\.", server.output)


@dataclass
class Outcome:
    started: float
    finished: float
    pid: int | None
    error: str | None
    kind: str


class H2Load:
    """HTTP/2 load with a count and a deadline, every request's outcome recorded:

    - ``keepalive`` threads: an httpx client each (h2c by prior knowledge), one request
      at a time on its connection;
    - ``new`` threads: a new httpx connection per request;
    - ``mux`` threads: the raw client with three streams (``/slow?seconds=0.05``) always
      in flight on one connection.  After a GOAWAY the streams it covers must finish
      (else failure); those above its last stream id were not processed and are asked
      again on a new connection, as RFC 9113 6.8 allows.  (httpx cannot be this
      client: h2's state machine rejects any frame after a GOAWAY, so httpx fails the
      very streams a GOAWAY lets finish.)
    """

    def __init__(
        self, server, keepalive=2, new=1, mux=1, duration: float = 20.0, cap: int = 20000
    ) -> None:
        self.server = server
        self.results: list[Outcome] = []
        self.retried = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + duration
        self.cap = cap
        kinds = ["keepalive"] * keepalive + ["new"] * new + ["mux"] * mux
        self.threads = [
            threading.Thread(target=self._run_mux if kind == "mux" else self._run, args=(kind,))
            for kind in kinds
        ]
        for thread in self.threads:
            thread.daemon = True
            thread.start()

    def _record(self, outcome: Outcome) -> None:
        with self.lock:
            self.results.append(outcome)

    def _going(self) -> bool:
        return not self.stopping.is_set() and time.monotonic() < self.deadline

    def _one(self, hc: httpx.Client, kind: str) -> None:
        began = time.monotonic()
        try:
            response = hc.get(self.server.url + "/")
            if response.status_code != 200 or response.http_version != "HTTP/2":
                raise AssertionError(f"{response.status_code} {response.http_version}")
            outcome = Outcome(began, time.monotonic(), response.json()["pid"], None, kind)
        except Exception as exc:  # noqa: BLE001 - a failed request, asserted on
            outcome = Outcome(began, time.monotonic(), None, repr(exc), kind)
        self._record(outcome)

    def _run(self, kind: str) -> None:
        keep = h2c_client(timeout=10) if kind == "keepalive" else None
        try:
            for _ in range(self.cap):
                if not self._going():
                    return
                if keep is not None:
                    self._one(keep, kind)
                else:
                    with h2c_client(timeout=10) as hc:
                        self._one(hc, kind)
                time.sleep(0.003)
        finally:
            if keep is not None:
                keep.close()

    def _settle(self, c: H2Client, sid: int, began: float) -> None:
        response = c.responses[sid]
        if response.ended and response.status == 200:
            pid = json.loads(response.body)["pid"]
            self._record(Outcome(began, time.monotonic(), pid, None, "mux"))
        else:
            self._record(Outcome(began, time.monotonic(), None, repr(response), "mux"))

    def _run_mux(self, kind: str) -> None:
        c = None
        inflight: dict[int, float] = {}
        try:
            for _ in range(self.cap):
                if not self._going():
                    return
                if c is None:
                    c = H2Client((self.server.host, self.server.port), timeout=5)
                    c.handshake()
                    inflight = {}
                while len(inflight) < 3:
                    inflight[c.request("/slow?seconds=0.05")] = time.monotonic()
                c.wait(
                    lambda c=c, inflight=inflight: (
                        bool(c.goaways)
                        or c.closed
                        or any(
                            c.responses[s].ended or c.responses[s].reset is not None
                            for s in inflight
                        )
                    ),
                    5,
                )
                if c.goaways:
                    last = c.goaways[0].last_stream_id
                    covered = [s for s in inflight if s <= last]
                    c.wait(
                        lambda c=c, covered=covered: all(
                            c.responses[s].ended or c.responses[s].reset is not None
                            for s in covered
                        ),
                        5,
                    )
                    for sid in covered:
                        self._settle(c, sid, inflight[sid])
                    with self.lock:
                        self.retried += len(inflight) - len(covered)
                    c.close()
                    c = None
                    continue
                for sid in [s for s in inflight if c.responses[s].ended or c.closed]:
                    self._settle(c, sid, inflight.pop(sid))
                for sid in [s for s in inflight if c.responses[s].reset is not None]:
                    self._settle(c, sid, inflight.pop(sid))
                if c.closed:
                    c.close()
                    c = None
        finally:
            if c is not None:
                c.close()

    def stop(self) -> list[Outcome]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)
        assert not any(t.is_alive() for t in self.threads), "load threads still running"
        with self.lock:
            return list(self.results)


def test_limit_request_body_on_h2_streams(serve):
    """--limit-request-body on HTTP/2: a declared length above it is answered 413 before
    the app runs; a body without a declared length that grows past it is answered 413
    (no response had begun); either way the connection serves the next stream."""
    server = serve(APP, "--limit-request-body", "1000")
    with client(server) as c:
        declared = c.get(
            "/echo", method="POST", headers=[("content-length", "5000")], body=b"x" * 5000
        )
        assert declared.status == 413, declared
        grown = c.get("/echo", method="POST", body=b"y" * 5000)
        assert grown.status == 413 or grown.reset is not None, grown
        small = c.get("/echo", method="POST", body=b"z" * 500)
        assert small.status == 200 and bytes(small.data) == b"z" * 500, small


def started_pids(server) -> set[int]:
    return {int(m[2]) for m in re.finditer(r"Started shard (\d+) \[(\d+)\]", server.output)}


def test_rolling_restarts_under_h2_load_fail_no_request(serve):
    """Two SIGHUP rolling restarts under HTTP/2 load (httpx keep-alive and new
    connections, and a client keeping streams in flight on one connection): every
    request is answered; after the restarts only the new shards answer."""
    server = serve("apps.lifecycle:app", "--shards", "2", "--no-access-log")
    first = started_pids(server)
    assert len(first) == 2
    load = H2Load(server, duration=25)
    windows = []
    try:
        for count in (1, 2):
            time.sleep(1.0)
            hup = time.monotonic()
            server.signal(signal.SIGHUP)
            wait_until(
                lambda n=count: server.output.count("Rolling restart complete.") >= n,
                10,
                "the rolling restart",
            )
            windows.append((hup, time.monotonic()))
        time.sleep(3.0)  # (the old shards' connections drain within 2 s)
    finally:
        results = load.stop()
    failed = [r for r in results if r.error]
    assert not failed, (len(failed), len(results), failed[:5])
    assert len(results) > 100, len(results)
    for hup, done in windows:
        for kind in ("keepalive", "new"):
            answered = [r for r in results if r.kind == kind and hup <= r.finished <= done + 0.5]
            assert answered, (kind, hup)
    assert [r for r in results if r.kind == "mux"], "the multiplexing client got nothing"
    newest = started_pids(server) - first
    late = {r.pid for r in results if r.started > windows[-1][1] + 2.5}
    assert late and late <= newest, (late, first, newest)
