"""Apps that misbehave on purpose, for tests/test_http_errors.py.

``app`` dispatches on the request path; every route but ``/ok`` and ``/hold`` breaks
the ASGI contract (or the HTTP one) in one specific way.
"""

import asyncio
from urllib.parse import parse_qs


class Boom(Exception):
    """The error the faulty routes raise, so that the log shows where it came from."""


async def _drain(receive):
    """Read the whole request body; return its length."""
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return total
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            return total


def _start(status=200, headers=()):
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def _body(data=b"", more=False):
    return {"type": "http.response.body", "body": data, "more_body": more}


async def ok(scope, receive, send):
    length = await _drain(receive)
    payload = b"ok %d" % length
    await send(
        _start(200, [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(payload))])
    )
    await send(_body(payload))


async def raise_before(scope, receive, send):
    raise Boom("before the response started")


async def raise_after_start(scope, receive, send):
    await send(_start(200, [(b"content-type", b"text/plain")]))
    raise Boom("after http.response.start, before any body")


async def raise_after_body(scope, receive, send):
    # No Content-Length: chunked.  The first chunk goes out, then the app fails.
    await send(_start(200, [(b"content-type", b"text/plain")]))
    await send(_body(b"partial", more=True))
    raise Boom("after the first body message (chunked)")


async def raise_after_body_length(scope, receive, send):
    await send(_start(200, [(b"content-type", b"text/plain"), (b"content-length", b"100")]))
    await send(_body(b"x" * 10, more=True))
    raise Boom("after the first body message (content-length)")


async def float_status(scope, receive, send):
    await send(_start(200.0))  # equal to 200, but not an int: refused


async def respond_after_disconnect(scope, receive, send):
    """Wait for the client to leave, then try to answer (ClientDisconnected)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    print("RESPONDING AFTER DISCONNECT", flush=True)
    await send(_start(200, [(b"content-length", b"2")]))


async def return_none(scope, receive, send):
    return None


async def return_after_start(scope, receive, send):
    await send(_start(200, [(b"content-type", b"text/plain")]))


async def return_after_body(scope, receive, send):
    await send(_start(200, [(b"content-type", b"text/plain")]))
    await send(_body(b"partial", more=True))


async def body_before_start(scope, receive, send):
    await send(_body(b"too early"))


async def start_twice(scope, receive, send):
    await send(_start(200, [(b"content-type", b"text/plain")]))
    await send(_start(201, [(b"content-type", b"text/plain")]))
    await send(_body(b"never"))


async def after_final(scope, receive, send):
    await send(_start(200, [(b"content-type", b"text/plain"), (b"content-length", b"4")]))
    await send(_body(b"done"))
    await send(_body(b"extra"))


async def unknown_type(scope, receive, send):
    await send({"type": "http.response.bogus"})


async def unknown_type_after_start(scope, receive, send):
    await send(_start(200, [(b"content-type", b"text/plain")]))
    await send({"type": "http.response.bogus"})
    await send(_body(b"never"))


def _header_route(name, value):
    async def route(scope, receive, send):
        await send(_start(200, [(b"content-type", b"text/plain"), (name, value)]))
        await send(_body(b"injected?"))

    return route


async def hold(scope, receive, send):
    """Stream a first chunk at once, hold the request ``seconds`` (or until the client
    leaves), then finish: a request that stays active for as long as the test wants."""
    seconds = float(parse_qs(scope["query_string"].decode()).get("seconds", ["2"])[0])
    await _drain(receive)
    await send(_start(200, [(b"content-type", b"text/plain")]))
    await send(_body(b"held\n", more=True))
    try:
        message = await asyncio.wait_for(receive(), seconds)
    except TimeoutError:
        message = None
    if message is not None and message["type"] == "http.disconnect":
        return
    await send(_body(b"done\n"))


ROUTES = {
    "/ok": ok,
    "/raise-before": raise_before,
    "/raise-after-start": raise_after_start,
    "/raise-after-body": raise_after_body,
    "/raise-after-body-length": raise_after_body_length,
    "/return-none": return_none,
    "/return-after-start": return_after_start,
    "/return-after-body": return_after_body,
    "/body-before-start": body_before_start,
    "/start-twice": start_twice,
    "/after-final": after_final,
    "/unknown-type": unknown_type,
    "/unknown-type-after-start": unknown_type_after_start,
    "/header-crlf-value": _header_route(b"x-note", b"a\r\nx-injected: yes"),
    "/header-lf-value": _header_route(b"x-note", b"a\nx-injected: yes"),
    "/header-cr-value": _header_route(b"x-note", b"a\rx-injected: yes"),
    "/header-crlf-name": _header_route(b"x-injected: yes\r\nx-note", b"a"),
    "/header-lf-name": _header_route(b"x-note\nx-injected", b"yes"),
    "/hold": hold,
    "/float-status": float_status,
    "/respond-after-disconnect": respond_after_disconnect,
}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    route = ROUTES.get(scope["path"])
    if route is None:
        await send(_start(404, [(b"content-length", b"9")]))
        await send(_body(b"not found"))
        return
    await route(scope, receive, send)
