"""One view of all shards: the latest Stats of each, and totals that never go back.

A shard's counters start at zero with each generation; when a generation ends its last
counts are carried over into its slot, so totals (and the per-shard series) stay
monotonic across restarts, as Prometheus counters must.  Which numbers there are, and
which are counters and which gauges, is the counter table's (counters.py).  Stats come
from shards, which the coordinator does not trust: ``check`` refuses any that would
mint new series or break the arithmetic.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from ..counters import (
    COUNTER,
    COUNTS,
    GAUGE,
    LATENCY_BUCKETS,
    METHODS,
    OTHER_METHOD,
    STATUS_CLASSES,
)
from ..messages import MessageError, Stats

# The counter table's counters (they only grow within a generation, and are carried
# over when it ends), then its gauges (values now, not carried).
COUNTERS = tuple(count.name for count in COUNTS if count.kind == COUNTER)
GAUGES = tuple(count.name for count in COUNTS if count.kind == GAUGE)
RATE_WINDOW = 10.0  # seconds, for `shardserve status`
KNOWN_METHODS = frozenset((*METHODS, OTHER_METHOD))


def check(stats: Stats) -> None:
    """Raise MessageError unless ``stats`` keeps to the fixed methods and buckets."""
    for name in COUNTERS + GAUGES:
        if getattr(stats, name) < 0:
            raise MessageError(f"stats.{name} is negative")
    if len(stats.latency) != len(LATENCY_BUCKETS) + 1 or min(stats.latency) < 0:
        raise MessageError("stats.latency does not match the fixed buckets")
    for method, counts in stats.responses.items():
        if method not in KNOWN_METHODS:
            raise MessageError(f"stats.responses: unknown method {method[:20]!r}")
        if len(counts) != len(STATUS_CLASSES) or min(counts) < 0:
            raise MessageError(f"stats.responses[{method!r}] does not match the status classes")


@dataclass
class Tally:
    """Counts of one shard slot (or of all): counters, gauges, responses, latency."""

    values: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS + GAUGES, 0))
    responses: dict[str, list[int]] = field(default_factory=dict)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))

    def add(self, other: Stats | Tally, gauges: bool = True) -> None:
        values = self.values
        source = other.values if isinstance(other, Tally) else None
        for name in COUNTERS + (GAUGES if gauges else ()):
            values[name] += source[name] if source is not None else getattr(other, name)
        for method, counts in other.responses.items():
            mine = self.responses.setdefault(method, [0] * len(STATUS_CLASSES))
            for i, count in enumerate(counts):
                mine[i] += count
        for i, count in enumerate(other.latency):
            self.latency[i] += count

    def __getitem__(self, name: str) -> float:
        return self.values[name]


def quantile(q: float, buckets: list[int]) -> float | None:
    """The q-quantile (seconds) of a latency histogram, interpolated within its bucket
    as Prometheus's histogram_quantile does; None with no requests.  In the overflow
    bucket it is the last bound: "at least this"."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i == len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]
            lower = LATENCY_BUCKETS[i - 1] if i else 0.0
            return lower + (LATENCY_BUCKETS[i] - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BUCKETS[-1]


@dataclass
class Point:
    """A shard slot's counts at one moment, for rates over the last seconds."""

    when: float
    requests: float
    cpu_seconds: float
    latency: list[int]


class StatsBook:
    def __init__(self) -> None:
        # (shard index, generation) -> its latest Stats, for every generation running
        # (during a rolling restart an old one drains beside its successor).
        self.live: dict[tuple[int, int], Stats] = {}
        self.carried: dict[int, Tally] = {}  # shard index -> ended generations' counts
        # cause -> restarts: unexpected exits, and replacements for memory (--limit-max-rss)
        self.restarts: dict[str, int] = {}
        self.restarts_of: dict[int, int] = {}  # shard index -> restarts
        self.reloads = 0
        self.version = 0  # grows with every change: readers may cache what they made
        self.history: dict[int, deque[Point]] = {}  # shard index -> recent points

    def record(self, stats: Stats, now: float | None = None) -> None:
        """Take a shard's latest Stats; MessageError (and nothing kept) if malformed."""
        check(stats)
        self.live[(stats.index, stats.generation)] = stats
        self.version += 1
        now = time.monotonic() if now is None else now
        tally = self.shard(stats.index)
        history = self.history.setdefault(stats.index, deque())
        history.append(Point(now, tally["requests"], tally["cpu_seconds"], tally.latency))
        while history and now - history[0].when > RATE_WINDOW + 1:
            history.popleft()

    def count_reload(self) -> None:
        self.reloads += 1
        self.version += 1

    def count_restart(self, index: int, cause: str) -> None:
        self.version += 1
        self.restarts[cause] = self.restarts.get(cause, 0) + 1
        self.restarts_of[index] = self.restarts_of.get(index, 0) + 1

    def ended(self, index: int, generation: int, last: Stats | None) -> None:
        """A generation ended; ``last`` is the last Stats it sent, if any."""
        latest = self.live.pop((index, generation), None)
        self.version += 1
        final = last if last is not None else latest
        if final is not None:
            self.carried.setdefault(index, Tally()).add(final, gauges=False)

    def shard(self, index: int) -> Tally:
        """Monotonic counters and current gauges of one shard slot."""
        tally = Tally()
        carried = self.carried.get(index)
        if carried is not None:
            tally.add(carried, gauges=False)
        for (slot, _), stats in self.live.items():
            if slot == index:
                tally.add(stats)
        return tally

    def latest(self, index: int) -> Stats | None:
        """The newest generation's latest Stats of a slot (its pid, CPU, memory)."""
        mine = [(generation, s) for (slot, generation), s in self.live.items() if slot == index]
        return max(mine, key=lambda item: item[0])[1] if mine else None

    def indexes(self) -> list[int]:
        return sorted({index for index, _ in self.live} | set(self.carried))

    def totals(self) -> Tally:
        total = Tally()
        for index in self.indexes():
            total.add(self.shard(index))
        return total

    def recent(self, index: int, now: float) -> dict[str, float | None]:
        """Over the last RATE_WINDOW seconds: req/s, CPU share and latency p50/p99."""
        points = [p for p in self.history.get(index, ()) if now - p.when <= RATE_WINDOW + 0.5]
        if len(points) < 2 or points[-1].when <= points[0].when:
            return {"rps": 0.0, "cpu_percent": None, "p50": None, "p99": None}
        first, last = points[0], points[-1]
        seconds = last.when - first.when
        latency = [b - a for a, b in zip(first.latency, last.latency, strict=True)]
        # (A restart inside the window carries counts over, so deltas stay >= 0.)
        return {
            "rps": round((last.requests - first.requests) / seconds, 1),
            "cpu_percent": round(100 * (last.cpu_seconds - first.cpu_seconds) / seconds, 1),
            "p50": quantile(0.5, latency),
            "p99": quantile(0.99, latency),
        }
