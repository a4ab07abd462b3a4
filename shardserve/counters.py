"""What every shard counts, written down once: ``COUNTS``, and what the rest is made of.

A shard counts on its hot path (``ShardCounters``, shard/state.py) and sends its counts
once a second (``Stats``, messages.py); the coordinator checks them and adds them up
across shards and generations (coord/stats.py), exports them to Prometheus
(coord/metrics.py) and shows some in `shardserve status` (coord/control_socket.py,
control_client.py).  All of those are made from the table below, one ``Count`` per
number a shard reports:

- ``name``: the Stats field (a JSON key on the wire) and, unless ``source`` says
  otherwise, the ShardCounters attribute the hot path adds to.
- ``kind``: COUNTER, which only grows within a generation (when a generation ends, the
  coordinator carries its last value into its slot, so totals never go back), or
  GAUGE, a value now (not carried).
- ``help``: what it counts (its Prometheus help; for an error kind, its part of the
  errors' help).
- ``type``: int, or float for seconds.
- ``source``: where the shard gets it: COUNTED (its ShardCounters attribute), a
  function of (counters, state) called when the Stats is made, or IDENTITY (set by
  ShardIdentity.stats in shard/hosted.py, beside pid, RSS and uptime).
- ``metric``: exported as ``shardserve_shard_<metric>{shard}`` and, over all shards,
  ``shardserve_<metric>`` (``_total`` for a counter); None: no series of its own.
- ``error``: counted in ``shardserve_errors_total{kind=<error>}`` (and per shard)
  instead.
- ``status``: where `shardserve status` shows it: a column heading, ROW (the --json
  rows only) or ERRORS (added into the "errors" column).  Every entry is in the --json
  "totals".

The table's order is the order of the series in /metrics and of the status columns.

So adding a counter is one entry here, and the ``counters.<name> += 1`` where it
happens.  What is not a number of its own stays explicit: requests by method and
status class (``Stats.responses``, laid out by METHODS and STATUS_CLASSES below), the
latency histogram (``Stats.latency``, by LATENCY_BUCKETS below; its sum is the entry
``latency_sum``), and who the shard is (``Stats.pid``, ``mode``, ``rss_bytes``,
``uptime_seconds``, exported as ``shard_info``, resident memory and uptime).

Standard library only: subinterpreter shards import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COUNTER = "counter"
GAUGE = "gauge"
COUNTED = "counted"  # source: the ShardCounters attribute of that name
IDENTITY = "identity"  # source: set by ShardIdentity.stats (a system call, once a second)
ROW = "(row)"  # status: in the --json rows only, under its name
ERRORS = "(errors)"  # status: added into the "errors" column (and the rows' "errors")


@dataclass(frozen=True)
class Count:
    """One number every shard reports (the fields: see above)."""

    name: str
    kind: str
    help: str
    type: type = int
    source: str | Callable[[Any, Any], float] = COUNTED
    metric: str | None = None
    error: str | None = None
    status: str | None = None


COUNTS = (
    Count(
        "requests",
        COUNTER,
        "HTTP requests answered (or left by the client)",
        source=lambda counters, state: sum(counters.responses),  # each is in one response slot
        metric="requests",
        status="requests",
    ),
    Count("connections", COUNTER, "connections accepted", metric="connections"),
    Count(
        "open_connections",
        GAUGE,
        "connections open now",
        source=lambda counters, state: len(state.connections),
        metric="open_connections",
        status="conns",
    ),
    Count(
        "active_requests",
        GAUGE,
        "requests (and WebSocket sessions) being answered now",
        source=lambda counters, state: state.active_requests,
        metric="active_requests",
        status=ROW,
    ),
    Count(
        "bytes_in",
        COUNTER,
        "bytes read from clients (decrypted, with TLS)",
        metric="bytes_received",
    ),
    Count(
        "bytes_out",
        COUNTER,
        "bytes written to clients (before encryption, with TLS)",
        metric="bytes_sent",
    ),
    Count(
        "ws_connections",
        COUNTER,
        "WebSocket handshakes accepted",
        metric="websocket_connections",
    ),
    Count(
        "ws_open",
        GAUGE,
        "WebSocket connections open now",
        source=lambda counters, state: counters.ws_connections - counters.ws_closed,
        metric="websocket_open",
        status=ROW,
    ),
    Count(
        "ws_messages_in",
        COUNTER,
        "WebSocket messages received",
        metric="websocket_messages_received",
    ),
    Count(
        "ws_messages_out",
        COUNTER,
        "WebSocket messages sent",
        metric="websocket_messages_sent",
    ),
    Count("h2_connections", COUNTER, "HTTP/2 connections", metric="http2_connections"),
    Count("h2_requests", COUNTER, "HTTP/2 requests (streams answered)", metric="http2_requests"),
    # Errors, by kind.  Not in the status "errors": overload, a refusal at
    # --limit-concurrency (load, not a failure).
    Count("app_errors", COUNTER, "app exceptions", error="app", status=ERRORS),
    # malformed or refused requests (and handshakes), answered 4xx/5xx, then closed
    Count("parse_errors", COUNTER, "parse errors", error="parse", status=ERRORS),
    # request heads (408) or bodies (closed) not received in time
    Count("timeouts", COUNTER, "timeouts", error="timeout", status=ERRORS),
    # refused with 503 at --limit-concurrency
    Count("overloaded", COUNTER, "overload (503)", error="overload"),
    # HTTP/2 streams refused (REFUSED_STREAM) past --h2-max-concurrent-streams
    Count("h2_refused", COUNTER, "HTTP/2 streams refused", error="http2_refused"),
    # HTTP/2 frames or requests in error: a stream reset or the connection closed
    Count("h2_protocol", COUNTER, "HTTP/2 protocol errors", error="http2_protocol"),
    # HTTP/2 connections closed with ENHANCE_YOUR_CALM: floods, rapid reset, HPACK bombs
    Count("h2_floods", COUNTER, "HTTP/2 floods stopped", error="http2_flood"),
    # The request_duration_seconds histogram's sum (its buckets are Stats.latency).
    Count(
        "latency_sum",
        COUNTER,
        "seconds from request heads parsed to responses written",
        type=float,
    ),
    Count(
        "cpu_seconds",
        COUNTER,
        "CPU time used by shards (a subinterpreter's: its thread)",
        type=float,
        source=IDENTITY,
        metric="cpu_seconds",
    ),
)

# Counted by the shard (ShardCounters attributes) but not sent: what a source derives
# an entry from (ws_open = ws_connections - ws_closed).
UNSENT = ("ws_closed",)


# The layout of the counts that are not numbers of their own -------------------------

# Stats.responses: method (one of METHODS, or OTHER_METHOD) -> counts by status class.
# Fixed, so that every shard's counts add up and a client cannot mint new series.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
OTHER_METHOD = "other"  # any other method token
# Status classes, indexed by status // 100: "none" is a request the client left before
# any response; 6xx to 9xx are what apps may send (statuses run to 999).
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx")
# Stats.latency: upper bounds (seconds) of the request-latency histogram's buckets;
# one more bucket holds the rest.  Latency runs from the request head parsed to the
# response written.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def with_counts(cls: type) -> type:
    """Class decorator for messages.Stats (under ``@dataclass``): after the class's own
    fields, one field per entry of COUNTS, ``<name>: <type> = 0``."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    for count in COUNTS:
        annotations[count.name] = count.type
        setattr(cls, count.name, count.type())
    cls.__annotations__ = annotations
    return cls
