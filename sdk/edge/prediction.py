"""What :meth:`EdgeRuntime.predict` returns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np

__all__ = ["BatchPrediction", "Prediction", "Source"]

#: Where an answer came from: the local model, the cloud, or the local model when the
#: cloud was wanted but could not answer in time.
Source = Literal["edge", "cloud", "edge-degraded"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """The answer for one sample."""

    outputs: np.ndarray
    label: int
    confidence: float
    source: Source
    model_version: int | None
    latency_ms: float


@dataclass(frozen=True, slots=True)
class BatchPrediction(Sequence[Prediction]):
    """The answers for a batch; indexing gives one :class:`Prediction` per row."""

    outputs: np.ndarray
    labels: np.ndarray
    confidences: np.ndarray
    sources: tuple[Source, ...]
    model_version: int | None
    latency_ms: float

    def __len__(self) -> int:
        return len(self.labels)

    @overload
    def __getitem__(self, index: int) -> Prediction: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Prediction]: ...
    def __getitem__(self, index: int | slice) -> Prediction | Sequence[Prediction]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Prediction(
            outputs=self.outputs[index],
            label=int(self.labels[index]),
            confidence=float(self.confidences[index]),
            source=self.sources[index],
            model_version=self.model_version,
            latency_ms=self.latency_ms,
        )

    def __iter__(self) -> Iterator[Prediction]:
        return (self[i] for i in range(len(self)))
