"""Apps the benchmarks serve; the same objects under every server."""

# The plaintext hello world: the README's example app, one definition.
from examples.hello import app as plaintext

__all__ = ["plaintext", "websockets"]

_subscribers: set = set()


async def websockets(scope, receive, send):
    """/echo echoes each message; /broadcast sends each message to every subscriber."""
    if scope["type"] != "websocket":
        return
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
