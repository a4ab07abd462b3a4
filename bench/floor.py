"""The floor: the least a Python server on this event loop can spend per request.

A bare protocol on uvloop (or stdlib asyncio) that feeds each read to httptools and
answers every complete request with a response built once: the bytes shardserve
sends for ``GET /`` of the hello app (server, date, content-type, content-length,
body; connection: close when it closes), the date rebuilt once a second.  No ASGI:
no scope, no app, no counting, no timeouts.  Every server's CPU per request is read
against it (``python -m bench --servers floor,shardserve``): what is above it is the
pipeline's.

    python -m bench.floor --port 8000 [--workers N] [--loop uvloop|asyncio]

Workers are processes, each with its own SO_REUSEPORT listener, as shards have.
It answers GET / only (plaintext, plaintext-browser, new-connection, pipelined).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
from email.utils import formatdate

import httptools

BODY = b"Hello, world!"


class Response:
    """The one response, rebuilt when the second changes."""

    def __init__(self) -> None:
        self.bytes = self.closing = b""
        self.refresh()

    def refresh(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nserver: shardserve\r\ndate: %s\r\n" % (
            formatdate(usegmt=True).encode()
        )
        rest = b"content-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
        self.bytes = head + rest
        self.closing = head + b"connection: close\r\n" + rest


class FloorProtocol(asyncio.Protocol):
    def __init__(self, response: Response) -> None:
        self.response = response
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.parser.should_keep_alive():
            self.transport.write(self.response.bytes)
        else:
            self.transport.write(self.response.closing)
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.transport = None


async def serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    response = Response()
    server = await loop.create_server(lambda: FloorProtocol(response), sock=sock)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    while not stop.is_set():
        response.refresh()
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    server.close()


def listener(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def run(sock: socket.socket, loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(serve(sock))
    else:
        asyncio.run(serve(sock))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    sockets = [listener(args.host, args.port) for _ in range(args.workers)]
    children = []
    for sock in sockets[1:]:
        pid = os.fork()
        if pid == 0:
            run(sock, args.loop)
            os._exit(0)
        children.append(pid)
    print(f"floor: {args.workers} worker(s) on http://{args.host}:{args.port}", flush=True)
    try:
        run(sockets[0], args.loop)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        for pid in children:
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
