"""The example app answers over a real socket, with every back-end."""

import time

import httpx

from serving import connect, exchange, parse_responses, read_until_close


def test_hello(serve, backend):
    server = serve("apps.echo:hello", "--http", backend)
    response = httpx.get(server.url + "/")
    assert response.status_code == 200
    assert response.text == "Hello, world!"
    assert response.headers["server"] == "shardserve"
    assert "date" in response.headers


def test_scope(serve, backend):
    server = serve("apps.echo:scope_json", "--http", backend)
    response = httpx.post(server.url + "/a%2Fb/c%20d?x=1&y=2", content=b"hello")
    scope = response.json()
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/a/b/c d"
    assert scope["raw_path"] == "/a%2Fb/c%20d"
    assert scope["query_string"] == "x=1&y=2"
    assert scope["root_path"] == ""
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["state"] == {}
    assert scope["body_length"] == 5
    assert ["host", f"127.0.0.1:{server.port}"] in scope["headers"]


def test_pipelined_raw(serve, backend):
    server = serve("apps.echo:hello", "--http", backend)
    raw = (
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    responses = parse_responses(exchange(server, raw))
    assert [r.status for r in responses] == [200, 200]
    assert [r.body for r in responses] == [b"Hello, world!"] * 2


def _versions(data: bytes) -> list[str]:
    import json

    return [json.loads(r.body)["http_version"] for r in parse_responses(data)]


def test_http_version_wherever_the_request_line_falls(serve, backend):
    """The version is right whether a request line starts a packet, follows another
    request or a body tail in the same packet, or is split across packets.  (The app
    sends no Content-Length, so each HTTP/1.0 response ends the connection.)"""
    server = serve("apps.echo:scope_json", "--http", backend)
    cases = [
        ([b"GET /a HTTP/1.0\r\n\r\n"], ["1.0"]),
        ([b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.0\r\n\r\n"], ["1.1", "1.0"]),
        (
            [
                b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab",
                b"cdeGET /d HTTP/1.0\r\n\r\n",
            ],
            ["1.1", "1.0"],
        ),
        ([b"GET /e HTTP/1.", b"0\r\n\r\n"], ["1.0"]),
        ([b"GET /f HTTP/1.1\r", b"\nHost: x\r\nConnection: close\r\n\r\n"], ["1.1"]),
    ]
    for pieces, expected in cases:
        with connect(server) as sock:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.1)
            data = read_until_close(sock, timeout=3)
        assert _versions(data) == expected, pieces
