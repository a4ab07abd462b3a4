"""One view of all shards: the latest Stats of each, and totals that never go back.

A shard's counters start at zero with each generation; when a generation ends its last
counts are carried over into its slot, so totals (and the per-shard series) stay
monotonic across restarts, as Prometheus counters must.
"""

from __future__ import annotations

import time
from collections import Counter, deque

from ..messages import Stats

# Stats fields that only grow within a generation (counters); the rest are gauges.
COUNTERS = ("requests", "connections", "rejected", "app_errors", "timeouts")
GAUGES = ("open_connections", "active_requests")
RATE_WINDOW = 10.0  # seconds, for `shardserve status`


class StatsBook:
    def __init__(self) -> None:
        # (shard index, generation) -> its latest Stats, for every generation running
        # (during a rolling restart an old one drains beside its successor).
        self.live: dict[tuple[int, int], Stats] = {}
        self.carried: dict[int, Counter[str]] = {}  # shard index -> ended generations' counts
        self.restarts: Counter[str] = Counter()  # cause -> unexpected shard exits
        self.restarts_of: Counter[int] = Counter()  # shard index -> unexpected exits
        self.reloads = 0
        # shard index -> (when, its requests so far), for rates over the last seconds
        self.history: dict[int, deque[tuple[float, int]]] = {}

    def record(self, stats: Stats, now: float | None = None) -> None:
        self.live[(stats.index, stats.generation)] = stats
        now = time.monotonic() if now is None else now
        history = self.history.setdefault(stats.index, deque())
        history.append((now, self.shard(stats.index)["requests"]))
        while history and now - history[0][0] > RATE_WINDOW + 1:
            history.popleft()

    def rate(self, index: int, now: float) -> float:
        """Requests per second of one shard over the last RATE_WINDOW seconds."""
        points = [p for p in self.history.get(index, ()) if now - p[0] <= RATE_WINDOW + 0.5]
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return 0.0
        return round((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]), 1)

    def ended(self, index: int, generation: int, last: Stats | None) -> None:
        """A generation ended; ``last`` is the last Stats it sent, if any."""
        latest = self.live.pop((index, generation), None)
        final = last if last is not None else latest
        if final is not None:
            carried = self.carried.setdefault(index, Counter())
            for name in COUNTERS:
                carried[name] += getattr(final, name)

    def shard(self, index: int) -> dict[str, int]:
        """Monotonic counters and current gauges of one shard slot."""
        values = dict.fromkeys(COUNTERS + GAUGES, 0)
        values.update(self.carried.get(index, {}))
        for (slot, _), stats in self.live.items():
            if slot == index:
                for name in COUNTERS + GAUGES:
                    values[name] += getattr(stats, name)
        return values

    def indexes(self) -> list[int]:
        return sorted({index for index, _ in self.live} | set(self.carried))

    def totals(self) -> dict[str, int]:
        total = dict.fromkeys(COUNTERS + GAUGES, 0)
        for index in self.indexes():
            for name, value in self.shard(index).items():
                total[name] += value
        return total
