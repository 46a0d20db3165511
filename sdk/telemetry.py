"""Device telemetry on the status topic: its bounds and the latency buckets that device and cloud share.

A device counts latencies into fixed log-scale buckets (:data:`LATENCY_BOUNDS_MS`, four per
doubling from 10 µs to about 42 s: a percentile read from them is within 19 % of the true
value) and sends the non-empty ones; the cloud adds the buckets of every device on a version
and reads that version's p50 and p99 from the sum, which percentiles alone would not allow.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

__all__ = [
    "LATENCY_BOUNDS_MS",
    "MAX_STATUS_BYTES",
    "MAX_VERSIONS",
    "bucket",
    "percentile",
]

#: Upper bounds of the latency buckets in ms; one more bucket holds everything above the last.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(0.01 * 2 ** (i / 4) for i in range(89))

#: The most versions one telemetry window describes (a swap and a rollback in one window make three).
MAX_VERSIONS = 4

#: The largest status message the release service reads; a full window with every bucket is about 6 KiB.
MAX_STATUS_BYTES = 16 * 1024


def bucket(latency_ms: float) -> int:
    """The index of the bucket that holds ``latency_ms`` (``len(LATENCY_BOUNDS_MS)`` above the last bound)."""
    return bisect_left(LATENCY_BOUNDS_MS, latency_ms)


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of the latencies counted in ``counts``, as its bucket's bound; None if empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS) - 1)]
    return LATENCY_BOUNDS_MS[-1]
