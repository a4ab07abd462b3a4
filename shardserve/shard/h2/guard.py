"""Budgets that turn HTTP/2 abuse into a GOAWAY (ENHANCE_YOUR_CALM) instead of work.

Each is a token bucket on the shard's coarse clock: ``capacity`` events at once,
refilled at ``rate`` per second.  A connection has two: one for streams reset before
their answer (by the client, as in rapid reset, CVE-2023-44487, or by us for a
refused or malformed stream, as in "MadeYouReset"), one for frames that cost work but
carry no request (PING, SETTINGS, PRIORITY, unsolicited WINDOW_UPDATE, empty DATA,
unknown frames).
"""

from __future__ import annotations

# Streams reset before their response: about twice what a busy browser tab cancels.
RESET_CAPACITY = 200
RESET_RATE = 100.0
# Control frames that carry no request.
CONTROL_CAPACITY = 1000
CONTROL_RATE = 500.0


class Budget:
    __slots__ = ("tokens", "capacity", "rate", "stamp")

    def __init__(self, capacity: int, rate: float, now: float) -> None:
        self.tokens = float(capacity)
        self.capacity = capacity
        self.rate = rate
        self.stamp = now

    def spend(self, now: float) -> bool:
        """Take one token; False once the budget is spent."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.stamp = now
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.tokens -= 1
        return self.tokens >= 0
