"""What `python -m bench` asks of a server: each workload, defined once.

Every workload is served by ``bench.apps:app`` (the same app under every server);
HTTP workloads are driven by wrk or h2load, WebSocket ones by a websockets client
(bench/loadgen.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    path: str = "/"
    method: str = "GET"
    body_size: int = 0  # request body bytes (POST)
    pipeline: int = 1  # requests written back to back on a connection
    new_connection: bool = False  # Connection: close, so one connection per request
    websocket: bool = False


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("plaintext", "GET /: 'Hello, world!' (13 bytes), keep-alive"),
        Workload("json", "GET /json: about 1 KB of JSON, serialised per request", path="/json"),
        Workload(
            "post-10k",
            "POST /echo: a 10 KB body read and sent back",
            path="/echo",
            method="POST",
            body_size=10 * 1024,
        ),
        Workload("stream-1m", "GET /stream: 1 MB in 16 body messages", path="/stream"),
        Workload(
            "new-connection",
            "GET / with Connection: close: a new TCP connection per request",
            new_connection=True,
        ),
        Workload(
            "pipelined",
            "GET /, 16 requests pipelined per write (no latency: wrk times whole batches)",
            pipeline=16,
        ),
        Workload(
            "websocket",
            "WebSocket /echo: 32-byte text messages, each waiting for its echo",
            path="/echo",
            websocket=True,
        ),
    )
}
