"""An app whose module imports msgspec, a C extension that refuses subinterpreters."""

import msgspec  # noqa: F401


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
