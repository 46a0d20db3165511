"""Dynamic batching: decide when to close a batch (:class:`BatchQueue`), and a thread that runs them (:class:`Batcher`).

A batch closes when it holds ``max_batch_size`` samples or when its oldest request
has waited ``max_queue_delay_ms``. Higher priorities leave first; requests whose
deadline passed are dropped before compute; a full queue sheds load at once.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from sdk.config import check
from sdk.errors import DeadlineExceeded, Overloaded

__all__ = ["BatchQueue", "Batcher", "BatcherConfig", "Decision", "Pending"]

Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatcherConfig:
    """How the batcher groups requests.

    With ``max_queue_delay_ms = 0`` (the default) a batch leaves as soon as the model is
    free, holding whatever queued while the previous batch ran: no added latency when
    idle, large batches under load. A positive delay trades latency for fuller batches.
    """

    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    max_queue: int = 1024

    def __post_init__(self) -> None:
        check(1 <= self.max_batch_size <= 4096, "max_batch_size", f"must be within 1..4096, got {self.max_batch_size}")
        check(0 <= self.max_queue_delay_ms <= 10_000, "max_queue_delay_ms", "must be within 0..10000")
        check(1 <= self.max_queue <= 1_000_000, "max_queue", f"must be within 1..1000000, got {self.max_queue}")


@dataclasses.dataclass(eq=False)
class Pending:
    """One queued request: its samples, deadline, priority and future."""

    x: np.ndarray
    arrived: float
    deadline: float | None
    priority: int
    future: Future = dataclasses.field(default_factory=Future)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do now: run `batch`, fail `expired`, else wait `wait_s` (None: until a submit)."""

    batch: list[Pending]
    expired: list[Pending]
    wait_s: float | None


class BatchQueue:
    """Pure batching decisions over a bounded priority queue, with no threads and no I/O."""

    def __init__(self, config: BatcherConfig) -> None:
        """Start empty."""
        self.config = config
        self._heap: list[tuple[int, int, Pending]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Requests waiting."""
        return len(self._heap)

    def push(self, item: Pending) -> None:
        """Queue a request, or raise Overloaded at once when the queue is full."""
        if len(self._heap) >= self.config.max_queue:
            raise Overloaded(f"queue full ({self.config.max_queue} requests)")
        heapq.heappush(self._heap, (-item.priority, next(self._seq), item))

    def decide(self, now: float) -> Decision:
        """Close a batch when it is full or its oldest request waited long enough; drop expired ones."""
        expired = [e[2] for e in self._heap if e[2].deadline is not None and e[2].deadline <= now]
        if expired:
            self._heap = [e for e in self._heap if e[2] not in expired]
            heapq.heapify(self._heap)
        if not self._heap:
            return Decision([], expired, None)
        samples = sum(len(e[2].x) for e in self._heap)
        oldest = min(e[2].arrived for e in self._heap)
        due = oldest + self.config.max_queue_delay_ms / 1000.0
        if samples < self.config.max_batch_size and now < due:
            return Decision([], expired, due - now)
        batch: list[Pending] = []
        size = 0
        while self._heap:
            nxt = self._heap[0][2]
            if batch and size + len(nxt.x) > self.config.max_batch_size:
                break
            heapq.heappop(self._heap)
            batch.append(nxt)
            size += len(nxt.x)
        return Decision(batch, expired, 0.0)


class Batcher:
    """Runs batches from a BatchQueue on `run_batch` in one thread and resolves the futures."""

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        config: BatcherConfig,
        *,
        clock: Clock = time.monotonic,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """Start the driver thread; ``on_batch`` hears the size of every batch run (for metrics)."""
        self._run = run_batch
        self._queue = BatchQueue(config)
        self._clock = clock
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="fedge-batcher", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Requests waiting."""
        with self._cond:
            return len(self._queue)

    def submit(self, x: np.ndarray, *, deadline_s: float | None = None, priority: int = 0) -> Future:
        """Queue samples (axis 0) and return a future for their outputs."""
        now = self._clock()
        item = Pending(x, now, None if deadline_s is None else now + deadline_s, priority)
        with self._cond:
            if self._closed:
                raise Overloaded("batcher is closed")
            self._queue.push(item)
            self._cond.notify()
        return item.future

    def close(self) -> None:
        """Stop the thread; queued requests fail with Overloaded."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    @property
    def alive(self) -> bool:
        """Whether the driver thread is running and taking requests."""
        return self._thread.is_alive() and not self._closed

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        self._fail_all()
                        return
                    d = self._queue.decide(self._clock())
                    for p in d.expired:
                        _fail(p, DeadlineExceeded("the deadline passed while the request was queued"))
                    if d.batch:
                        break
                    self._cond.wait(d.wait_s)
            self._execute(d.batch)

    def _fail_all(self) -> None:
        while len(self._queue):
            d = self._queue.decide(float("inf"))
            for p in d.batch + d.expired:
                _fail(p, Overloaded("the batcher is closed"))

    def _execute(self, batch: list[Pending]) -> None:
        # A caller that gave up (an HTTP client went away) cancelled its future: skip its samples.
        batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not batch:
            return
        if self.on_batch is not None:
            self.on_batch(sum(len(p.x) for p in batch))
        try:
            out = self._run(np.concatenate([p.x for p in batch], axis=0) if len(batch) > 1 else batch[0].x)
        except Exception as exc:  # the model's failure belongs to every caller in the batch
            for p in batch:
                p.future.set_exception(exc)
            return
        start = 0
        for p in batch:
            p.future.set_result(out[start : start + len(p.x)])
            start += len(p.x)


def _fail(item: Pending, exc: Exception) -> None:
    if item.future.set_running_or_notify_cancel():
        item.future.set_exception(exc)
