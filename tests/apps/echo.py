"""Small apps shared by many tests."""

import json
import os

from examples.hello import app as hello  # noqa: F401 - served as apps.echo:hello


async def scope_json(scope, receive, send):
    """Answers with the request's scope as JSON (bytes shown latin-1 decoded), and pid."""
    if scope["type"] != "http":
        return

    def plain(value):
        if isinstance(value, bytes):
            return value.decode("latin-1")
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    data = plain({k: v for k, v in scope.items()})
    data["body_length"] = len(body)
    data["pid"] = os.getpid()
    payload = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})
