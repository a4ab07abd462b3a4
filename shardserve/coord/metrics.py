"""The coordinator's own listener (--metrics HOST:PORT): Prometheus metrics and health.

Served by the coordinator, not through the app and not inside shards, so it answers
while shards restart.  ``/metrics`` is Prometheus text exposition (written by
prometheus_client from the ``StatsBook``): per-shard series with a ``shard`` label,
totals, and the coordinator's own counters.  ``/healthz`` is 200 when the coordinator
runs and every shard is ready, ``/readyz`` 200 unless the server is draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

logger = logging.getLogger("shardserve.error")

MAX_REQUEST_HEAD = 8192
READ_TIMEOUT = 5.0

_HELP = {
    "requests": "HTTP requests answered",
    "connections": "connections accepted",
    "rejected": "malformed requests rejected",
    "app_errors": "exceptions raised by the app",
    "timeouts": "request heads not received in time",
    "open_connections": "connections open now",
    "active_requests": "requests being answered now",
}


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics {value!r}: expected HOST:PORT")
    return (host.strip("[]") or "127.0.0.1"), int(port)


class MetricsCollector:
    """A prometheus_client collector over the coordinator's view of its shards."""

    def __init__(self, book: Any, shard_count: Callable[[], int]) -> None:
        self.book = book
        self.shard_count = shard_count

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from .stats import COUNTERS, GAUGES

        book = self.book
        indexes = book.indexes()
        for name in COUNTERS + GAUGES:
            family = CounterMetricFamily if name in COUNTERS else GaugeMetricFamily
            per_shard = family(f"shardserve_shard_{name}", _HELP[name], labels=["shard"])
            for index in indexes:
                per_shard.add_metric([str(index)], book.shard(index)[name])
            yield per_shard
            yield family(f"shardserve_{name}", _HELP[name] + ", all shards", book.totals()[name])
        restarts = CounterMetricFamily(
            "shardserve_shard_restarts", "shards that exited unexpectedly", labels=["cause"]
        )
        for cause, count in sorted(book.restarts.items()):
            restarts.add_metric([cause], count)
        yield restarts
        yield CounterMetricFamily("shardserve_reloads", "rolling restarts begun", book.reloads)
        yield GaugeMetricFamily("shardserve_shards", "shards configured", self.shard_count())


class MetricsServer:
    def __init__(
        self,
        address: str,
        collector: MetricsCollector,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.host, self.port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.healthy = healthy
        self.ready = ready
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        where = self.server.sockets[0].getsockname()
        logger.info("Metrics and health on http://%s:%d/metrics", where[0], where[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            status, content_type, body = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        except ConnectionError:
            writer.close()
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
        writer.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n"
            % (status, reason.get(status, "Service Unavailable").encode(), content_type.encode(),
               len(body))
            + body
        )  # fmt: skip
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _answer(self, head: bytes) -> tuple[int, str, bytes]:
        if len(head) > MAX_REQUEST_HEAD:
            return 400, "text/plain", b"bad request\n"
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return 405, "text/plain", b"method not allowed\n"
        if target == b"/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if target == b"/healthz":
            ok = self.healthy()
            return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"not ready\n"
        if target == b"/readyz":
            ok = self.ready()
            return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"draining\n"
        return 404, "text/plain", b"not found\n"
