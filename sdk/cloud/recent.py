"""Request ids a worker saw lately, so a retried or redelivered request is answered once."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Literal

__all__ = ["RecentRequests"]

State = Literal["new", "in_flight", "answered"]


class RecentRequests:
    """A bounded, time-limited map of request keys to their state: in flight, or answered with these bytes."""

    def __init__(
        self,
        capacity: int = 4096,
        ttl_s: float = 60.0,
        max_answer_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Remember at most ``capacity`` keys, each for ``ttl_s`` seconds, and answers up to ``max_answer_bytes``."""
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.max_answer_bytes = max_answer_bytes
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, key: Hashable) -> tuple[State, bytes | None]:
        """Mark ``key`` in flight if it is new; else say what it is (and the answer, once answered)."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is not None:
                answer = entry[1]
                return ("in_flight", None) if answer is None else ("answered", answer)
            self._entries[key] = (now, None)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return "new", None

    def answered(self, key: Hashable, answer: bytes) -> None:
        """Record the encoded answer to ``key`` (a large one is forgotten: a repeat computes it again)."""
        with self._lock:
            if len(answer) > self.max_answer_bytes:
                self._entries.pop(key, None)
            elif key in self._entries:
                self._entries[key] = (self._entries[key][0], answer)

    def __len__(self) -> int:
        """Keys remembered now."""
        with self._lock:
            return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (seen, _) = next(iter(self._entries.items()))
            if now - seen < self.ttl_s:
                return
            del self._entries[key]
