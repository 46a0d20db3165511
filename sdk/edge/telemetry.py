"""What the runtime counts for the fleet view: calls, errors, fallbacks, confidence and latency, per version.

:meth:`Telemetry.record` is on the path of every ``predict``: a lock, a bisect into the
shared latency buckets (:mod:`sdk.telemetry`) and a few additions, no numpy.
:meth:`Telemetry.take` closes the window and returns the report the device publishes on its
status topic (at every interval and after every swap), one entry per version served in it.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from sdk.telemetry import LATENCY_BOUNDS_MS, MAX_VERSIONS, bucket, percentile

__all__ = ["Telemetry"]


class _Counts:
    """One version's counters in one window."""

    __slots__ = ("calls", "confidence_sum", "confident_rows", "errors", "fallbacks", "latency", "rows")

    def __init__(self) -> None:
        self.calls = self.errors = self.rows = self.fallbacks = self.confident_rows = 0
        self.confidence_sum = 0.0
        self.latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)

    def summary(self, version: int) -> dict[str, Any]:
        calls, rows = self.calls, self.rows
        return {
            "version": version,
            "calls": calls,
            "errors": self.errors,
            "error_rate": round(self.errors / calls, 6) if calls else 0.0,
            "rows": rows,
            "fallbacks": self.fallbacks,
            "fallback_rate": round(self.fallbacks / rows, 6) if rows else 0.0,
            "confident_rows": self.confident_rows,
            "mean_confidence": round(self.confidence_sum / self.confident_rows, 6) if self.confident_rows else None,
            "p50_ms": _ms(percentile(self.latency, 0.5)),
            "p99_ms": _ms(percentile(self.latency, 0.99)),
            "latency": [[i, n] for i, n in enumerate(self.latency) if n],
        }


class Telemetry:
    """Thread-safe counters of one device's predictions, cut into windows by :meth:`take`."""

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        """Start the first window now; ``clock`` is there for tests."""
        self._clock = clock
        self._lock = threading.Lock()
        self._boot = secrets.token_hex(4)  # window ids stay unique across restarts of the device
        self._seq = 0
        self._since = clock()
        self._window: dict[int, _Counts] = {}
        self.overflow = 0  # calls of a version past MAX_VERSIONS in one window, not reported

    def record(
        self,
        version: int,
        latency_ms: float,
        *,
        rows: int = 1,
        fallbacks: int = 0,
        confidence_sum: float = 0.0,
        confident_rows: int = 0,
        error: bool = False,
    ) -> None:
        """Count one call of ``version`` that answered ``rows`` samples (``error``: it failed, or the engine did)."""
        index = bucket(latency_ms)
        with self._lock:
            counts = self._window.get(version)
            if counts is None:
                if len(self._window) >= MAX_VERSIONS:
                    self.overflow += 1
                    return
                counts = self._window[version] = _Counts()
            counts.calls += 1
            counts.errors += error
            counts.rows += rows
            counts.fallbacks += fallbacks
            counts.confident_rows += confident_rows
            counts.confidence_sum += confidence_sum
            counts.latency[index] += 1

    def take(self) -> dict[str, Any]:
        """Close the window and return its report: its id, its length and one entry per version, by version."""
        with self._lock:
            now = self._clock()
            window, self._window = self._window, {}
            since, self._since = self._since, now
            self._seq += 1
            seq = self._seq
        return {
            "window": f"{self._boot}-{seq}",
            "seconds": round(max(0.0, now - since), 3),
            "versions": [window[v].summary(v) for v in sorted(window)],
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
