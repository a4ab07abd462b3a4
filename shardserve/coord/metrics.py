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
import itertools
import logging
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from ..counters import COUNTER, COUNTS, GAUGE, LATENCY_BUCKETS, STATUS_CLASSES
from ..errors import ConfigError

logger = logging.getLogger("shardserve.error")

MAX_REQUEST_HEAD = 8192
READ_TIMEOUT = 5.0
# Shards report once a second; scrapes in between reuse the last exposition (made at
# most this often, and only when something changed), so that frequent scrapers cost
# the coordinator, which may share CPUs with shards, next to nothing.
REGENERATE_SECONDS = 0.5

# Each entry of the counter table (counters.py) with a metric is exported per shard
# (shardserve_shard_<metric>{shard="i"}) and in total (shardserve_<metric>): counters,
# then gauges.  Series the coordinator derives from an entry's follow it:
# entry name -> (metric name, help, value of a Tally).
_DERIVED = {
    "connections": (
        "connections_closed",
        "connections closed",
        lambda tally: tally["connections"] - tally["open_connections"],  # accepted: open or closed
    ),
}
# errors_total{kind}: the entries with an error kind; its help lists theirs.
_ERRORS = [(count.error, count.name) for count in COUNTS if count.error]
_ERRORS_HELP = "errors by kind: " + ", ".join(count.help for count in COUNTS if count.error)


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
        self.started = time.time()

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        book = self.book
        tallies = {str(index): book.shard(index) for index in book.indexes()}
        total = book.totals()
        for family, kind in ((CounterMetricFamily, COUNTER), (GaugeMetricFamily, GAUGE)):
            for entry in COUNTS:
                if entry.kind != kind or not entry.metric:
                    continue
                value = itemgetter(entry.name)
                yield from _per_shard_and_total(
                    family, entry.metric, entry.help, value, tallies, total
                )
                if entry.name in _DERIVED:
                    yield from _per_shard_and_total(family, *_DERIVED[entry.name], tallies, total)

        help_text = "HTTP requests by method and status class ('none': no response sent)"
        per_shard = CounterMetricFamily(
            "shardserve_shard_responses", help_text, labels=["shard", "method", "status"]
        )
        for shard, tally in tallies.items():
            for method, status, count in _responses(tally):
                per_shard.add_metric([shard, method, status], count)
        yield per_shard
        all_shards = CounterMetricFamily(
            "shardserve_responses", help_text + ", all shards", labels=["method", "status"]
        )
        for method, status, count in _responses(total):
            all_shards.add_metric([method, status], count)
        yield all_shards

        help_text = _ERRORS_HELP
        per_shard = CounterMetricFamily(
            "shardserve_shard_errors", help_text, labels=["shard", "kind"]
        )
        all_shards = CounterMetricFamily(
            "shardserve_errors", help_text + ", all shards", labels=["kind"]
        )
        for kind, key in _ERRORS:
            for shard, tally in tallies.items():
                per_shard.add_metric([shard, kind], tally[key])
            all_shards.add_metric([kind], total[key])
        yield per_shard
        yield all_shards

        help_text = "seconds from a request's head parsed to its response written"
        per_shard = HistogramMetricFamily(
            "shardserve_shard_request_duration_seconds", help_text, labels=["shard"]
        )
        for shard, tally in tallies.items():
            per_shard.add_metric([shard], _buckets(tally.latency), tally["latency_sum"])
        yield per_shard
        yield HistogramMetricFamily(
            "shardserve_request_duration_seconds",
            help_text + ", all shards",
            buckets=_buckets(total.latency),
            sum_value=total["latency_sum"],
        )

        yield GaugeMetricFamily(
            "shardserve_start_time_seconds",
            "when this coordinator started, in Unix time: every counter starts from zero "
            "then (after an in-place upgrade as after a restart)",
            value=self.started,
        )
        yield from self._shard_details(GaugeMetricFamily)

        restarts = CounterMetricFamily(
            "shardserve_shard_restarts",
            "shards restarted: unexpected exits by cause, and 'memory' (--limit-max-rss)",
            labels=["cause"],
        )
        for cause, count in sorted(book.restarts.items()):
            restarts.add_metric([cause], count)
        yield restarts
        yield CounterMetricFamily("shardserve_reloads", "rolling restarts begun", book.reloads)
        yield GaugeMetricFamily("shardserve_shards", "shards configured", self.shard_count())

    def _shard_details(self, gauge: type):
        """What each running shard is: pid, mode, generation, memory, uptime."""
        info = gauge(
            "shardserve_shard_info",
            "the shard running in each slot (always 1)",
            labels=["shard", "pid", "mode", "generation"],
        )
        memory = gauge(
            "shardserve_shard_resident_memory_bytes",
            "resident memory of a process shard (subinterpreter shards share the coordinator's)",
            labels=["shard"],
        )
        uptime = gauge(
            "shardserve_shard_uptime_seconds", "seconds since the shard started", labels=["shard"]
        )
        for index in self.book.indexes():
            latest = self.book.latest(index)
            if latest is None:
                continue
            shard = str(index)
            info.add_metric([shard, str(latest.pid), latest.mode, str(latest.generation)], 1)
            if latest.rss_bytes is not None:
                memory.add_metric([shard], latest.rss_bytes)
            uptime.add_metric([shard], latest.uptime_seconds)
        yield info
        yield memory
        yield uptime


def _per_shard_and_total(family: type, name: str, help_text: str, value, tallies: dict, total):
    """A metric per shard (label "shard") and over all shards; value(tally) is its value."""
    per_shard = family(f"shardserve_shard_{name}", help_text, labels=["shard"])
    for shard, tally in tallies.items():
        per_shard.add_metric([shard], value(tally))
    yield per_shard
    yield family(f"shardserve_{name}", help_text + ", all shards", value(total))


def _responses(tally: Any):
    for method, counts in sorted(tally.responses.items()):
        for status, count in zip(STATUS_CLASSES, counts, strict=True):
            if count:
                yield method, status, count


def _buckets(latency: list[int]) -> list[tuple[str, int]]:
    """Cumulative buckets, as Prometheus histograms have them."""
    from prometheus_client.utils import floatToGoString

    bounds = [floatToGoString(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
    return list(zip(bounds, itertools.accumulate(latency), strict=True))


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
        self.servers: list[asyncio.AbstractServer] = []
        self.collector = collector
        self._exposition = b""
        self._made_from: tuple | None = None  # (book version, shard count) it shows
        self._made_at = 0.0

    async def start(self, inherited: list | None = None) -> None:
        """Listen on HOST:PORT, or on the listeners of the coordinator we replace."""
        if inherited:
            self.servers = [await asyncio.start_server(self._serve, sock=s) for s in inherited]
        else:
            self.servers = [await asyncio.start_server(self._serve, self.host, self.port)]
        where = self.servers[0].sockets[0].getsockname()
        logger.info("Metrics and health on http://%s:%d/metrics", where[0], where[1])

    @property
    def sockets(self) -> list:
        return [sock for server in self.servers for sock in server.sockets]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self.servers = []

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

    def _metrics(self) -> bytes:
        from prometheus_client import generate_latest

        now = time.monotonic()
        source = (self.collector.book.version, self.collector.shard_count())
        stale = source != self._made_from and now - self._made_at >= REGENERATE_SECONDS
        if self._made_from is None or stale:
            self._exposition = generate_latest(self.registry)
            self._made_from, self._made_at = source, now
        return self._exposition

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
            from prometheus_client import CONTENT_TYPE_LATEST

            return 200, CONTENT_TYPE_LATEST, self._metrics()
        if target == b"/healthz":
            ok = self.healthy()
            return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"not ready\n"
        if target == b"/readyz":
            ok = self.ready()
            return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"draining\n"
        return 404, "text/plain", b"not found\n"
