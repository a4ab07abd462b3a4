"""What every connection of one shard shares, computed once, refreshed once a second.

Per-request code reads ready-made values from here (default header bytes, the
coarse clock, trusted proxies) instead of deriving them again.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..counters import (
    COUNTED,
    COUNTS,
    LATENCY_BUCKETS,
    METHODS,
    OTHER_METHOD,
    STATUS_CLASSES,
    UNSENT,
)
from .access_log import AccessLog
from .connection import Connection
from .http.parser import Limits, parser_class
from .http.proxy import parse_trusted
from .http.response import DATE, SERVER, canned_response

# ShardCounters' plain attributes (name -> zero), from counters.py's table: each entry
# the shard counts itself (source COUNTED), and those it counts only to derive another.
PLAIN_COUNTS = {c.name: c.type() for c in COUNTS if c.source == COUNTED} | dict.fromkeys(UNSENT, 0)


class ShardCounters:
    """What this shard did: written on the hot path, read once a second for Stats.

    Everything a request touches is a plain attribute (one per PLAIN_COUNTS, e.g.
    ``counters.bytes_in += n``) or a preallocated list slot:
    ``responses[METHOD_SLOTS[method] + status // 100]`` and ``latency[bucket]``.
    """

    __slots__ = (*PLAIN_COUNTS, "responses", "latency")

    def __init__(self) -> None:
        for name, zero in PLAIN_COUNTS.items():
            setattr(self, name, zero)
        self.responses = [0] * (len(METHOD_NAMES) * len(STATUS_CLASSES))
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)

    def summary(self) -> dict[str, int]:
        """The plain counters, for a log line."""
        plain = (name for name in PLAIN_COUNTS if name != "latency_sum")
        return {"requests": sum(self.responses), **{name: getattr(self, name) for name in plain}}

    def responses_by_method(self) -> dict[str, list[int]]:
        """The methods that had requests, each with its counts by status class."""
        width = len(STATUS_CLASSES)
        responses = self.responses
        by_method = {}
        for slot, method in enumerate(METHOD_NAMES):
            counts = responses[slot * width : (slot + 1) * width]
            if any(counts):
                by_method[method] = counts
        return by_method


# The method's row in ShardCounters.responses (its offset); any other method: OTHER_SLOT.
METHOD_NAMES = (*METHODS, OTHER_METHOD)
METHOD_SLOTS = {method: slot * len(STATUS_CLASSES) for slot, method in enumerate(METHODS)}
OTHER_SLOT = len(METHODS) * len(STATUS_CLASSES)


@dataclass(frozen=True)
class WebSocketSettings:
    enabled: bool
    max_size: int
    max_queue: int
    ping_interval: float | None
    ping_timeout: float | None
    per_message_deflate: bool


def _websockets_available(choice: str) -> bool:
    """Whether WebSockets are served: found, not imported (websockets, with the
    importlib.metadata and email it pulls in, loads with a shard's first WebSocket)."""
    if choice == "none":
        return False
    if importlib.util.find_spec("websockets") is None:
        if choice == "websockets":
            raise ImportError("--ws websockets: the websockets package is not installed")
        return False
    return True


class ShardState:
    """One shard's settings and shared state, read by every connection.

    Slotted: the compiled twins read these attributes at their slots' offsets.
    """

    __slots__ = (
        "app", "loop", "root_path", "root_path_bytes", "proxy_headers", "trusted", "limits",
        "parser_class", "limit_concurrency", "requests_left", "timeout_keep_alive",
        "timeout_request_header", "timeout_request_body", "limit_request_body",
        "timeout_send", "http2", "access_log", "access_logger", "lifespan_state",
        "connections", "active_requests", "counters", "draining", "on_max_requests", "now",
        "ws", "server_header", "_server", "_date_enabled", "_custom", "_second",
        "default_headers", "_canned", "_date", "h2_default_headers",
    )  # fmt: skip

    def __init__(self, config: Config, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        self.root_path = config.root_path
        self.root_path_bytes = config.root_path.encode("utf-8")
        self.proxy_headers = config.proxy_headers
        self.trusted = parse_trusted(config.trusted_proxies)
        self.limits = Limits(
            request_line=config.limit_request_line,
            fields=config.limit_request_fields,
            field_size=config.limit_request_field_size,
        )
        self.parser_class = parser_class(config.http)
        self.limit_concurrency = config.limit_concurrency
        # Counted down per request with --limit-max-requests (None: no limit).
        self.requests_left = config.limit_max_requests
        self.timeout_keep_alive = config.timeout_keep_alive
        self.timeout_request_header = config.timeout_request_header
        self.timeout_request_body = config.timeout_request_body  # 0: off
        self.limit_request_body = config.limit_request_body
        self.timeout_send = config.timeout_send
        self.http2 = None
        if config.http2:
            from .h2.support import Http2

            self.http2 = Http2(config)
        access_logger = logging.getLogger("shardserve.access")
        self.access_log = config.access_log and access_logger.isEnabledFor(logging.INFO)
        self.access_logger = AccessLog(access_logger)
        self.lifespan_state: dict[str, Any] = {}
        # Open connections (HTTP and WebSocket): the ticker and shutdown go through them.
        self.connections: set[Connection] = set()
        self.active_requests = 0
        self.counters = ShardCounters()
        self.draining = False
        self.on_max_requests: Callable[[], None] | None = None
        self.now = loop.time()

        self.ws = WebSocketSettings(
            enabled=_websockets_available(config.ws),
            max_size=config.ws_max_size,
            max_queue=config.ws_max_queue,
            ping_interval=config.ws_ping_interval,
            ping_timeout=config.ws_ping_timeout,
            per_message_deflate=config.ws_per_message_deflate,
        )
        self.server_header = config.server_header
        self._server = b"server: shardserve\r\n" if config.server_header else b""
        self._date_enabled = config.date_header
        self._custom = b"".join(_header_line(header) for header in config.headers)
        self._second = -1
        self.default_headers = b""
        self._canned: dict[int, bytes] = {}
        self.tick()

    # Once a second, not once a request ------------------------------------------

    def tick(self) -> None:
        """Advance the coarse clock; rebuild the default headers when the second changes."""
        self.now = self.loop.time()
        if self.access_log:
            self.access_logger.flush()
        second = int(time.time())
        if second != self._second:
            self._second = second
            date = b"date: %s\r\n" % http_date(second)
            self._date = date if self._date_enabled else b""
            self.default_headers = self._server + self._date + self._custom
            self.h2_default_headers = [
                tuple(line.split(b": ", 1)) for line in self.default_headers.split(b"\r\n") if line
            ]
            self._canned.clear()

    def max_requests_reached(self) -> None:
        self.requests_left = None  # once
        if self.on_max_requests is not None:
            self.on_max_requests()

    def sweep_timeouts(self) -> None:
        """Every connection's timeouts, by the one clock they all use: ``now``."""
        now = self.now
        for conn in tuple(self.connections):
            conn.check_timeouts(now)

    def defaults_without(self, kind: int, current: bytes) -> bytes:
        """Default headers minus the one the app set itself (Server or Date)."""
        part = self._server if kind == SERVER else self._date if kind == DATE else b""
        return current.replace(part, b"", 1) if part else current

    def canned(self, status: int) -> bytes:
        """A server-made response carrying the default headers."""
        response = self._canned.get(status)
        if response is None:
            response = self._canned[status] = canned_response(status, extra=self.default_headers)
        return response


def _header_line(header: str) -> bytes:
    name, _, value = header.partition(":")
    line = b"%s: %s\r\n" % (name.strip().lower().encode("latin-1"), value.strip().encode("latin-1"))
    if line.count(b"\n") != 1 or line.count(b"\r") != 1:
        raise ValueError(f"--header {header!r} contains CR or LF")
    return line


_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec")  # fmt: skip


def http_date(second: int) -> bytes:
    """RFC 9110's IMF-fixdate (email.utils.formatdate's, without importing the email
    package into every shard interpreter: half a megabyte each)."""
    t = time.gmtime(second)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min,
        t.tm_sec,
    )  # fmt: skip
