"""Apps for tests/test_flow_control.py: a slow reader of big uploads and a streamer of
big downloads.  Both check every byte with a CRC-32, so that nothing lost, duplicated
or reordered goes unnoticed.

``upload?rate=BYTES_PER_SECOND``: reads the request body no faster than ``rate``
(after each ``receive()`` it sleeps until the bytes so far are within the rate, so
it stays slow however much one ``receive()`` hands it); answers JSON with the byte
count, the CRC-32, how many receive() calls it took and the largest body chunk one
of them returned.

``download?size=BYTES&chunk=BYTES``: streams ``size`` bytes (with Content-Length) in
``chunk``-sized ``http.response.body`` messages with ``more_body=True``; chunk ``i``
is ``pattern_chunk(i, chunk)``, so the client can compute the expected CRC-32.
"""

import asyncio
import json
import struct
import zlib
from urllib.parse import parse_qs

_PATTERN = bytes(range(256)) * 4096  # 1 MiB


def pattern_chunk(index: int, size: int) -> bytes:
    """Chunk ``index`` of a download: its index, then a fixed pattern (``size`` bytes)."""
    return (struct.pack(">Q", index) + _PATTERN[: size - 8])[:size]


def _query(scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


async def _json(send, data: dict) -> None:
    payload = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(payload)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def upload(scope, receive, send):
    rate = float(_query(scope).get("rate", "0"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    total = crc = receives = max_chunk = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        receives += 1
        total += len(body)
        max_chunk = max(max_chunk, len(body))
        crc = zlib.crc32(body, crc)
        if not message.get("more_body"):
            break
        if rate:
            ahead = started + total / rate - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
    await _json(send, {"bytes": total, "crc": crc, "receives": receives, "max_chunk": max_chunk})


async def download(scope, receive, send):
    query = _query(scope)
    size = int(query["size"])
    chunk = int(query.get("chunk", "65536"))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", b"%d" % size),
            ],
        }
    )
    sent = index = 0
    while sent < size:
        data = pattern_chunk(index, min(chunk, size - sent))
        await send({"type": "http.response.body", "body": data, "more_body": True})
        sent += len(data)
        index += 1
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/upload":
        await upload(scope, receive, send)
    elif scope["path"] == "/download":
        await download(scope, receive, send)
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})
