"""The supervisor's decisions that need no processes: when to restart a shard that
failed, when to give up, and when a shard's memory calls for its replacement.

Pure objects: they are told what happened (and when) and answer; they never read a
clock, sleep or touch a process, so tests/test_policies.py checks every rule exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

# A shard that fails this soon after it became ready counts towards the crash loop.
STABLE_SECONDS = 10.0
MAX_CONSECUTIVE_FAILURES = 5
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0

MIB = 2**20  # --limit-max-rss counts MB as `shardserve status` shows them: MiB
RSS_SAMPLES = 3  # consecutive Stats (one a second) above --limit-max-rss: replace the shard
RSS_RETRY_SECONDS = 30.0  # after a memory replacement failed to start, before trying again


class RestartPolicy:
    """One slot's failures in a row: the delay before its next start, or a verdict."""

    def __init__(
        self,
        stable_seconds: float = STABLE_SECONDS,
        max_failures: int = MAX_CONSECUTIVE_FAILURES,
        first_delay: float = BACKOFF_FIRST,
        max_delay: float = BACKOFF_MAX,
    ) -> None:
        self.stable_seconds = stable_seconds
        self.max_failures = max_failures
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.failures = 0

    def exited(self, served_for: float | None) -> float | None:
        """A shard exited unexpectedly after serving ``served_for`` seconds (None: it
        never became ready).  Returns the delay before starting it again, or None: it
        keeps failing, give up.  A shard that served long enough starts a new count."""
        if served_for is not None and served_for >= self.stable_seconds:
            self.failures = 0
        return self.failed()

    def failed(self) -> float | None:
        """One more failure in a row (also: a successor that could not start while
        its predecessor died): the delay before the next try, or None to give up."""
        self.failures += 1
        if self.failures > self.max_failures:
            return None
        if self.failures == 1:
            return 0.0  # the first restart is immediate
        return min(self.first_delay * 2 ** (self.failures - 2), self.max_delay)

    def reset(self) -> None:
        """Start counting afresh (every shard is being started again)."""
        self.failures = 0


@dataclass
class RssWatch:
    """One shard generation's samples against --limit-max-rss."""

    over: int = 0  # consecutive samples above the limit
    replacing: bool = False  # a replacement for memory is under way
    retry_at: float = 0.0  # (monotonic) not before: the last replacement failed to start


class MemoryLimit:
    """--limit-max-rss: replace a shard whose RSS stays above the limit for ``samples``
    consecutive Stats; after a replacement that failed to start, wait ``retry_seconds``."""

    def __init__(
        self, limit_mb: int, samples: int = RSS_SAMPLES, retry_seconds: float = RSS_RETRY_SECONDS
    ) -> None:
        self.limit_mb = limit_mb
        self.limit_bytes = limit_mb * MIB
        self.samples = samples
        self.retry_seconds = retry_seconds

    def sample(self, watch: RssWatch, rss_bytes: int | None) -> bool:
        """Count one sample; True once the last ``samples`` were all above the limit."""
        if rss_bytes is None:  # (a subinterpreter shard: no memory of its own)
            return False
        if rss_bytes <= self.limit_bytes:
            watch.over = 0
            return False
        watch.over += 1
        return watch.over >= self.samples

    def due(self, watch: RssWatch, now: float) -> bool:
        """Whether a shard over the limit may be replaced now: not already being
        replaced, and not within ``retry_seconds`` of a replacement that failed."""
        return not watch.replacing and now >= watch.retry_at

    def replacement_failed(self, watch: RssWatch, now: float) -> None:
        watch.replacing = False
        watch.retry_at = now + self.retry_seconds
