"""ONNX Runtime backend, with an execution-provider preference list."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sdk.backends.base import Backend, Signature
from sdk.errors import BackendError, BackendUnavailable, EngineLoadFailed, ModelIntegrityError

__all__ = [
    "PROVIDER_ALIASES",
    "SPINNING_KEY",
    "OnnxRuntimeBackend",
    "available_providers",
    "load_error",
    "resolve_providers",
    "session_options",
]

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# ONNX Runtime's pybind error classes that blame the machine (a provider, a device, memory), not the file.
_ENGINE_FAULTS = ("EPFail", "EngineError", "DeviceReset")
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}
_ONNX_DTYPES |= {f"tensor({t})": t for t in ("int8", "uint8", "int32", "int64")}
SPINNING_KEY = "session.intra_op.allow_spinning"


def load_error(exc: Exception, file: str) -> ModelIntegrityError | EngineLoadFailed:
    """What an ONNX Runtime load failure means: a bad file, or an engine that cannot load it on this machine."""
    if isinstance(exc, MemoryError) or type(exc).__name__ in _ENGINE_FAULTS:
        return EngineLoadFailed(f"onnxruntime cannot load {file} here: {type(exc).__name__}: {exc}")
    return ModelIntegrityError(f"onnxruntime cannot load {file}: {exc}")


def _sample_shape(shape: Sequence[object]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in list(shape)[1:])


def _import_ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable("onnxruntime is not installed: pip install 'fedge[edge]'") from exc
    return onnxruntime


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (empty when it is not installed)."""
    try:
        return list(_import_ort().get_available_providers())
    except BackendUnavailable:
        return []


def session_options(num_threads: int = 0, *, allow_spinning: bool = False):
    """The ``SessionOptions`` every Fedge session gets: these threads, one inter-op thread, full graph optimisation."""
    ort = _import_ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    # ORT's default lets the pool threads spin after every run: a core at 76-99 % at 20-100 requests/s.
    options.add_session_config_entry(SPINNING_KEY, "1" if allow_spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def resolve_providers(preference: Sequence[str], available: Sequence[str]) -> list[str]:
    """Keep the preferred providers that are available, in preference order."""
    wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in preference]
    chosen = [p for p in dict.fromkeys(wanted) if p in available]
    if not chosen:
        raise BackendUnavailable(
            f"none of the execution providers {list(preference)} is available; "
            f"this onnxruntime offers {list(available)}"
        )
    return chosen


class OnnxRuntimeBackend(Backend):
    """Runs an ``.onnx`` file on the first available execution provider of a preference list."""

    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] = ("cpu",),
        num_threads: int = 0,
        allow_spinning: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        ort = _import_ort()
        chosen = resolve_providers(providers, ort.get_available_providers())
        options = session_options(num_threads, allow_spinning=allow_spinning)
        provider_args: list[str | tuple[str, dict[str, object]]] = []
        for provider in chosen:
            if provider == "TensorrtExecutionProvider" and cache_dir is not None:
                # Building a TensorRT engine takes minutes on a Jetson: keep it across restarts.
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                provider_args.append(
                    (provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)})
                )
            else:
                provider_args.append(provider)
        try:
            self._session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=provider_args)
        except Exception as exc:  # ORT raises its own pybind classes for every load failure
            raise load_error(exc, Path(path).name) from exc
        self.devices = tuple(self._session.get_providers())
        built = self._session.get_session_options()
        self.num_threads = built.intra_op_num_threads
        self.allow_spinning = built.get_session_config_entry(SPINNING_KEY) == "1"
        self._input_name = self._session.get_inputs()[0].name
        self._output_names = [self._session.get_outputs()[0].name]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch; onnxruntime sessions are safe to call from several threads."""
        try:
            return self._session.run(self._output_names, {self._input_name: batch})[0]
        except AttributeError:
            raise RuntimeError("the backend is closed") from None
        except Exception as exc:
            raise BackendError(f"onnxruntime failed: {exc}") from exc

    def signature(self) -> Signature:
        """The first input and output of the graph."""
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        return Signature(
            _sample_shape(inp.shape),
            _ONNX_DTYPES.get(inp.type, inp.type),
            _sample_shape(out.shape),
            _ONNX_DTYPES.get(out.type, out.type),
        )

    def close(self) -> None:
        """Drop the session."""
        self.__dict__.pop("_session", None)
