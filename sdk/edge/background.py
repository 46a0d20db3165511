"""Background work on a device that must never end the device program: one boundary, backoff with jitter, coalescing.

A device's update checks run in one daemon thread (:class:`CheckWorker`): at start, when
poked (an MQTT release notice), and when the last check's result asks (``next_check_in``: the
updater's ``retry_after_s``, from :class:`sdk.backoff.Backoff`), else every ``every_s``.
Whatever a check raises (a bug: the updater reports its failures as outcomes) is logged on one
line with its type, counted, and retried after the schedule's backoff; the thread goes on. A
thread that dies anyway (a ``BaseException`` such as a library's ``sys.exit``) is found by the
next :meth:`CheckWorker.poke` or :meth:`CheckWorker.ensure_running`, logged, and started again.
Pokes are coalesced: however many arrive, two checks start at least ``min_interval_s``
apart, stretched by a random factor so that a fleet woken by one notice does not check in
step. When the next check is due is decided by :func:`next_due`, a function of the worker's state with no clock or I/O.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdk.backoff import Backoff
from sdk.config import check

__all__ = ["CheckSchedule", "CheckWorker", "next_due"]

log = logging.getLogger("fedge.edge.background")


@dataclass(frozen=True, kw_only=True)
class CheckSchedule:
    """When checks run: ``at_start``, every ``every_s`` (None: when poked), never closer than ``min_interval_s``."""

    min_interval_s: float = 30.0
    every_s: float | None = None
    at_start: bool = False
    jitter: float = 0.2
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=1.0, max_s=300.0))  # after a check that raised

    def __post_init__(self) -> None:
        check(self.min_interval_s >= 0, "min_interval_s", f"must be >= 0, got {self.min_interval_s}")
        check(self.every_s is None or self.every_s > 0, "every_s", f"must be > 0, got {self.every_s}")
        check(0 <= self.jitter <= 1, "jitter", f"must be within [0, 1], got {self.jitter}")


def next_due(*, now: float, scheduled: float, poked: bool, earliest: float) -> float:
    """When the next check starts: the scheduled time, or for a pending poke as soon as the minimum gap allows."""
    return min(scheduled, max(now, earliest)) if poked else scheduled


class CheckWorker:
    """Runs ``task`` in a daemon thread per its :class:`CheckSchedule`; an exception never ends the thread.

    ``next_check_in(result)`` says in how many seconds the check that returned ``result`` asks
    for the next one (None: the schedule's ``every_s`` decides); a check that raised is retried
    after the schedule's backoff.
    """

    def __init__(
        self,
        task: Callable[[], Any],
        *,
        name: str,
        schedule: CheckSchedule | None = None,
        next_check_in: Callable[[Any], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """Prepare the worker; :meth:`start` starts its thread."""
        self.task = task
        self.name = name
        self.schedule = schedule or CheckSchedule()
        self.next_check_in = next_check_in or (lambda result: None)
        self.runs = 0
        self.for_poke = False
        self.errors = 0
        self.restarts = 0
        self.failures_in_a_row = 0
        self._clock = clock
        self._rng = rng
        self._poked = False
        self._earliest = -math.inf
        self._scheduled = self._after(clock(), None) if not self.schedule.at_start else -math.inf
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._started = False
        self._restart_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @property
    def pending(self) -> bool:
        """Whether a poke is waiting for its turn (the minimum gap since the last check)."""
        return self._poked

    @property
    def alive(self) -> bool:
        """Whether the thread runs (False before start, after stop, and when it died)."""
        return self._thread.is_alive()

    def start(self) -> CheckWorker:
        """Start the thread (the first check, if ``at_start``, runs there, not in the caller)."""
        self._started = True
        self._thread.start()
        return self

    def ensure_running(self) -> bool:
        """Start the thread again if it died (logged, counted); True when it had to."""
        with self._restart_lock:
            if not self._started or self._stop.is_set() or self._thread.is_alive():
                return False
            self.restarts += 1
            log.error("%s: the check thread had died; starting it again (%d restarts)", self.name, self.restarts)
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
            return True

    def poke(self) -> None:
        """Ask for a check; any number of pokes before it starts make one check. Restarts a dead thread."""
        self._poked = True
        self._wake.set()
        self.ensure_running()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; a check under way is waited for up to ``timeout_s``."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _after(self, now: float, wait_s: float | None) -> float:
        """When the next scheduled check is due: in ``wait_s`` if the last check said so, else per the schedule."""
        if self.failures_in_a_row:
            return now + self.schedule.backoff.delay(self.failures_in_a_row, self._rng())
        if wait_s is not None:
            return now + wait_s
        return now + self.schedule.every_s if self.schedule.every_s is not None else math.inf

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except Exception:  # the boundary around the schedule itself: a bug here must not end the thread
                self.errors += 1
                log.exception("%s: the check schedule failed; going on", self.name)
                self._stop.wait(self.schedule.backoff.base_s)

    def _turn(self) -> None:
        """One turn of the loop: wait for the next check, or run it."""
        now = self._clock()
        due = next_due(now=now, scheduled=self._scheduled, poked=self._poked, earliest=self._earliest)
        if due > now:
            self._wake.wait(None if math.isinf(due) else due - now)
            self._wake.clear()
            return
        # Read by the task: a check only a poke asked for may stop early when nothing is new.
        self.for_poke = self._poked and now < self._scheduled
        self._poked = False  # a poke from now on asks for another check: it may announce what this one misses
        wait_s = self._run_once()
        now = self._clock()
        self._earliest = now + self.schedule.min_interval_s * (1.0 + self.schedule.jitter * self._rng())
        self._scheduled = self._after(now, wait_s)

    def _run_once(self) -> float | None:
        """Run the task inside the boundary; the seconds its result asks to wait (None: the schedule decides)."""
        self.runs += 1
        try:
            result = self.task()
            wait_s = self.next_check_in(result)
        except Exception as exc:  # the boundary: nothing a check raises may end the device program
            self.errors += 1
            self.failures_in_a_row += 1
            log.error(
                "%s: check failed (%s: %s); retry with backoff (%d in a row)",
                self.name,
                type(exc).__name__,
                exc,
                self.failures_in_a_row,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return None
        self.failures_in_a_row = 0
        return wait_s
