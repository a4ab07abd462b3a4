"""Measuring what a piece of code leaves allocated, for the compiled twins' tests."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable


def allocated_growth(run: Callable[[], None], rounds: int = 5) -> int:
    """Bytes still allocated after ``rounds`` more calls of ``run`` than after one
    (which warms caches up): near 0 unless each call leaks."""
    run()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(rounds):
            run()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))
