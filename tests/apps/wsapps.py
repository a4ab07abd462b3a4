"""The WebSocket app for tests/test_websockets.py: one ASGI app, routed by path.

WebSocket routes (query parameters in brackets; a --root-path prefix is ignored):

``/echo``            accept, then echo every message (text as text, bytes as bytes).
``/pid``             accept, send ``pid <os.getpid()>``, then echo.
``/scope[/...]``     accept, send the scope as JSON (bytes latin-1 decoded), then add
                     ``touched`` to ``scope["state"]`` (a later connection must not see
                     it: the state is a copy per connection), then echo.
``/accept``          [subprotocol, header=name:value ...] accept with that subprotocol
                     and those extra headers, send JSON ``{"subprotocols": [...]}``, echo.
``/close``           [code, reason] accept, then close with that code and reason.
``/record``          [id] accept, answer message n with ``got <n>``; at the disconnect print
                     ``WSEVENT <id> disconnect code=<code> reason=<reason> messages=<n>``.
``/send-after-close`` [id] accept, wait for the disconnect, then try to send; print
                     ``WSEVENT <id> send-after-close <exception type> oserror=<bool>``.
``/reject``          close before accepting (the server answers 403).
``/deny``            the Denial Response extension: 401, ``x-denied: yes``, body
                     ``go away`` in two body messages.
``/raise-before``    raise before accepting (500).
``/raise-after``     accept, then raise (close 1011).
``/return-before``   return without accepting (500).
``/return-after``    accept, then return (close 1000).
``/slow-reader``     [delay] accept; sleep ``delay`` seconds after every message; count
                     the binary messages and check their stamps (``stamped(i, size)``);
                     on the text message ``done`` send JSON with the count, the bytes
                     and whether every stamp was in order.
``/flood``           [id, count, size] accept, send ``count`` binary messages
                     ``stamped(i, size)``, recording in ``SENT[id]`` how many ``send()``
                     calls returned, then return (close 1000).

HTTP routes: ``/progress?id=ID`` answers ``SENT[id]`` as JSON; anything else answers
``http <method> <path> upgrade=<upgrade header>`` (so ``--ws none`` is visible).

Lifespan: startup puts ``{"greeting": "hello"}`` in the lifespan state.
"""

import asyncio
import json
import os
import struct
from urllib.parse import parse_qs

SENT: dict[str, int] = {}

_FILLER = bytes(range(256)) * 256  # 64 KiB


def stamped(index: int, size: int) -> bytes:
    """Message ``index`` of a stream: its index (8 bytes), then filler (``size`` bytes)."""
    return (struct.pack(">Q", index) + _FILLER * (size // len(_FILLER) + 1))[:size]


def _query(scope) -> dict[str, list[str]]:
    return parse_qs(scope["query_string"].decode("latin-1"))


def _one(scope, name: str, default: str = "") -> str:
    return _query(scope).get(name, [default])[0]


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _report(*parts) -> None:
    print("WSEVENT", *parts, flush=True)


async def _echo(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def _accept(receive, send, **extra) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect", message
    await send({"type": "websocket.accept", **extra})


async def websocket(scope, receive, send) -> None:
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    if path == "/echo":
        await _accept(receive, send)
        await _echo(receive, send)
    elif path == "/pid":
        await _accept(receive, send)
        await send({"type": "websocket.send", "text": f"pid {os.getpid()}"})
        await _echo(receive, send)
    elif path == "/scope" or path.startswith("/scope/"):
        await _accept(receive, send)
        await send({"type": "websocket.send", "text": json.dumps(_plain(dict(scope)))})
        if scope.get("state") is not None:
            scope["state"]["touched"] = True
        await _echo(receive, send)
    elif path == "/accept":
        query = _query(scope)
        extra = {}
        if "subprotocol" in query:
            extra["subprotocol"] = query["subprotocol"][0]
        headers = []
        for item in query.get("header", []):
            name, _, value = item.partition(":")
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        if headers:
            extra["headers"] = headers
        await _accept(receive, send, **extra)
        payload = json.dumps({"subprotocols": scope["subprotocols"]})
        await send({"type": "websocket.send", "text": payload})
        await _echo(receive, send)
    elif path == "/close":
        await _accept(receive, send)
        code = int(_one(scope, "code", "1000"))
        await send({"type": "websocket.close", "code": code, "reason": _one(scope, "reason")})
        while (await receive())["type"] != "websocket.disconnect":
            pass
    elif path == "/record":
        await _accept(receive, send)
        count = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                _report(
                    _one(scope, "id"),
                    f"disconnect code={message.get('code')} reason={message.get('reason')!r}",
                    f"messages={count}",
                )
                return
            count += 1
            await send({"type": "websocket.send", "text": f"got {count}"})
    elif path == "/send-after-close":
        await _accept(receive, send)
        while (await receive())["type"] != "websocket.disconnect":
            pass
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except Exception as exc:  # noqa: BLE001 - the point is to report what was raised
            _report(
                _one(scope, "id"),
                "send-after-close",
                type(exc).__name__,
                f"oserror={isinstance(exc, OSError)}",
            )
        else:
            _report(_one(scope, "id"), "send-after-close no-exception")
    elif path == "/reject":
        await receive()
        await send({"type": "websocket.close", "code": 1000})
    elif path == "/deny":
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"x-denied", b"yes"), (b"content-type", b"text/plain")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"go ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"away"})
    elif path == "/raise-before":
        await receive()
        raise RuntimeError("boom before accept")
    elif path == "/raise-after":
        await _accept(receive, send)
        raise RuntimeError("boom after accept")
    elif path == "/return-before":
        await receive()
    elif path == "/return-after":
        await _accept(receive, send)
    elif path == "/slow-reader":
        delay = float(_one(scope, "delay", "0.002"))
        await _accept(receive, send)
        count = total = 0
        in_order = True
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "done":
                result = {"count": count, "bytes": total, "in_order": in_order}
                await send({"type": "websocket.send", "text": json.dumps(result)})
                continue
            data = message["bytes"]
            in_order = in_order and data == stamped(count, len(data))
            count += 1
            total += len(data)
            await asyncio.sleep(delay)
    elif path == "/flood":
        ident = _one(scope, "id")
        count = int(_one(scope, "count", "100"))
        size = int(_one(scope, "size", "65536"))
        await _accept(receive, send)
        SENT[ident] = 0
        for index in range(count):
            await send({"type": "websocket.send", "bytes": stamped(index, size)})
            SENT[ident] = index + 1
    else:
        await receive()
        await send({"type": "websocket.close", "code": 1000})


async def http(scope, receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    if scope["path"] == "/progress":
        body = json.dumps({"sent": SENT.get(_one(scope, "id"), -1)}).encode()
        content_type = b"application/json"
    else:
        upgrade = dict(scope["headers"]).get(b"upgrade", b"").decode("latin-1")
        body = f"http {scope['method']} {scope['path']} upgrade={upgrade}".encode()
        content_type = b"text/plain"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def lifespan(scope, receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if scope.get("state") is not None:
                scope["state"]["greeting"] = "hello"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
