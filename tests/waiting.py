"""Bounded waits for tests: poll for an outcome with a limit far above its normal time, so a loaded machine passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

__all__ = ["PATIENCE_S", "poll"]

T = TypeVar("T")

#: The bound for a wait on something that normally takes milliseconds to a second or two.
PATIENCE_S = 60.0


def poll(predicate: Callable[[], T], what: str, timeout_s: float = PATIENCE_S, interval_s: float = 0.02) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; fail naming ``what`` after the bound."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)
