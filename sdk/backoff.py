"""The one retry policy of a device: the regular interval after a success, exponential backoff after failures.

Both carry jitter, so that a fleet that failed together does not come back together. The
updater computes each check's ``retry_after_s`` with it; the background worker uses it only
for a check that raised (a bug boundary).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdk.config import check

__all__ = ["Backoff"]


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """``interval_s`` (+-10 %) after a success; ``base_s * 2**(n-1)`` up to ``max_s``, less up to ``jitter``."""

    base_s: float = 5.0
    max_s: float = 300.0
    interval_s: float = 900.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        check(0 < self.base_s <= self.max_s, "base_s", "must be > 0 and <= max_s")
        check(self.interval_s > 0, "interval_s", "must be > 0")
        check(0 <= self.jitter < 1, "jitter", "must be within [0, 1)")

    def delay(self, failures: int, draw: float) -> float:
        """Seconds to wait after ``failures`` failures in a row (0: after a success); ``draw`` is uniform in [0, 1)."""
        if failures <= 0:
            return self.interval_s * (0.9 + 0.2 * draw)
        ceiling = min(self.max_s, self.base_s * 2.0 ** min(failures - 1, 64))
        return ceiling * (1.0 - self.jitter * (1.0 - draw))
