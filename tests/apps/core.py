"""Apps for the core HTTP/1.1 tests (tests/test_http_core.py).

``app`` routes on the request path:

- ``/fixed``: ``0123456789`` with its Content-Length, in two body messages.
- ``/big?n=N&cl=0|1``: N bytes of ``abc...z`` repeated, in 104 KiB messages, with its
  Content-Length unless ``cl=0``.
- ``/more``: declares Content-Length 5 and sends 10 bytes in one message.
- ``/more-split``: declares Content-Length 5, sends ``abc`` then ``defgh``.
- ``/fewer``: declares Content-Length 10, sends ``12345`` and finishes.
- ``/chunks?n=N&empty_last=1&empty_mid=1``: N body messages without Content-Length
  (``piece0``, ``piece1``, ...); optionally a final empty message, or empty messages
  with more_body between the pieces.
- ``/status?code=N``: status N, no Content-Length, a body the server must drop.
- ``/no-read``: answers at once without reading the request body.
- ``/own-headers``: sets its own ``server`` and ``date`` headers.
- ``/disconnect?tag=T``: reads the body, printing ``RECV T <size> <more_body>`` per
  event, until ``http.disconnect``, then prints ``DISCONNECT T``.
- ``/after?tag=T``: reads the body, responds, then calls receive() once more and
  prints ``AFTER T <type> <milliseconds>``.
- ``/close``: ``bye`` with its own ``connection: close`` header.
- ``/fail``: raises before sending anything.
- anything else: JSON describing the request (method, path, raw_path, query_string,
  root_path, http_version, body, events: [[size, more_body], ...], client), with its
  Content-Length; the method is also echoed in an ``x-method`` header.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import parse_qs


def _query(scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}


async def _start(send, status=200, headers=()):
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})


async def _read_body(receive) -> tuple[bytes, list[list]]:
    body = b""
    events = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            events.append([message["type"], None])
            break
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        events.append([len(chunk), more])
        body += chunk
        if not more:
            break
    return body, events


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = _query(scope)

    if path == "/fixed":
        await _start(send, 200, [(b"content-type", b"text/plain"), (b"content-length", b"10")])
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await send({"type": "http.response.body", "body": b"56789"})
        return

    if path == "/big":
        size = int(query.get("n", "200000"))
        declared = query.get("cl", "1") == "1"
        headers = [(b"content-length", str(size).encode())] if declared else []
        await _start(send, 200, headers)
        block = bytes(range(97, 123)) * 4096
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
        return

    if path == "/more":
        await _start(send, 200, [(b"content-length", b"5")])
        await send({"type": "http.response.body", "body": b"0123456789"})
        return

    if path == "/more-split":
        await _start(send, 200, [(b"content-length", b"5")])
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"defgh"})
        return

    if path == "/fewer":
        await _start(send, 200, [(b"content-length", b"10")])
        await send({"type": "http.response.body", "body": b"12345"})
        return

    if path == "/chunks":
        count = int(query.get("n", "3"))
        empty_last = query.get("empty_last") == "1"
        empty_mid = query.get("empty_mid") == "1"
        await _start(send, 200, [(b"content-type", b"text/plain")])
        for i in range(count):
            last = i == count - 1 and not empty_last
            body = b"piece%d" % i
            await send({"type": "http.response.body", "body": body, "more_body": not last})
            if empty_mid and not last:
                await send({"type": "http.response.body", "body": b"", "more_body": True})
        if empty_last:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return

    if path == "/status":
        await _start(send, int(query["code"]), [(b"x-status", query["code"].encode())])
        await send({"type": "http.response.body", "body": b"must-not-appear"})
        return

    if path == "/no-read":
        await _start(send, 200, [(b"content-length", b"7")])
        await send({"type": "http.response.body", "body": b"no-read"})
        return

    if path == "/own-headers":
        await _start(
            send,
            200,
            [
                (b"server", b"custom/1.0"),
                (b"date", b"Thu, 01 Jan 1970 00:00:00 GMT"),
                (b"content-length", b"2"),
            ],
        )
        await send({"type": "http.response.body", "body": b"ok"})
        return

    if path == "/disconnect":
        tag = query.get("tag", "-")
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                print(f"DISCONNECT {tag}", flush=True)
                return
            size = len(message.get("body", b""))
            print(f"RECV {tag} {size} {message.get('more_body', False)}", flush=True)
            if not message.get("more_body", False):
                print(f"COMPLETE {tag}", flush=True)
                await _start(send, 200, [(b"content-length", b"4")])
                await send({"type": "http.response.body", "body": b"done"})
                return

    if path == "/after":
        tag = query.get("tag", "-")
        await _read_body(receive)
        await _start(send, 200, [(b"content-length", b"5")])
        await send({"type": "http.response.body", "body": b"after"})
        began = time.monotonic()
        try:
            message = await asyncio.wait_for(receive(), 2.0)
            kind = message["type"]
        except TimeoutError:
            kind = "timeout"
        elapsed_ms = int((time.monotonic() - began) * 1000)
        print(f"AFTER {tag} {kind} {elapsed_ms}", flush=True)
        return

    if path == "/slow-read":
        # Busy for a while before it reads the body: the client waits on the app.
        await asyncio.sleep(float(query.get("delay", "1")))
        body, _ = await _read_body(receive)
        size = str(len(body)).encode()
        await _start(send, 200, [(b"content-length", str(len(size)).encode())])
        await send({"type": "http.response.body", "body": size})
        return

    if path == "/close":
        await _start(send, 200, [(b"content-length", b"3"), (b"connection", b"close")])
        await send({"type": "http.response.body", "body": b"bye"})
        return

    if path == "/fail":
        raise RuntimeError("deliberate failure")

    body, events = await _read_body(receive)
    payload = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "root_path": scope["root_path"],
            "http_version": scope["http_version"],
            "body": body.decode("latin-1"),
            "events": events,
            "client": list(scope["client"]) if scope["client"] else None,
        }
    ).encode()
    await _start(
        send,
        200,
        [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-method", scope["method"].encode()),
        ],
    )
    await send({"type": "http.response.body", "body": payload})
