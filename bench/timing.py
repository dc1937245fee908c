"""Timing shared by the bench scripts."""

from __future__ import annotations

import statistics
import time
from typing import Callable

# A first call slower than this is itself a measurement (not a warm-up worth throwing away):
# SDPA at 16k tokens on a CPU takes tens of seconds.
SLOW_CALL_S = 1.0


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls, after one untimed warm-up (unless the call is slow)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = [first] if first > SLOW_CALL_S else []
    while len(times) < repeats:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
