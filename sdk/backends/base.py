"""The one interface every inference engine is driven through."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import NamedTuple

import numpy as np

__all__ = ["Backend", "Signature"]


class Signature(NamedTuple):
    """What an engine takes and returns as callers see it: one sample's shape (None where dynamic) and dtype."""

    input_shape: tuple[int | None, ...]
    input_dtype: str
    output_shape: tuple[int | None, ...]
    output_dtype: str


class Backend(abc.ABC):
    """A loaded model file that maps one input batch to one output batch."""

    #: Package that runs the model, e.g. ``"onnxruntime"``.
    name: str
    #: Where it runs, most preferred first, e.g. ``("CUDAExecutionProvider", "CPUExecutionProvider")``.
    devices: tuple[str, ...]
    #: Threads the engine runs one call on, as the engine was built with them (0: the engine's default).
    num_threads: int = 0
    #: Whether the engine's idle pool threads spin-wait for the next call, as built (ONNX Runtime only).
    allow_spinning: bool = False

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch (leading dimension N) and return the model's first output; thread-safe."""

    def signature(self) -> Signature | None:
        """The input and output the loaded file declares; None when the engine cannot tell."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release the engine; further ``run`` calls are a misuse."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
