"""An app that says which optional protocol libraries its interpreter has imported
(they load with a shard's first connection that needs them), and echoes WebSockets."""

import json
import sys

WATCHED = ("websockets", "h2", "hpack", "email")


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text")})
    if scope["type"] != "http":
        return
    body = json.dumps({name: name in sys.modules for name in WATCHED}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
