"""What every benchmark shares: progress on stderr, a clean stdout for JSON, interleaved timing, ratios."""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TextIO

import numpy as np

__all__ = ["Progress", "interleaved_medians", "percentiles_us", "ratio", "stdout_to_stderr"]


@dataclass(frozen=True)
class Progress:
    """Prints timestamped steps to stderr; picklable, so a worker process can report too."""

    start: float
    prefix: str = ""

    def __call__(self, message: str) -> None:
        """Print one step."""
        print(f"[{time.time() - self.start:6.1f}s] {self.prefix}{message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[TextIO]:
    """Point file descriptor 1 at stderr (native libraries print too); yield a stream on the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w", encoding="utf-8") as real:
            yield real
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def interleaved_medians(fns: Mapping[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, float]:
    """Median microseconds per call of each function, each called once per round in rotating order."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn = fns[name]
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: statistics.median(ns) / 1e3 for name, ns in times.items()}


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` rounded to four decimals."""
    return round(numerator / denominator, 4)


def percentiles_us(samples_s: list[float], *qs: float) -> list[float]:
    """Percentiles ``qs`` of durations in seconds, in microseconds rounded to 0.1."""
    return [round(float(v) * 1e6, 1) for v in np.percentile(np.asarray(samples_s), qs)]
