"""The device runtime: load a verified model directory, then answer ``predict`` calls."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from sdk.edge.backends import BACKEND_FOR_KIND, Backend, open_backend
from sdk.edge.config import EdgeConfig
from sdk.edge.inputs import InputPolicy
from sdk.edge.prediction import BatchPrediction, Prediction, confidences
from sdk.errors import BackendUnavailable, ModelIntegrityError, ModelNotFound
from sdk.manifest import Artifact, Manifest, load_manifest, load_probe, verify_files

__all__ = ["EdgeRuntime", "LoadedModel", "load_model"]

log = logging.getLogger("fedge.edge")


@dataclass(frozen=True)
class LoadedModel:
    """A verified model directory with one artifact loaded in its engine."""

    directory: Path
    manifest: Manifest
    artifact: Artifact
    backend: Backend
    inputs: InputPolicy

    def close(self) -> None:
        """Release the engine."""
        self.backend.close()


def load_model(model_dir: str | os.PathLike[str], config: EdgeConfig) -> LoadedModel:
    """Verify every file of ``model_dir``, load the preferred runnable artifact and smoke-test it.

    Raises:
        ModelNotFound: no manifest, or no artifact kind of ``config.artifacts``.
        ManifestError: the manifest is malformed.
        ModelIntegrityError: a file is missing or does not match its hash, or the probe fails.
        BackendUnavailable: no engine for any wanted artifact is installed.
    """
    directory = Path(model_dir)
    manifest = load_manifest(directory)
    entries: list = list(manifest.artifacts.values())
    if manifest.probe is not None:
        entries.append(manifest.probe)
    verify_files(directory, entries)

    candidates = [
        manifest.artifacts[k]
        for k in config.artifacts
        if k in manifest.artifacts and config.backend in ("auto", BACKEND_FOR_KIND[k])
    ]
    if not candidates:
        raise ModelNotFound(
            f"{manifest.name} v{manifest.version} has artifacts {sorted(manifest.artifacts)}, "
            f"none of them allowed by artifacts={list(config.artifacts)} backend={config.backend!r}"
        )
    missing: list[str] = []
    for artifact in candidates:
        try:
            backend = open_backend(
                directory / artifact.file,
                artifact.kind,
                providers=config.providers,
                num_threads=config.num_threads,
                cache_dir=config.cache_dir,
            )
        except BackendUnavailable as exc:
            missing.append(f"{artifact.kind}: {exc}")
            continue
        model = LoadedModel(
            directory=directory,
            manifest=manifest,
            artifact=artifact,
            backend=backend,
            inputs=InputPolicy(
                manifest.input,
                nan_policy=config.nan_policy,
                strict_dtype=config.strict_dtype,
                max_batch_size=config.max_batch_size,
            ),
        )
        if config.smoke_test and manifest.probe is not None:
            try:
                smoke_test(model)
            except BaseException:
                backend.close()
                raise
        log.info("loaded %s v%s (%s on %s)", manifest.name, manifest.version, artifact.kind, ", ".join(backend.devices))
        return model
    raise BackendUnavailable("no engine can run this model: " + "; ".join(missing))


def smoke_test(model: LoadedModel) -> None:
    """Run the manifest's probe input and compare with the output the export recorded."""
    probe = load_probe(model.directory, model.manifest)
    expected = probe.get(f"expected/{model.artifact.kind}")
    if expected is None:
        raise ModelIntegrityError(f"the probe has no expected output for {model.artifact.kind}")
    got = model.backend.run(np.ascontiguousarray(probe["input"]))
    atol = model.manifest.probe.atol if model.manifest.probe else 1e-3
    if got.shape != expected.shape or not np.allclose(got, expected, atol=atol, rtol=1e-3):
        raise ModelIntegrityError(f"{model.artifact.file} does not reproduce the probe output recorded at export")


class EdgeRuntime:
    """Runs a model directory's best artifact on this device.

    ```python
    with EdgeRuntime.from_model_dir("models/digits") as rt:
        result = rt.predict(image)          # one (1, 8, 8) sample -> Prediction
        print(result.label, result.confidence, result.source)
    ```
    """

    def __init__(self, model: LoadedModel, config: EdgeConfig | None = None) -> None:
        self._config = config or EdgeConfig()
        self._model = model
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike[str], config: EdgeConfig | None = None) -> EdgeRuntime:
        """Verify and load ``model_dir``; see :func:`load_model` for what it raises."""
        config = config or EdgeConfig()
        return cls(load_model(model_dir, config), config)

    @property
    def config(self) -> EdgeConfig:
        """The settings this runtime was made with."""
        return self._config

    @property
    def manifest(self) -> Manifest:
        """Manifest of the model being served."""
        return self._model.manifest

    @property
    def artifact(self) -> Artifact:
        """The artifact being served."""
        return self._model.artifact

    @property
    def backend(self) -> Backend:
        """The engine running the artifact."""
        return self._model.backend

    @property
    def num_threads(self) -> int:
        """Threads the engine may use per call (0: the engine's default)."""
        return self._config.num_threads

    def predict(self, x: object) -> Prediction | BatchPrediction:
        """Answer one sample (a :class:`Prediction`) or a batch (a :class:`BatchPrediction`).

        Raises:
            InvalidInput: wrong shape, a dtype that cannot be cast, or NaN under ``nan_policy="reject"``.
            BackendError: the engine failed.
        """
        start = time.perf_counter()
        model = self._model  # one read: a concurrent model swap never mixes two models in one call
        if self._closed:
            raise RuntimeError("the runtime is closed")
        batch, single = model.inputs.prepare(x)
        outputs = model.backend.run(batch)
        probs = confidences(outputs, model.manifest.output_kind)
        labels = probs.argmax(axis=1)
        latency_ms = (time.perf_counter() - start) * 1e3
        version = model.manifest.version
        if single:
            label = int(labels[0])
            return Prediction(
                outputs=outputs[0],
                label=label,
                confidence=float(probs[0, label]),
                source="edge",
                model_version=version,
                latency_ms=latency_ms,
            )
        return BatchPrediction(
            outputs=outputs,
            labels=labels,
            confidences=probs[np.arange(len(labels)), labels],
            sources=("edge",) * len(labels),
            model_version=version,
            latency_ms=latency_ms,
        )

    def swap(self, model: LoadedModel) -> Manifest:
        """Serve ``model`` from the next call on and release the previous one; return its manifest.

        Calls already running finish on the model they started with: each call reads the
        model reference once, and a closed engine's session lives until its last call returns.
        """
        with self._lock:
            if self._closed:
                model.close()
                raise RuntimeError("the runtime is closed")
            old, self._model = self._model, model
        old.close()
        log.info("now serving %s v%s (was v%s)", model.manifest.name, model.manifest.version, old.manifest.version)
        return old.manifest

    def close(self) -> None:
        """Release the engine; later ``predict`` calls raise ``RuntimeError``."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._model.close()

    def __enter__(self) -> EdgeRuntime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
