"""An app for tests/test_max_rss.py: a shard that grows its resident memory on request.

``app`` dispatches on the request path:

- ``/grow?mb=N``: allocates N MiB (default 100), written through so that every page
  is resident, and keeps it in a module-level list for the life of the process.
- ``/release``: drops everything ``/grow`` kept (large blocks go back to the system).
- ``/`` (any other path): ``{"pid": ..., "held_mb": ...}``.

Every answer is JSON with the answering process's pid, which is how a test tells shards
apart, and ``held_mb``: what this process holds now.
"""

import json
import os
from urllib.parse import parse_qs

MIB = 2**20
HELD: list[bytes] = []


def _held_mb() -> int:
    return sum(len(block) for block in HELD) // MIB


async def app(scope, receive, send):
    if scope["type"] != "http":
        return  # (lifespan: --lifespan auto carries on without it)
    path = scope["path"]
    if path == "/grow":
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        mb = int(query.get("mb", ["100"])[-1])
        HELD.append(b"\x01" * (mb * MIB))  # written, so resident (not a lazy zero page)
    elif path == "/release":
        HELD.clear()
    body = json.dumps({"pid": os.getpid(), "held_mb": _held_mb()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
