"""Apps for the HTTP/2 tests (tests/test_h2.py, tests/test_h2_attacks.py).

``app`` routes on the request path (query parameters in brackets):

- ``/scope...`` (any path under it): the request's scope as JSON (bytes latin-1
  decoded), with the body's length (``body_length``) and the number of
  ``http.request`` messages (``receives``).
- ``/echo``: reads the whole body and answers it back, with its Content-Length.
- ``/big[?n=BYTES]``: ``n`` bytes of ``pattern(n)`` in 64 KiB body messages, with
  Content-Length.
- ``/hold[?s=SECONDS&tag=T]``: prints ``HOLD T``, sleeps (at most 30 s) without reading
  the body, answers ``held T``.
- ``/drain``: reads the body until its end (or a disconnect) and answers the byte count.
- ``/wait-disconnect[?tag=T]``: prints ``WAITING T``, then calls ``receive()`` (at most
  30 s in all) until ``http.disconnect``, and prints ``DISCONNECT T``.
- ``/stream[?tag=T&n=N&size=S&sleep=SECONDS]``: a response of ``n`` body messages of
  ``size`` bytes (no Content-Length), printing ``SENT T i`` after each ``send``
  returns; if ``send`` raises OSError it prints ``SEND-ERROR T``; when the app ends,
  ``ENDED T``.
- ``/trailers[?n=N]``: response start with ``trailers: True``, ``n`` body messages
  (``part0``, ``part1``, ...), then trailers ``x-checksum: <n>`` and ``x-done: yes``.
- ``/conn-headers``: a response carrying connection-specific headers (connection,
  keep-alive, transfer-encoding, upgrade, proxy-connection) that HTTP/2 forbids, and
  mixed-case ``X-Custom-Header``.
- ``/status?code=N``: an empty response with that status.
- anything else: ``ok``.

Every line printed is flushed at once, so a test reading the server's output sees it.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

_BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern(size: int) -> bytes:
    """The body ``/big?n=size`` answers."""
    return (_BLOCK * (size // len(_BLOCK) + 1))[:size]


def _query(scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}


def _say(*words) -> None:
    print(*words, flush=True)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


async def _answer(send, body: bytes, status: int = 200, headers=()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_all(receive) -> tuple[bytes | None, int]:
    """The whole body and how many http.request messages it took (None: disconnect)."""
    chunks = []
    receives = 0
    for _ in range(10_000_000):
        message = await receive()
        if message["type"] != "http.request":
            return None, receives
        receives += 1
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks), receives


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = _query(scope)
    tag = query.get("tag", "-")

    if path.startswith("/scope"):
        body, receives = await _read_all(receive)
        data = _plain(dict(scope))
        data["body_length"] = len(body or b"")
        data["receives"] = receives
        await _answer(
            send, json.dumps(data).encode(), headers=[(b"content-type", b"application/json")]
        )
        return

    if path == "/echo":
        body, _ = await _read_all(receive)
        if body is not None:
            await _answer(send, body, headers=[(b"content-type", b"application/octet-stream")])
        return

    if path == "/big":
        size = int(query.get("n", "1000000"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % size)],
            }
        )
        data = pattern(size)
        view = memoryview(data)
        for start in range(0, size, 65536):
            piece = bytes(view[start : start + 65536])
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return

    if path == "/hold":
        _say("HOLD", tag)
        await asyncio.sleep(min(float(query.get("s", "2")), 30.0))
        await _answer(send, f"held {tag}".encode())
        return

    if path == "/drain":
        body, _ = await _read_all(receive)
        await _answer(send, str(len(body or b"")).encode())
        return

    if path == "/wait-disconnect":
        _say("WAITING", tag)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        for _ in range(1_000_000):
            remaining = deadline - loop.time()
            if remaining <= 0:
                _say("NO-DISCONNECT", tag)
                return
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                _say("NO-DISCONNECT", tag)
                return
            if message["type"] == "http.disconnect":
                _say("DISCONNECT", tag)
                return
        return

    if path == "/stream":
        count = int(query.get("n", "10"))
        size = int(query.get("size", "16384"))
        pause = float(query.get("sleep", "0"))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for index in range(count):
                await send({"type": "http.response.body", "body": b"s" * size, "more_body": True})
                _say("SENT", tag, index)
                if pause:
                    await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": b""})
        except OSError:
            _say("SEND-ERROR", tag)
        finally:
            _say("ENDED", tag)
        return

    if path == "/trailers":
        count = int(query.get("n", "3"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
                "trailers": True,
            }
        )
        for index in range(count):
            await send({"type": "http.response.body", "body": b"part%d" % index, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"x-checksum", b"%d" % count), (b"x-done", b"yes")],
                "more_trailers": False,
            }
        )
        return

    if path == "/conn-headers":
        await _answer(
            send,
            b"conn-headers",
            headers=[
                (b"connection", b"keep-alive"),
                (b"keep-alive", b"timeout=5"),
                (b"transfer-encoding", b"chunked"),
                (b"upgrade", b"h2c"),
                (b"proxy-connection", b"keep-alive"),
                (b"X-Custom-Header", b"Mixed"),
            ],
        )
        return

    if path == "/big-headers":  # a header block larger than one frame
        count = int(query.get("n", "30"))
        headers = [(b"x-filler-%d" % i, b"v" * 1000) for i in range(count)]
        await _answer(send, b"big-headers", headers=headers)
        return

    if path == "/status":
        code = int(query.get("code", "204"))
        await send({"type": "http.response.start", "status": code, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return

    await _answer(send, b"ok", headers=[(b"content-type", b"text/plain")])
