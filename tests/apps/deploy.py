"""Apps for the deployment-surface tests: lifespan, slow requests, environment, factories.

Markers the tests look for in the server's output are printed with ``flush=True``.
"""

import asyncio
import json
import os
from urllib.parse import parse_qs


async def _read_body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _respond(send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send, data, status: int = 200) -> None:
    await _respond(send, status, json.dumps(data).encode(), b"application/json")


async def app(scope, receive, send):
    """The general deployment app.

    lifespan: prints DEPLOY-STARTUP / DEPLOY-SHUTDOWN-MARKER and sets state["x"].
    GET /            -> "ok"
    GET /sleep?s=N&tag=T -> prints "SLEEPING T", sleeps N seconds, answers "slept T"
    GET /status?code=N -> answers with status N
    GET /env?name=A&name=B -> JSON {A: os.environ.get(A), ...}
    GET /state       -> JSON of scope["state"], then mutates it (a copy per request)
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["x"] = "from-startup"
                scope["state"]["pid"] = os.getpid()
                print("DEPLOY-STARTUP", flush=True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                print("DEPLOY-SHUTDOWN-MARKER", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode("latin-1"))
    path = scope["path"]
    await _read_body(receive)
    if path == "/sleep":
        seconds = float(query.get("s", ["1.5"])[0])
        tag = query.get("tag", ["-"])[0]
        print(f"SLEEPING {tag}", flush=True)
        await asyncio.sleep(seconds)
        await _respond(send, 200, f"slept {tag}".encode())
    elif path == "/status":
        await _respond(send, int(query.get("code", ["200"])[0]), b"status")
    elif path == "/env":
        await _json(send, {name: os.environ.get(name) for name in query.get("name", [])})
    elif path == "/state":
        state = scope.get("state")
        snapshot = dict(state) if state is not None else None
        if state is not None:
            state["x"] = "mutated-by-request"
            state["added"] = "by-request"
        await _json(send, snapshot)
    else:
        await _respond(send, 200, b"ok")


def create_app():
    """A factory (for --factory): returns an app that says where it came from."""

    async def made(scope, receive, send):
        if scope["type"] != "http":
            return
        await _respond(send, 200, b"made by factory")

    return made


def broken_factory():
    raise RuntimeError("factory exploded")


# Lifespan variants -----------------------------------------------------------------


async def startup_failed(scope, receive, send):
    """Reports lifespan startup failure with a message."""
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send(
            {"type": "lifespan.startup.failed", "message": "database unreachable: APP-FAIL-MSG"}
        )
        return
    await _respond(send, 200, b"should not serve")


async def startup_raises(scope, receive, send):
    """Raises during lifespan startup."""
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("exploded in startup APP-RAISE-MSG")
    await _respond(send, 200, b"served anyway")


async def no_lifespan(scope, receive, send):
    """An app that does not support lifespan: it raises for any non-http scope."""
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope type {scope['type']!r}")
    await _respond(send, 200, b"no lifespan here")


SEEN_SCOPE_TYPES: list[str] = []


async def scope_recorder(scope, receive, send):
    """Records every scope type it is called with; /seen answers the list as JSON."""
    SEEN_SCOPE_TYPES.append(scope["type"])
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await _read_body(receive)
    await _json(send, SEEN_SCOPE_TYPES)


async def slow_startup(scope, receive, send):
    """Lifespan startup that takes 30 s (a stuck database connection, say)."""
    if scope["type"] == "lifespan":
        await receive()
        print("SLOW-STARTUP-BEGIN", flush=True)
        await asyncio.sleep(30)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await _respond(send, 200, b"ok")
