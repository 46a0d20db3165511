"""Load a verified model directory into its engine: what the device runtime and the cloud's services share.

```python
model = load_model("models/digits", LoadOptions(artifacts=("onnx-fp32",)))
batch, single = model.inputs.prepare(x)
outputs = model.backend.run(batch)
```
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sdk.backends import BACKEND_FOR_KIND, Backend, open_backend
from sdk.config import check
from sdk.errors import BackendUnavailable, InvalidInput, ModelIntegrityError, ModelNotFound, ModelSignatureMismatch
from sdk.inputs import InputPolicy
from sdk.manifest import ARTIFACT_KINDS, Artifact, Manifest, fetched_kinds, load_manifest, load_probe, verify_files

__all__ = ["LoadOptions", "LoadedModel", "check_signature", "load_model", "smoke_test"]

log = logging.getLogger("fedge.loading")


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """Which artifact to load and how: the loading part of :class:`~sdk.edge.EdgeConfig`, which extends it.

    ``artifacts`` is the order in which artifact kinds are tried; ``backend`` limits
    the choice to one engine; ``providers`` is ONNX Runtime's execution-provider
    preference (aliases ``tensorrt``, ``cuda``, ``cpu`` or full names). ``allow_spinning``
    lets ONNX Runtime's idle pool threads spin-wait for the next call (its own default): a
    little latency for back-to-back calls, a busy core between them, so it is off.
    """

    artifacts: tuple[str, ...] = ("onnx-int8", "onnx-fp32", "tflite")
    backend: Literal["auto", "onnxruntime", "litert"] = "auto"
    providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    num_threads: int = 0
    allow_spinning: bool = False
    nan_policy: Literal["reject", "allow"] = "reject"
    strict_dtype: bool = False
    max_batch_size: int = 256
    smoke_test: bool = True
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        check(bool(self.artifacts), "artifacts", "needs at least one artifact kind")
        for kind in self.artifacts:
            check(kind in ARTIFACT_KINDS, "artifacts", f"unknown kind {kind!r} (known: {', '.join(ARTIFACT_KINDS)})")
        check(bool(self.providers), "providers", "needs at least one execution provider")
        check(
            0 <= self.num_threads <= 256,
            "num_threads",
            f"must be within 0..256 (0 = engine default), got {self.num_threads}",
        )
        check(
            1 <= self.max_batch_size <= 1 << 16, "max_batch_size", f"must be within 1..65536, got {self.max_batch_size}"
        )

    def check_manifest(self, manifest: Manifest) -> None:
        """Raise a ModelError when a model with ``manifest`` cannot be served under these options; none here."""


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


def load_model(model_dir: str | os.PathLike[str], config: LoadOptions) -> LoadedModel:
    """Verify the files of ``model_dir``, load the preferred runnable artifact and smoke-test it.

    Raises:
        ModelNotFound: no manifest, or no artifact kind of ``config.artifacts``.
        ManifestError: the manifest is malformed, or lacks what ``config`` needs (see ``check_manifest``).
        ModelIntegrityError: a file is missing or does not match its hash, or the probe fails.
        ModelSignatureMismatch: the engine's input or output differs from the manifest's.
        BackendUnavailable: no engine for any wanted artifact is installed (``EngineLoadFailed``: it
            is installed but cannot load the file here, e.g. a provider failed or memory ran out).
    """
    directory = Path(model_dir)
    manifest = load_manifest(directory)
    config.check_manifest(manifest)
    held = fetched_kinds(directory)  # None: a whole exported directory, which holds every artifact
    runnable = [k for k in config.artifacts if k in manifest.artifacts and (held is None or k in held)]
    # Every artifact this device may run and the directory should hold must be present and intact;
    # any other one present must be intact too.
    entries: list = [a for a in manifest.artifacts.values() if a.kind in runnable or (directory / a.file).exists()]
    if manifest.probe is not None:
        entries.append(manifest.probe)
    verify_files(directory, entries)

    candidates = [manifest.artifacts[k] for k in runnable if config.backend in ("auto", BACKEND_FOR_KIND[k])]
    if not candidates:
        holds = sorted(manifest.artifacts) if held is None else sorted(held)
        raise ModelNotFound(
            f"{manifest.name} v{manifest.version} holds artifacts {holds}, "
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
                allow_spinning=config.allow_spinning,
                cache_dir=config.cache_dir,
            )
        except BackendUnavailable as exc:
            missing.append(f"{artifact.kind}: {exc}")
            continue
        try:
            check_signature(manifest, backend)
        except BaseException:
            backend.close()
            raise
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


def check_signature(manifest: Manifest, backend: Backend) -> None:
    """Compare the engine's input and output with the manifest's specs; dynamic dimensions match anything.

    Raises:
        ModelSignatureMismatch: a shape or dtype differs, so live calls would fail on this engine.
    """
    signature = backend.signature()
    if signature is None:
        return
    ends = (
        ("input", manifest.input, signature.input_shape, signature.input_dtype),
        ("output", manifest.outputs[0], signature.output_shape, signature.output_dtype),
    )
    for end, spec, shape, dtype in ends:
        want = tuple(spec.shape[1:])
        fits = len(shape) == len(want)
        fits = fits and all(a is None or b is None or a == b for a, b in zip(shape, want, strict=True))
        if not fits or dtype != spec.dtype:
            raise ModelSignatureMismatch(
                f"the engine's {end} takes samples {shape} of {dtype}; the manifest says {want} of {spec.dtype}"
            )


def smoke_test(model: LoadedModel) -> None:
    """Run the manifest's probe input the way a live call runs, and compare with the output the export recorded.

    Raises:
        ModelSignatureMismatch: the probe input does not pass the manifest's input spec.
        ModelIntegrityError: the output differs from the recorded one.
        BackendError: the engine failed on the probe.
    """
    probe = load_probe(model.directory, model.manifest)
    expected = probe.get(f"expected/{model.artifact.kind}")
    if expected is None:
        raise ModelIntegrityError(f"the probe has no expected output for {model.artifact.kind}")
    try:
        batch, _ = model.inputs.prepare(probe["input"])  # the input path of EdgeRuntime.predict
    except InvalidInput as exc:
        raise ModelSignatureMismatch(f"the probe input does not fit the manifest's input: {exc}") from exc
    got = model.backend.run(batch)
    atol = model.manifest.probe.atol if model.manifest.probe else 1e-3
    if got.shape != expected.shape or not np.allclose(got, expected, atol=atol, rtol=1e-3):
        raise ModelIntegrityError(f"{model.artifact.file} does not reproduce the probe output recorded at export")
