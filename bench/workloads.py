"""What `python -m bench` asks of a server: each workload, defined once.

Every workload is served by ``bench.apps:app`` (the same app under every server);
HTTP/1.1 workloads are driven by wrk or h2load (--load-generator), HTTP/2 ones always by
h2load (h2c: prior knowledge on the plain port; h2: over TLS, negotiated by ALPN), and
WebSocket ones by bench/wsload.py in the mode named by the path (bench/loadgen.py runs
them).
"""

from __future__ import annotations

from dataclasses import dataclass

# The protocols a workload speaks (Workload.protocol) and a server kind serves
# (bench/servers.py ServerKind.protocols): HTTP/1.1 in cleartext, HTTP/2 in cleartext by
# prior knowledge (h2c, what h2load sends to an http:// URL), HTTP/2 over TLS (ALPN h2).
HTTP1, H2C, H2_TLS = "http/1.1", "h2c", "h2"
PROTOCOL_NAMES = {
    HTTP1: "HTTP/1.1",
    H2C: "h2c (HTTP/2 in cleartext, prior knowledge)",
    H2_TLS: "h2 (HTTP/2 over TLS, ALPN)",
}


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
    headers: tuple[str, ...] = ()  # request header fields beyond Host ("Name: value")
    protocol: str = HTTP1  # HTTP1, H2C or H2_TLS
    streams: int = 1  # HTTP/2: streams in flight per connection (h2load -m)

    @property
    def http2(self) -> bool:
        return self.protocol != HTTP1

    @property
    def tls(self) -> bool:
        return self.protocol == H2_TLS


# What a browser sends for a page, less cookies: with Host, 12 fields, 460 bytes of head.
BROWSER_HEADERS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language: en-GB,en;q=0.5",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Referer: http://127.0.0.1/index.html",
    "Upgrade-Insecure-Requests: 1",
    "Sec-Fetch-Dest: document",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-Site: same-origin",
    "Sec-Fetch-User: ?1",
    "Priority: u=0, i",
)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("plaintext", "GET /: 'Hello, world!' (13 bytes), keep-alive"),
        Workload(
            "plaintext-browser",
            "GET / with the 12 header fields a browser sends (460 bytes of head)",
            headers=BROWSER_HEADERS,
        ),
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
            "WebSocket /echo: 32-byte text messages, each waiting for its echo (round trips)",
            path="/echo",
            websocket=True,
        ),
        Workload(
            "websocket-broadcast",
            "WebSocket /broadcast: 32-byte messages to every subscriber (deliveries)",
            path="/broadcast",
            websocket=True,
        ),
        Workload(
            "h2c-plaintext",
            "GET / over h2c (prior knowledge), 1 stream in flight per connection",
            protocol=H2C,
        ),
        Workload(
            "h2c-plaintext-m10",
            "GET / over h2c (prior knowledge), 10 streams in flight per connection",
            protocol=H2C,
            streams=10,
        ),
        Workload(
            "h2-tls-plaintext",
            "GET / over HTTP/2 on TLS (ALPN h2), 1 stream in flight per connection",
            protocol=H2_TLS,
        ),
        Workload(
            "h2-tls-plaintext-m10",
            "GET / over HTTP/2 on TLS (ALPN h2), 10 streams in flight per connection",
            protocol=H2_TLS,
            streams=10,
        ),
    )
}
