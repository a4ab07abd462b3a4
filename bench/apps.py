"""Apps the benchmarks serve; the same objects under every server.

``app`` serves every workload of ``python -m bench`` (bench/workloads.py), by path:
``/`` the plaintext hello world, ``/json`` a 1 KB JSON document serialised per
request, ``/echo`` the request body sent back (HTTP) or every message echoed
(WebSocket), ``/stream`` 1 MB in 16 body messages, and WebSocket ``/broadcast``
each message sent to every subscriber (of this worker process).
"""

import json

# The plaintext hello world: the README's example app, one definition.
from examples.hello import app as plaintext

__all__ = ["app", "plaintext"]

_subscribers: set = set()

# About 1 KB once serialised: what a small API answer looks like.
DOCUMENT = {
    "items": [
        {"id": i, "name": f"item {i}", "price": i * 1.25, "tags": ["a", "b"], "active": i % 2 == 0}
        for i in range(12)
    ]
}
STREAM_CHUNK = b"x" * 65536
STREAM_CHUNKS = 16
_JSON_HEADERS = [(b"content-type", b"application/json")]
_BINARY = b"application/octet-stream"


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/json":
        body = json.dumps(DOCUMENT).encode()
        headers = [*_JSON_HEADERS, (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif path == "/echo":
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(parts)
        headers = [(b"content-type", _BINARY), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        headers = [
            (b"content-type", _BINARY),
            (b"content-length", b"%d" % (len(STREAM_CHUNK) * STREAM_CHUNKS)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(STREAM_CHUNKS):
            more = i < STREAM_CHUNKS - 1
            await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": more})
    else:
        await plaintext(scope, receive, send)


async def _websocket(scope, receive, send):
    """/broadcast sends each message to every subscriber; any other path echoes."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if scope["path"] == "/broadcast":
        _subscribers.add(send)
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                for subscriber in list(_subscribers):
                    await subscriber({"type": "websocket.send", "text": message.get("text")})
        finally:
            _subscribers.discard(send)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send(
            {"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")}
        )
