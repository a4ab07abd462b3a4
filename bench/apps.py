"""Apps the benchmarks serve; the same objects under every server."""


async def plaintext(scope, receive, send):
    """'Hello, world!' with Content-Length: the classic plaintext test."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": b"Hello, world!"})
