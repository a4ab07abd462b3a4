"""The app for the shard-stats tests (tests/test_metrics.py): known answers to count.

HTTP, routed by path:

- ``/status?code=N``: status N with the body ``status N`` (its Content-Length set).
- ``/sleep?ms=M``: sleeps M milliseconds, then ``slept``.
- ``/fail``: raises before answering (the server sends 500).
- anything else: ``ok``.

WebSocket ``/echo``: accept, then echo every message.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs


def _query(scope) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}


async def _answer(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await _echo(receive, send)
        return
    if scope["type"] != "http":
        return
    await _read_body(receive)
    path, query = scope["path"], _query(scope)
    if path == "/status":
        code = int(query["code"])
        await _answer(send, code, b"status %d" % code)
    elif path == "/sleep":
        await asyncio.sleep(int(query["ms"]) / 1000)
        await _answer(send, 200, b"slept")
    elif path == "/fail":
        raise RuntimeError("failing on purpose")
    else:
        await _answer(send, 200, b"ok")


async def _echo(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:
            return
