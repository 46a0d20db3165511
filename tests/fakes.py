"""Fakes for outcomes a real part cannot produce on demand: an engine's answers, failures and time, and a clock.

Fault injection only: everything else in a test that uses them is real (model directory, broker, workers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sdk.backends import Backend
from sdk.edge import EdgeConfig, LoadedModel, load_model
from sdk.errors import BackendError

__all__ = ["FakeBackend", "ManualClock", "logits", "with_backend"]


class ManualClock:
    """A clock the test moves by hand: deadlines, latencies and the breaker's wait without sleeping."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeBackend(Backend):
    """An engine that answers what the test scripts: fixed outputs, a failure, and the seconds a call takes.

    ``outputs`` are the rows of every answer (the first ``len(batch)`` of them); ``error`` is raised instead
    while set; each call moves ``clock`` by ``takes_s``. ``batches`` records what each call was given.
    """

    name = "fake"
    devices = ("fake",)

    def __init__(
        self,
        outputs: np.ndarray | None = None,
        *,
        error: BackendError | None = None,
        clock: ManualClock | None = None,
        takes_s: float = 0.0,
    ) -> None:
        self.outputs = outputs
        self.error = error
        self.clock = clock
        self.takes_s = takes_s
        self.batches: list[np.ndarray] = []
        self.closed = False

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The scripted rows for ``batch``, or the scripted failure."""
        self.batches.append(batch)
        if self.clock is not None:
            self.clock.now += self.takes_s
        if self.error is not None:
            raise self.error
        assert self.outputs is not None, "script outputs or an error"
        return self.outputs[: len(batch)].copy()

    def close(self) -> None:
        """Nothing to release."""
        self.closed = True


def logits(labels: Sequence[int], confidence: Sequence[float], classes: int = 10) -> np.ndarray:
    """Logits whose softmax gives each row's label exactly its confidence (above 1 / classes), the rest alike."""
    probs = np.empty((len(labels), classes), np.float64)
    for row, (label, p) in enumerate(zip(labels, confidence, strict=True)):
        probs[row] = (1.0 - p) / (classes - 1)
        probs[row, label] = p
    return np.log(probs).astype(np.float32)


def with_backend(model_dir: Path, backend: Backend, config: EdgeConfig | None = None) -> LoadedModel:
    """The verified model directory, its manifest and input policy, served by ``backend`` instead of its engine.

    The artifact's temperature is 1: a fake engine's logits give exactly the confidences the test wrote.
    """
    loaded = load_model(model_dir, config or EdgeConfig())
    loaded.close()
    return dataclasses.replace(loaded, backend=backend, artifact=dataclasses.replace(loaded.artifact, temperature=1.0))
