"""The coordinator's tally of shard stats, without processes; and the counter table.

The StatsBook gets Stats as a supervisor files them (record, ended); what it makes of
them (per-slot and total tallies, rates, quantiles) is read back directly.  The last
tests check that counters.COUNTS agrees with everything made from it: ShardCounters,
Stats on the wire, a real Prometheus exposition and the `shardserve status` columns.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import types

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shardserve import control_client
from shardserve.coord.control_socket import status_counts
from shardserve.coord.metrics import MetricsCollector
from shardserve.coord.stats import COUNTERS, GAUGES, StatsBook, check, quantile
from shardserve.counters import (
    COUNTED,
    COUNTER,
    COUNTS,
    ERRORS,
    GAUGE,
    IDENTITY,
    LATENCY_BUCKETS,
    METHODS,
    OTHER_METHOD,
    ROW,
    STATUS_CLASSES,
    UNSENT,
)
from shardserve.messages import JsonCodec, MessageError, MsgspecCodec, Stats
from shardserve.shard.hosted import ShardIdentity
from shardserve.shard.state import ShardCounters

BUCKETS = len(LATENCY_BUCKETS) + 1
OVERFLOW = len(LATENCY_BUCKETS)  # the index of the bucket past the last bound


def stats(index: int = 0, generation: int = 1, latency: dict | None = None, **values) -> Stats:
    """A well-formed Stats; ``latency`` maps a bucket index to its count."""
    buckets = [0] * BUCKETS
    for bucket, count in (latency or {}).items():
        buckets[bucket] = count
    return Stats(index=index, generation=generation, latency=buckets, **values)


def get(counts: list[tuple[str, int]]) -> list[int]:
    """Counts by status class, from (class, count) pairs."""
    row = [0] * len(STATUS_CLASSES)
    for status, count in counts:
        row[STATUS_CLASSES.index(status)] = count
    return row


# Totals that never go back ---------------------------------------------------------


def test_an_ended_generation_is_carried_into_its_slot_and_its_successor_adds_to_it():
    book = StatsBook()
    book.record(
        stats(
            requests=10,
            bytes_in=500,
            open_connections=3,
            ws_open=1,
            latency_sum=0.5,
            responses={"GET": get([("2xx", 10)])},
            latency={2: 10},
        ),
        now=0.0,
    )
    # Its last words (sent as it stopped) count, not the Stats filed before them.
    book.ended(0, 1, stats(requests=12, bytes_in=600, open_connections=1,
                           responses={"GET": get([("2xx", 12)])}, latency={2: 12}))  # fmt: skip
    slot = book.shard(0)
    assert (slot["requests"], slot["bytes_in"]) == (12, 600)
    assert slot.responses == {"GET": get([("2xx", 12)])}
    assert slot.latency[2] == 12
    # Gauges are not carried: an ended generation has no connections open.
    assert (slot["open_connections"], slot["ws_open"]) == (0, 0)

    # The successor starts from zero; the slot goes on from where it was.
    book.record(stats(generation=2), now=1.0)
    assert book.shard(0)["requests"] == 12
    book.record(
        stats(generation=2, requests=5, bytes_in=50, open_connections=2,
              responses={"GET": get([("2xx", 4)]), OTHER_METHOD: get([("none", 1)])}),
        now=2.0,
    )  # fmt: skip
    slot = book.shard(0)
    assert (slot["requests"], slot["bytes_in"], slot["open_connections"]) == (17, 650, 2)
    assert slot.responses == {"GET": get([("2xx", 16)]), OTHER_METHOD: get([("none", 1)])}


def test_a_generation_that_ends_without_last_words_keeps_its_latest_stats():
    book = StatsBook()
    book.record(stats(requests=7, cpu_seconds=1.25, open_connections=4), now=0.0)
    book.ended(0, 1, None)  # killed: nothing more came
    slot = book.shard(0)
    assert (slot["requests"], slot["cpu_seconds"], slot["open_connections"]) == (7, 1.25, 0)
    assert book.latest(0) is None and book.indexes() == [0]


def test_no_series_goes_back_across_crashes_and_restarts():
    book = StatsBook()
    seen: dict[tuple[int | None, str], float] = {}

    def looked() -> None:
        for index in (0, 1, None):
            tally = book.totals() if index is None else book.shard(index)
            for name in COUNTERS:
                assert tally[name] >= seen.get((index, name), 0), (index, name)
                seen[(index, name)] = tally[name]

    every = dict.fromkeys(COUNTERS, 3)
    book.record(stats(0, 1, **every), now=0.0)
    book.record(stats(1, 1, **every), now=0.0)
    looked()
    book.record(stats(0, 1, **dict.fromkeys(COUNTERS, 9)), now=1.0)
    looked()
    book.ended(0, 1, None)  # slot 0 crashed
    looked()
    book.count_restart(0, "signal")
    book.record(stats(0, 2), now=2.0)  # its successor: zeros
    looked()
    book.record(stats(0, 2, **dict.fromkeys(COUNTERS, 1)), now=3.0)
    book.ended(1, 1, stats(1, 1, **dict.fromkeys(COUNTERS, 4)))
    looked()
    totals = book.totals()
    assert all(totals[name] == 9 + 1 + 4 for name in COUNTERS)
    assert all(totals[name] == 0 for name in GAUGES)
    assert book.restarts == {"signal": 1} and book.restarts_of == {0: 1}


def test_a_rolling_restart_counts_both_generations_of_a_slot_while_both_run():
    book = StatsBook()
    book.record(stats(0, 1, requests=100, open_connections=4, active_requests=2), now=0.0)
    book.record(stats(0, 2, requests=3, open_connections=1), now=1.0)  # the successor, ready
    slot = book.shard(0)
    assert (slot["requests"], slot["open_connections"], slot["active_requests"]) == (103, 5, 2)
    # The old one drains (and reports after its successor did): the slot shows the new one.
    book.record(stats(0, 1, requests=110, open_connections=1, pid=11), now=2.0)
    assert book.latest(0).generation == 2
    book.ended(0, 1, stats(0, 1, requests=111, pid=11))
    book.record(stats(0, 2, requests=9, open_connections=1), now=3.0)
    slot = book.shard(0)
    assert (slot["requests"], slot["open_connections"], slot["active_requests"]) == (120, 1, 0)
    assert book.totals()["requests"] == 120
    # Rates over the window never go negative across the handover.
    recent = book.recent(0, now=3.0)
    assert recent["rps"] == round((120 - 100) / 3.0, 1)


def test_recent_rates_and_quantiles_come_from_the_window():
    book = StatsBook()
    book.record(stats(requests=0, cpu_seconds=1.0), now=100.0)
    assert book.recent(0, now=100.0) == {"rps": 0.0, "cpu_percent": None, "p50": None, "p99": None}
    book.record(stats(requests=50, cpu_seconds=1.5, latency={3: 50}), now=105.0)
    recent = book.recent(0, now=105.0)
    assert (recent["rps"], recent["cpu_percent"]) == (10.0, 10.0)
    assert recent["p50"] == pytest.approx(0.00075)  # (the middle of 0.5 to 1 ms)


# Quantiles ----------------------------------------------------------------------------


def test_quantile_of_no_requests_is_none():
    assert quantile(0.5, [0] * BUCKETS) is None
    assert quantile(0.99, [0] * BUCKETS) is None


def test_quantile_interpolates_within_its_bucket_as_histogram_quantile_does():
    buckets = [0] * BUCKETS
    buckets[3] = 10  # (0.5 ms, 1 ms]
    assert quantile(0.5, buckets) == pytest.approx(0.0005 + 0.0005 * 5 / 10)
    assert quantile(0.1, buckets) == pytest.approx(0.0005 + 0.0005 * 1 / 10)
    assert quantile(1.0, buckets) == pytest.approx(0.001)
    # The first bucket starts at 0.
    first = [4] + [0] * (BUCKETS - 1)
    assert quantile(0.5, first) == pytest.approx(0.0001 * 2 / 4)
    # Across buckets: rank 3 of 4 is the first of bucket 1's two.
    two = [2, 2] + [0] * (BUCKETS - 2)
    assert quantile(0.75, two) == pytest.approx(0.0001 + (0.00025 - 0.0001) * 1 / 2)
    # Empty buckets in between are skipped; a rank at a bucket's end is its bound.
    gaps = [0, 5, 0, 0, 5] + [0] * (BUCKETS - 5)
    assert quantile(0.5, gaps) == pytest.approx(0.00025)
    assert quantile(0.6, gaps) == pytest.approx(0.001 + (0.0025 - 0.001) * 1 / 5)


def test_quantile_in_the_overflow_bucket_is_the_last_bound():
    buckets = [0] * BUCKETS
    buckets[OVERFLOW] = 3
    assert quantile(0.5, buckets) == LATENCY_BUCKETS[-1]  # "at least 10 s"
    buckets[0] = 97
    assert quantile(0.5, buckets) == pytest.approx(0.0001 * 50 / 97)
    assert quantile(0.99, buckets) == LATENCY_BUCKETS[-1]


# What check refuses ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [count.name for count in COUNTS])
def test_check_refuses_a_negative_count(name):
    book = StatsBook()
    bad = stats(**{name: -1})
    with pytest.raises(MessageError, match=rf"stats\.{name} is negative"):
        check(bad)
    with pytest.raises(MessageError):
        book.record(bad, now=0.0)
    assert (book.live, book.history, book.version) == ({}, {}, 0)  # nothing kept


@pytest.mark.parametrize(
    ("responses", "message"),
    [
        ({"PURGE": get([("2xx", 1)])}, "unknown method 'PURGE'"),
        ({"get": get([("2xx", 1)])}, "unknown method 'get'"),
        ({"GET": [0, 0, 1]}, "does not match the status classes"),
        ({"GET": [0] * (len(STATUS_CLASSES) + 1)}, "does not match the status classes"),
        ({"GET": get([("2xx", -1)])}, "does not match the status classes"),
    ],
)
def test_check_refuses_unknown_methods_and_other_status_classes(responses, message):
    with pytest.raises(MessageError, match=message):
        check(stats(responses=responses))


@pytest.mark.parametrize(
    "latency", [[], [0] * (BUCKETS - 1), [0] * (BUCKETS + 1), [0] * (BUCKETS - 1) + [-1]]
)
def test_check_refuses_another_bucket_layout(latency):
    with pytest.raises(MessageError, match="does not match the fixed buckets"):
        check(Stats(index=0, generation=1, latency=latency))


def test_check_takes_every_fixed_method_and_other():
    everything = {method: get([("2xx", 1)]) for method in (*METHODS, OTHER_METHOD)}
    check(stats(responses=everything, **dict.fromkeys(COUNTERS + GAUGES, 0)))


# The counter table and what is made of it -------------------------------------------------

IDENTITY_FIELDS = {"index", "generation", "responses", "latency", "pid", "mode"}
IDENTITY_FIELDS |= {"rss_bytes", "uptime_seconds"}


def distinct(offset: int = 0) -> dict[str, float]:
    """A different value for every entry of the table (a float where it is one)."""
    return {
        count.name: count.type(offset + 10 * (i + 1)) + (0.5 if count.type is float else 0)
        for i, count in enumerate(COUNTS)
    }


def test_the_table_is_well_formed():
    names = [count.name for count in COUNTS]
    assert len(set(names)) == len(names)
    assert not set(names) & set(UNSENT)
    metrics = [count.metric for count in COUNTS if count.metric]
    assert len(set(metrics)) == len(metrics)
    errors = [count.error for count in COUNTS if count.error]
    assert len(set(errors)) == len(errors)
    for count in COUNTS:
        assert count.kind in (COUNTER, GAUGE), count
        assert count.type in (int, float), count
        assert count.source in (COUNTED, IDENTITY) or callable(count.source), count
        assert not (count.metric and count.error), count  # one series or the other
        assert count.error or count.status != ERRORS, count
        assert count.help, count
    assert set(COUNTERS) | set(GAUGES) == set(names)


def test_stats_has_one_field_per_entry_with_its_type_and_zero():
    fields = {f.name: f for f in dataclasses.fields(Stats)}
    assert set(fields) == IDENTITY_FIELDS | {count.name for count in COUNTS}
    blank = Stats(index=0, generation=1)
    for count in COUNTS:
        assert fields[count.name].type is count.type
        value = getattr(blank, count.name)
        assert value == 0 and type(value) is count.type, count.name


@pytest.mark.parametrize("sender", ["json", "msgspec"])
def test_every_entry_travels_under_its_name_and_the_coordinator_checks_its_type(sender):
    codec = {"json": JsonCodec(), "msgspec": MsgspecCodec()}[sender]
    sent = stats(**distinct())
    wire = json.loads(codec.encode(sent))
    for name, value in distinct().items():
        assert wire[name] == value
    assert MsgspecCodec().decode(codec.encode(sent)) == sent  # the coordinator's codec
    for count in COUNTS:
        wrong = dict(wire, **{count.name: 1.5 if count.type is int else "1"})
        with pytest.raises(MessageError, match=count.name):
            MsgspecCodec().decode(json.dumps(wrong).encode())


def test_shard_counters_are_plain_slots_for_what_the_shard_counts_itself():
    counters = ShardCounters()
    counted = {count.name: count.type for count in COUNTS if count.source == COUNTED}
    counted |= dict.fromkeys(UNSENT, int)
    assert set(ShardCounters.__slots__) == set(counted) | {"responses", "latency"}
    assert not hasattr(counters, "__dict__")
    for name, kind in counted.items():
        # Plain attributes on the hot path: slot descriptors, never properties.
        assert type(ShardCounters.__dict__[name]) is types.MemberDescriptorType
        value = getattr(counters, name)
        assert value == 0 and type(value) is kind, name
    assert counters.responses == [0] * ((len(METHODS) + 1) * len(STATUS_CLASSES))
    assert counters.latency == [0] * BUCKETS
    with pytest.raises(AttributeError):
        counters.no_such_counter = 1


def test_a_shards_stats_carry_every_entry_from_where_the_table_says():
    counters = ShardCounters()
    for i, name in enumerate(ShardCounters.__slots__):
        if name not in ("responses", "latency"):
            setattr(counters, name, (i + 1) * 100)
    counters.ws_closed = 1
    counters.responses[2] = 3  # GET 2xx
    counters.responses[len(STATUS_CLASSES) * len(METHODS) + 5] = 4  # other 5xx
    counters.latency[OVERFLOW] = 7
    state = types.SimpleNamespace(counters=counters, connections={1, 2, 3}, active_requests=2)
    sent = ShardIdentity(3, 4, "process").stats(types.SimpleNamespace(state=state))
    assert (sent.index, sent.generation, sent.mode) == (3, 4, "process")
    for count in COUNTS:
        if count.source == COUNTED:
            assert getattr(sent, count.name) == getattr(counters, count.name), count.name
    assert sent.requests == 7  # sum(responses)
    assert sent.open_connections == 3  # len(state.connections)
    assert sent.active_requests == 2
    assert sent.ws_open == counters.ws_connections - 1
    assert sent.cpu_seconds > 0  # IDENTITY: the shard's CPU clock
    assert sent.responses == {"GET": get([("2xx", 3)]), OTHER_METHOD: get([("5xx", 4)])}
    assert sent.latency[OVERFLOW] == 7 and sent.latency_sum == counters.latency_sum
    check(sent)


def scrape(book: StatsBook, shards: int = 2) -> dict[str, dict]:
    """A real exposition of ``book``, parsed: family name -> its type, help, samples."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(book, lambda: shards))
    families = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        families[family.name] = {"type": family.type, "help": family.documentation, **samples}
    return families


def fed_book() -> StatsBook:
    book = StatsBook()
    book.record(stats(0, 1, **distinct(), latency={0: 1}), now=0.0)
    book.record(stats(1, 1, **distinct(1000), latency={0: 1}), now=0.0)
    return book


def test_every_entry_reaches_a_real_prometheus_exposition():
    book = fed_book()
    families = scrape(book)
    zero, one = distinct(), distinct(1000)
    seen = set()
    for count in COUNTS:
        if count.metric:
            suffix = "_total" if count.kind == COUNTER else ""
            sample = f"shardserve_shard_{count.metric}{suffix}"
            for family in (f"shardserve_shard_{count.metric}", f"shardserve_{count.metric}"):
                expected_type = "counter" if count.kind == COUNTER else "gauge"
                assert families[family]["type"] == expected_type, family
                seen.add(family)
            shard = families[f"shardserve_shard_{count.metric}"]
            assert shard["help"] == count.help
            assert shard[(sample, (("shard", "0"),))] == zero[count.name]
            assert shard[(sample, (("shard", "1"),))] == one[count.name]
            total = families[f"shardserve_{count.metric}"]
            assert total["help"] == count.help + ", all shards"
            total_sample = sample.replace("shardserve_shard_", "shardserve_")
            assert total[(total_sample, ())] == zero[count.name] + one[count.name]
        elif count.error:
            errors = families["shardserve_errors"]
            assert count.help in errors["help"]
            assert errors[("shardserve_errors_total", (("kind", count.error),))] == (
                zero[count.name] + one[count.name]
            )
            shard = families["shardserve_shard_errors"]
            labels = (("kind", count.error), ("shard", "0"))
            assert shard[("shardserve_shard_errors_total", labels)] == zero[count.name]
        else:  # the histogram's sum
            assert count.name == "latency_sum"
            histogram = families["shardserve_request_duration_seconds"]
            assert histogram[("shardserve_request_duration_seconds_sum", ())] == (
                zero[count.name] + one[count.name]
            )
    # What is not one entry's own series: derived, structured, identity, the coordinator's.
    closed = families["shardserve_connections_closed"]
    opened = zero["connections"] + one["connections"]
    still_open = zero["open_connections"] + one["open_connections"]
    assert closed[("shardserve_connections_closed_total", ())] == opened - still_open
    rest = {
        "shardserve_shard_connections_closed",
        "shardserve_connections_closed",
        "shardserve_shard_responses",
        "shardserve_responses",
        "shardserve_shard_errors",
        "shardserve_errors",
        "shardserve_shard_request_duration_seconds",
        "shardserve_request_duration_seconds",
        "shardserve_shard_info",
        "shardserve_shard_resident_memory_bytes",
        "shardserve_shard_uptime_seconds",
        "shardserve_shard_restarts",
        "shardserve_reloads",
        "shardserve_shards",
        "shardserve_start_time_seconds",
    }
    assert set(families) == seen | rest
    started = families["shardserve_start_time_seconds"]
    assert started["type"] == "gauge"
    assert abs(started[("shardserve_start_time_seconds", ())] - time.time()) < 600


# Series dashboards rely on (names, types and help stay as they are): per shard and in
# total (help + ", all shards").  A new entry adds to these; none may change.
KNOWN_SERIES = {
    "requests": ("counter", "HTTP requests answered (or left by the client)"),
    "connections": ("counter", "connections accepted"),
    "connections_closed": ("counter", "connections closed"),
    "bytes_received": ("counter", "bytes read from clients (decrypted, with TLS)"),
    "bytes_sent": ("counter", "bytes written to clients (before encryption, with TLS)"),
    "websocket_connections": ("counter", "WebSocket handshakes accepted"),
    "websocket_messages_received": ("counter", "WebSocket messages received"),
    "websocket_messages_sent": ("counter", "WebSocket messages sent"),
    "cpu_seconds": ("counter", "CPU time used by shards (a subinterpreter's: its thread)"),
    "open_connections": ("gauge", "connections open now"),
    "active_requests": ("gauge", "requests (and WebSocket sessions) being answered now"),
    "websocket_open": ("gauge", "WebSocket connections open now"),
    "http2_connections": ("counter", "HTTP/2 connections"),
    "http2_requests": ("counter", "HTTP/2 requests (streams answered)"),
    "errors": (
        "counter",
        "errors by kind: app exceptions, parse errors, timeouts, overload (503), "
        "HTTP/2 streams refused, HTTP/2 protocol errors, HTTP/2 floods stopped",
    ),
}


def test_the_series_dashboards_know_keep_their_names_types_and_help():
    families = scrape(fed_book())
    for name, (kind, help_text) in KNOWN_SERIES.items():
        shard, total = families[f"shardserve_shard_{name}"], families[f"shardserve_{name}"]
        assert (shard["type"], shard["help"]) == (kind, help_text), name
        assert (total["type"], total["help"]) == (kind, help_text + ", all shards"), name
    errors = [key for key in families["shardserve_errors"] if isinstance(key, tuple)]
    assert {dict(labels)["kind"] for _, labels in errors} >= {
        "app",
        "parse",
        "timeout",
        "overload",
        "http2_refused",
        "http2_protocol",
        "http2_flood",
    }


def test_status_shows_the_entries_with_a_column_and_sums_the_errors():
    book = fed_book()
    tally = book.shard(0)
    counts = status_counts(tally)
    shown = [count.name for count in COUNTS if count.status not in (None, ERRORS)]
    assert list(counts) == [*shown, "errors"]
    assert all(counts[name] == tally[name] for name in shown)
    assert counts["errors"] == sum(tally[c.name] for c in COUNTS if c.status == ERRORS)
    # The table as `shardserve status` prints it: each column heading over its value.
    headings = [heading for heading, _ in control_client.COLUMNS]
    assert headings == [
        "shard", "pid", "mode", "cpus", "state", "req/s", "p50 ms", "p99 ms", "cpu %",
        "requests", "conns", "errors", "restarts", "rss MB", "uptime s",
    ]  # fmt: skip
    row = {
        "index": 0, "pid": 42, "mode": "process", "cpus": None, "state": "ready",
        "generation": 1, "rps_10s": 1.0, "cpu_percent_10s": 2.0, "p50_ms_10s": 1.5,
        "p99_ms_10s": 9.0, **counts, "restarts": 0, "rss_bytes": 2**21, "uptime_s": 3.0,
    }  # fmt: skip
    status = {"shards": [row], "coordinator_rss_bytes": 2**22, "state": "running",
              "where": "http://127.0.0.1:8000", "pid": 1, "totals": {"requests": 1},
              "reloads": 0}  # fmt: skip
    cells = dict(zip(headings, control_client.render(status).splitlines()[2].split(), strict=True))
    for count in COUNTS:
        if count.status not in (None, ROW, ERRORS):
            assert cells[count.status] == str(tally[count.name]), count.name
    assert cells["errors"] == str(counts["errors"])


def test_the_table_needs_only_the_standard_library():
    """Subinterpreter shards (which cannot load msgspec) import counters and messages."""
    code = (
        "import sys; sys.modules['msgspec'] = None; before = set(sys.modules)\n"
        "import shardserve.counters, shardserve.messages as m\n"
        "new = {n.split('.')[0] for n in set(sys.modules) - before}\n"
        "print(sorted(new - set(sys.stdlib_module_names) - {'shardserve'}))\n"
        "s = m.Stats(index=0, generation=1, requests=2, cpu_seconds=0.5)\n"
        "assert m.JsonCodec().decode(m.JsonCodec().encode(s)) == s\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
