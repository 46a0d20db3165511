"""A circuit breaker for cloud calls: stop asking a cloud that keeps failing, probe it now and then.

```
closed --(failure_threshold failures in a row)--> open --(reset_timeout_s)--> half-open
half-open --(probe succeeds)--> closed        half-open --(probe fails)--> open
open --(on_reconnect: the broker link came back)--> half-open at once
```
Decisions only: the caller says what happened; the clock is injectable for tests. A lost or
missing broker connection is not a failure of the cloud: the caller does not record it (a call
let through and cut off by the drop gives its turn back with :meth:`release`), and the
reconnect itself half-opens the breaker, so a broker restart costs the reconnect, not
``reset_timeout_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["CircuitBreaker", "State"]

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Counts consecutive failures and decides whether the next call may go out."""

    def __init__(
        self, failure_threshold: int = 3, reset_timeout_s: float = 5.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Open after ``failure_threshold`` failures in a row; let one probe through ``reset_timeout_s`` later."""
        if failure_threshold < 1 or reset_timeout_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout_s > 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        """Where the breaker stands now."""
        with self._lock:
            return self._state(self._clock())

    def _state(self, now: float) -> State:
        if self._opened_at is None:
            return "closed"
        if now - self._opened_at >= self.reset_timeout_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open, only one probe at a time."""
        with self._lock:
            state = self._state(self._clock())
            if state == "closed":
                return True
            if state == "half-open" and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        """A call succeeded: close the circuit."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def on_reconnect(self) -> None:
        """The broker connection came back: an open breaker lets one probe through now (half-open)."""
        with self._lock:
            if self._opened_at is not None:
                self._opened_at = self._clock() - self.reset_timeout_s
                self._probing = False

    def release(self) -> None:
        """A call that was let through ended without telling anything about the cloud: free its probe turn."""
        with self._lock:
            self._probing = False

    def record_failure(self) -> None:
        """A call failed: count it; open (again) at the threshold or when a probe failed."""
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
            self._probing = False
