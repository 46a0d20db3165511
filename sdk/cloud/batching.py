"""Dynamic batching: decide when to close a batch (:class:`BatchQueue`), and a thread that runs them (:class:`Batcher`).

A batch closes when it holds ``max_batch_size`` samples or when its oldest request
has waited ``max_queue_delay_ms``. Higher priorities leave first; requests whose
deadline passed are dropped before compute; a full queue sheds load at once.

A request that would be a batch of one anyway (the model idle, nothing queued, no queue
delay) may run on its caller's thread (:meth:`Batcher.run_alone`, which returns the outputs
themselves) when the model's recent batches were quick (under :data:`INLINE_MAX_S`): a
hand-off to the batcher's thread and back costs more than such a model's run (two thread
wake-ups and the GIL changing hands), and so does a future. Requests that come while it
runs queue as usual and leave together in the next batch, so batching under load stays as it was.
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

from sdk import tracing
from sdk.config import check
from sdk.errors import DeadlineExceeded, Overloaded

__all__ = ["INLINE_MAX_S", "BatchQueue", "Batcher", "BatcherConfig", "Decision", "Pending"]

Clock = Callable[[], float]

#: The longest recent batch time (seconds, smoothed) at which an idle model runs a request on its caller's thread.
INLINE_MAX_S = 0.001
_SMOOTHING = 0.2


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
    """One queued request: its samples, deadline, priority, future, and span when tracing is on."""

    x: np.ndarray
    arrived: float
    deadline: float | None
    priority: int
    future: Future = dataclasses.field(default_factory=Future)
    trace: object | None = None


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

    def takes_at_once(self, rows: int, deadline: float | None, now: float) -> bool:
        """Whether ``rows`` samples due by ``deadline`` would leave alone at once: nothing waits, no queue delay."""
        return (
            not self._heap
            and self.config.max_queue_delay_ms == 0
            and (deadline is None or deadline > now)
            and rows <= self.config.max_batch_size
        )

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
        self._running = False  # a batch is on the model (on the driver's thread or a caller's)
        self._batch_s: float | None = None  # recent batch time, smoothed; None until a batch ran
        self._thread = threading.Thread(target=self._loop, name="fedge-batcher", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Requests waiting."""
        with self._cond:
            return len(self._queue)

    def submit(
        self, x: np.ndarray, *, deadline_s: float | None = None, priority: int = 0, trace: object | None = None
    ) -> Future:
        """Queue samples (axis 0) and return a future for their outputs; ``trace`` is the request's span, if any."""
        now = self._clock()
        item = Pending(x, now, None if deadline_s is None else now + deadline_s, priority, trace=trace)
        with self._cond:
            if self._closed:
                raise Overloaded("batcher is closed")
            self._queue.push(item)
            self._cond.notify()
        return item.future

    def run_alone(
        self, x: np.ndarray, *, deadline_s: float | None = None, trace: object | None = None
    ) -> np.ndarray | None:
        """Run samples that would leave alone at once on a quick, idle model on this thread; return their outputs.

        None: the model is busy, slow or not yet timed, or requests wait: :meth:`submit` them instead.
        A failure of the model is raised here.
        """
        now = self._clock()
        with self._cond:
            if self._closed or not self._quick_and_idle():
                return None
            if not self._queue.takes_at_once(len(x), None if deadline_s is None else now + deadline_s, now):
                return None
            self._running = True
        t0 = self._clock()
        try:
            return self._run_traced(x, [trace])
        finally:
            self._free(self._clock() - t0)

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

    def _quick_and_idle(self) -> bool:
        return not self._running and self._batch_s is not None and self._batch_s < INLINE_MAX_S

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed and not self._running:
                        self._fail_all()
                        return
                    if self._running:  # a caller's batch of one is on the model: what queued meanwhile waits for it
                        self._cond.wait()
                        continue
                    d = self._queue.decide(self._clock())
                    for p in d.expired:
                        _fail(p, DeadlineExceeded("the deadline passed while the request was queued"))
                    if d.batch:
                        self._running = True
                        break
                    self._cond.wait(d.wait_s)
            self._run_batch(d.batch)

    def _run_batch(self, batch: list[Pending]) -> None:
        """Run ``batch``, then free the model."""
        took = None
        try:
            took = self._execute(batch)
        finally:
            self._free(took)

    def _free(self, took: float | None) -> None:
        """Free the model after a run of ``took`` seconds (None: nothing ran) and tell the driver if requests wait."""
        with self._cond:
            self._running = False
            if took is not None:  # clipped: one run slowed by a busy machine does not turn the fast path off
                took, last = min(took, 4 * INLINE_MAX_S), self._batch_s
                self._batch_s = took if last is None else last + _SMOOTHING * (took - last)
            if self._queue or self._closed:  # else the driver has nothing to do: waking it costs a GIL hand-off
                self._cond.notify()

    def _fail_all(self) -> None:
        while len(self._queue):
            d = self._queue.decide(float("inf"))
            for p in d.batch + d.expired:
                _fail(p, Overloaded("the batcher is closed"))

    def _execute(self, batch: list[Pending]) -> float | None:
        """Run the batch on the model and resolve its futures; return the model's seconds (None: nothing ran)."""
        # A caller that gave up (an HTTP client went away) cancelled its future: skip its samples.
        batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not batch:
            return None
        t0 = self._clock()
        try:
            out = self._run_traced(
                np.concatenate([p.x for p in batch], axis=0) if len(batch) > 1 else batch[0].x, [p.trace for p in batch]
            )
        except Exception as exc:  # the model's failure belongs to every caller in the batch
            for p in batch:
                p.future.set_exception(exc)
            return self._clock() - t0
        took = self._clock() - t0
        start = 0
        for p in batch:
            p.future.set_result(out[start : start + len(p.x)])
            start += len(p.x)
        return took

    def _run_traced(self, x: np.ndarray, traces: list[object | None]) -> np.ndarray:
        """Run the model on one batch, counted by ``on_batch`` and inside its span when tracing is on."""
        if self.on_batch is not None:
            self.on_batch(len(x))
        if not tracing.active():
            return self._run(x)
        span = tracing.batch_span(traces, len(x))
        try:
            out = self._run(x)
        except Exception:
            tracing.end_span(span, "internal")
            raise
        tracing.end_span(span)  # before the answers: whoever sees one sees its batch's span ended
        return out


def _fail(item: Pending, exc: Exception) -> None:
    if item.future.set_running_or_notify_cancel():
        item.future.set_exception(exc)
