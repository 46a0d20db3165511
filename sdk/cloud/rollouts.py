"""The rollout driver: every ``tick_s`` it asks the controller about each running rollout and carries the answer out.

Advance widens the signed release (``registry.update_release(rollout=...)``); abort recalls it
(``registry.recall``: its devices go back to the previous good release); every decision is recorded in the rollout's
row (:mod:`sdk.cloud.rollout_store`). A paused release waits; one aborted by an operator ends
its rollout. Each rollout's step is a boundary: a failure is logged and counted in
``failures``, and neither stops the other rollouts nor the next tick.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from types import TracebackType

from sdk.cloud.rollout_controller import Decision, decide
from sdk.cloud.rollout_store import RolloutRecord, RolloutStore

__all__ = ["RolloutDriver"]

log = logging.getLogger("fedge.cloud.rollouts")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class RolloutDriver:
    """``with RolloutDriver(store, tick_s=10) as driver: ...``; :meth:`tick` runs one round by hand."""

    def __init__(self, store: RolloutStore, *, tick_s: float = 10.0, clock: Callable[[], dt.datetime] = _now) -> None:
        """Drive ``store``'s rollouts every ``tick_s``; ``clock`` (UTC) is there for tests."""
        if tick_s <= 0:
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        self.store = store
        self.registry = store.registry
        self.tick_s = tick_s
        self._clock = clock
        self.ticks = 0
        self.failures = 0  # rollout steps (or whole ticks) that raised
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fedge-rollouts", daemon=True)

    def tick(self) -> list[Decision]:
        """Decide and carry out every running rollout once; return the decisions taken."""
        try:
            return self._tick()
        finally:
            self.ticks += 1  # counted when done: a test that waits for N ticks sees N whole ones

    def _tick(self) -> list[Decision]:
        try:
            running = self.store.running()
        except Exception:  # the boundary: the database may be back at the next tick
            self.failures += 1
            log.exception("could not read the running rollouts")
            return []
        decisions = []
        for record in running:
            try:
                decision = self._step(record)
            except Exception:  # the boundary: one rollout's failure must not stop the others
                self.failures += 1
                log.exception("the rollout of %s v%s failed this tick", record.model, record.version)
                continue
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _step(self, record: RolloutRecord) -> Decision | None:
        release = next((r for r in self.registry.releases(record.model) if r["version"] == record.version), None)
        if release is None or release["state"] == "aborted":
            self.store.end(record.model, record.version, "the release was aborted outside the rollout controller")
            return None
        if release["state"] == "paused":
            return None
        now = self._clock()
        evidence = self.store.evidence(record.model, record.version, record.baseline)
        decision = decide(self.store.policy(record.model), record.stage, record.stage_started_at, now, evidence)
        if decision.action == "advance":
            self.registry.update_release(record.model, record.version, rollout=decision.percent)
        elif decision.action == "abort":
            self._abort(record, decision.reason)
        if decision.action != "hold":
            log.warning("rollout of %s v%s: %s (%s)", record.model, record.version, decision.action, decision.reason)
        self.store.record(record.model, record.version, decision, at=now)
        return decision

    def _abort(self, record: RolloutRecord, reason: str) -> None:
        """Abort the signed release with the reason: its devices are recalled to the previous good release."""
        self.registry.recall(record.model, record.version, reason=reason)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.tick()  # never raises: its steps are boundaries

    def start(self) -> RolloutDriver:
        """Start ticking in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop ticking and wait for the current tick to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(30.0, self.tick_s))

    def __enter__(self) -> RolloutDriver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
