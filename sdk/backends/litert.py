"""LiteRT (TensorFlow Lite) backend: ``ai_edge_litert``, else the older ``tflite_runtime``."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdk.backends.base import Backend, Signature
from sdk.errors import BackendError, BackendUnavailable, EngineLoadFailed, ModelIntegrityError

__all__ = ["LiteRTBackend", "interpreter_package"]


def _interpreter_class() -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        # tflite-runtime 2.14 imports under NumPy 2 but fails later, so any error here means "unusable".
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except Exception as exc:
        raise BackendUnavailable(
            "no LiteRT interpreter: pip install 'fedge[litert]' (ai-edge-litert), or tflite-runtime on a NumPy<2 system"
        ) from exc


def interpreter_package() -> str | None:
    """Name of the LiteRT package that would be used, or None when neither is installed."""
    try:
        return _interpreter_class()[1]
    except BackendUnavailable:
        return None


@dataclass(frozen=True)
class _Quantization:
    """Affine int8/uint8 parameters of a tensor, with the clip bounds precomputed for the hot path."""

    scale: np.float32
    inverse_scale: np.float32
    zero: np.float32
    low: float
    high: float
    dtype: np.dtype

    @classmethod
    def of(cls, detail: dict[str, Any]) -> _Quantization | None:
        dtype = np.dtype(detail["dtype"])
        scale, zero = detail.get("quantization", (0.0, 0))
        if dtype.kind not in "iu" or not scale:
            return None
        info = np.iinfo(dtype)
        return cls(np.float32(scale), np.float32(1.0 / scale), np.float32(zero), info.min, info.max, dtype)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        q = x * self.inverse_scale
        q += self.zero
        np.rint(q, out=q)
        np.clip(q, self.low, self.high, out=q)
        return q.astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        x = q.astype(np.float32)
        x -= self.zero
        x *= self.scale
        return x


class LiteRTBackend(Backend):
    """Runs a ``.tflite`` file; one interpreter behind a lock, resized to the batch it is given."""

    name = "litert"

    def __init__(self, path: str | os.PathLike[str], *, num_threads: int = 0) -> None:
        interpreter_cls, package = _interpreter_class()
        self.devices = (f"{package}:cpu",)
        self.num_threads = num_threads  # the interpreter has no getter: what it was built with
        try:
            self._interp = interpreter_cls(model_path=os.fspath(path), num_threads=num_threads or None)
            self._interp.allocate_tensors()
        except MemoryError as exc:
            raise EngineLoadFailed(f"LiteRT cannot load {Path(path).name} here: out of memory") from exc
        except Exception as exc:
            raise ModelIntegrityError(f"LiteRT cannot load {Path(path).name}: {exc}") from exc
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        self._input, self._output = inp["index"], out["index"]
        self._shape = tuple(int(d) for d in inp["shape"])
        # A fully int8 model takes and returns int8: (de)quantize at the boundary with its own scales.
        self._in_quant = _Quantization.of(inp)
        self._out_quant = _Quantization.of(out)
        self._resizable = True
        # The interpreter holds its tensors in place: one invocation at a time.
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch, resizing the input when the model allows it, else sample by sample."""
        with self._lock:
            try:
                if batch.shape != self._shape and self._resizable:
                    self._resize(batch.shape)
                if batch.shape != self._shape:
                    return np.concatenate([self._invoke(row[None]) for row in batch])
                return self._invoke(batch)
            except AttributeError:
                raise RuntimeError("the backend is closed") from None
            except (RuntimeError, ValueError) as exc:
                raise BackendError(f"LiteRT failed: {exc}") from exc

    def _resize(self, shape: tuple[int, ...]) -> None:
        try:
            self._interp.resize_tensor_input(self._input, list(shape), strict=False)
            self._interp.allocate_tensors()
            self._shape = shape
        except (RuntimeError, ValueError):
            # A converter may bake the batch size in; fall back to one sample per invocation.
            self._resizable = False
            self._interp.resize_tensor_input(self._input, [1, *shape[1:]], strict=False)
            self._interp.allocate_tensors()
            self._shape = (1, *shape[1:])

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        if self._in_quant is not None:
            batch = self._in_quant.quantize(batch)
        self._interp.set_tensor(self._input, batch)
        self._interp.invoke()
        out = self._interp.get_tensor(self._output)
        if self._out_quant is not None:
            return self._out_quant.dequantize(out)
        return out.copy()

    def signature(self) -> Signature:
        """The first input and output; a quantized end is seen as float32, since ``run`` (de)quantizes it."""
        ends: list = []
        inp, out = self._interp.get_input_details()[0], self._interp.get_output_details()[0]
        for detail, quant in ((inp, self._in_quant), (out, self._out_quant)):
            dims = detail.get("shape_signature", detail["shape"])
            ends.append(tuple(int(d) if d >= 0 else None for d in list(dims)[1:]))
            ends.append("float32" if quant is not None else np.dtype(detail["dtype"]).name)
        return Signature(*ends)

    def close(self) -> None:
        """Drop the interpreter."""
        with self._lock:
            self.__dict__.pop("_interp", None)
