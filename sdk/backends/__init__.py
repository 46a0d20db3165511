"""Inference engines behind one interface; :func:`open_backend` picks one by artifact kind."""

from __future__ import annotations

import os
from collections.abc import Sequence

from sdk.backends.base import Backend, Signature

__all__ = ["BACKEND_FOR_KIND", "Backend", "Signature", "open_backend"]

BACKEND_FOR_KIND = {"onnx-fp32": "onnxruntime", "onnx-int8": "onnxruntime", "tflite": "litert"}


def open_backend(
    path: str | os.PathLike[str],
    kind: str,
    *,
    providers: Sequence[str] = ("cpu",),
    num_threads: int = 0,
    allow_spinning: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Backend:
    """Load the model file ``path`` of artifact ``kind`` in the engine that runs it."""
    engine = BACKEND_FOR_KIND.get(kind)
    if engine == "onnxruntime":
        from sdk.backends.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            path, providers=providers, num_threads=num_threads, allow_spinning=allow_spinning, cache_dir=cache_dir
        )
    if engine == "litert":
        from sdk.backends.litert import LiteRTBackend

        return LiteRTBackend(path, num_threads=num_threads)
    raise ValueError(f"no backend runs artifacts of kind {kind!r}")
