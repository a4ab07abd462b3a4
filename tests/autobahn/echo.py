"""Echo app for the Autobahn|Testsuite fuzzing client (tests/autobahn/run_autobahn.py).

A raw ASGI app, no framework:

- ``websocket``: accept every connection (no subprotocol, no extra headers: whatever
  extensions, e.g. permessage-deflate, are the server's to negotiate), send each message
  back as the same type (text as text, bytes as bytes), and return when the client
  disconnects.
- ``http``: read the body, answer ``200 ok``.
- ``lifespan``: acknowledge startup and shutdown.

Serve it with ``--app-dir tests/autobahn echo:app``.
"""

from __future__ import annotations

from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "websocket":
        await websocket_echo(receive, send)
    elif kind == "http":
        await http_ok(receive, send)
    elif kind == "lifespan":
        await lifespan(receive, send)
    else:
        raise RuntimeError(f"unsupported scope type {kind!r}")


async def websocket_echo(receive: Any, send: Any) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message["type"] != "websocket.receive":
            continue
        text = message.get("text")
        reply: Message = {"type": "websocket.send"}
        if text is not None:
            reply["text"] = text
        else:
            reply["bytes"] = message.get("bytes") or b""
        try:
            await send(reply)
        except OSError:
            # ASGI: send() on a connection the peer has already closed may raise an
            # OSError subclass; the next receive() would report the disconnect.
            return


async def http_ok(receive: Any, send: Any) -> None:
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
