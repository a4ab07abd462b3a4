"""Routes that look at the task and context a request runs in."""

import asyncio
import contextvars

seen = contextvars.ContextVar("seen", default="unset")
stashed: list[asyncio.Task] = []


async def respond(send, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/ctx":
        before = seen.get()
        seen.set(scope["query_string"].decode() or "set")
        await respond(send, before.encode())
    elif path == "/task":
        first = asyncio.current_task()
        await asyncio.sleep(0)
        second = asyncio.current_task()
        await respond(send, b"%d %d" % (first is not None, first is second))
    elif path == "/stash":
        stashed.append(asyncio.current_task())
        await respond(send, b"stashed")
    elif path == "/cancel-stashed":
        for task in stashed:
            task.cancel()
        stashed.clear()
        await asyncio.sleep(0)
        await respond(send, b"cancelled")
    elif path == "/timeout":
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            await respond(send, b"timed out")
    elif path == "/self-cancel":
        asyncio.current_task().cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()
            await respond(send, b"cancelled at the await")
            return
        await respond(send, b"not cancelled", 500)
    elif path == "/sleep":
        await asyncio.sleep(0.05)
        await respond(send, b"slept")
    else:
        await respond(send, b"not found", 404)
