"""From a trained torch model to a verified model directory: prune, export, quantize, gate, calibrate, manifest.

Every artifact is measured on the held-out test split through the same engine a
device uses (``sdk.backends``), and the export fails without writing
anything when an int8 or pruned artifact falls more than ``max_accuracy_drop_pt``
points below the unpruned fp32 model. Each artifact's temperature is fitted on the
validation split's logits and recorded in the manifest, with the expected calibration
error on the test split (15 equal-width bins) before and after it. The manifest also records
how raw inputs became the model's (the split's preprocessing) and the value range of the
training inputs, which a device checks its inputs against.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import nn

from federation.export.pruning import prune_magnitude, sparsity
from federation.export.temperature import fit_temperature
from federation.export.to_onnx import export_onnx, quantize_int8
from federation.export.to_tflite import export_tflite, tflite_available
from federation.task import LABELS, MODEL_NAME, Split, accuracy, predict_logits, train
from sdk.backends import open_backend
from sdk.confidence import confidences, expected_calibration_error
from sdk.config import check, load_section
from sdk.errors import AccuracyGateFailed, ExportError
from sdk.manifest import (
    PROBE_FILE,
    Artifact,
    InputRange,
    Manifest,
    Preprocessing,
    Probe,
    TensorSpec,
    compact_input,
    file_digest,
    write_probe,
)

__all__ = ["ArtifactFile", "ExportConfig", "build_model_dir", "export_model", "run_artifact"]

#: Called with a short description of each step as it starts.
StepCallback = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """What the export produces and how strict its accuracy gate is (``[export]`` table)."""

    name: str = MODEL_NAME
    version: int = 1
    sparsity: float = 0.0
    finetune_epochs: int = 5
    finetune_lr: float = 1e-3
    int8: bool = True
    tflite: Literal["auto", "int8", "float32", "off"] = "auto"
    max_accuracy_drop_pt: float = 1.0
    calibration_samples: int = 512
    probe_samples: int = 4
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        check(0.0 <= self.sparsity < 1.0, "sparsity", f"must be within [0, 1), got {self.sparsity}")
        check(self.version >= 0, "version", "must be >= 0")
        check(self.finetune_epochs >= 0, "finetune_epochs", "must be >= 0")
        check(self.max_accuracy_drop_pt >= 0, "max_accuracy_drop_pt", "must be >= 0")
        check(self.calibration_samples >= 1, "calibration_samples", "must be >= 1")
        check(1 <= self.probe_samples <= 64, "probe_samples", "must be within 1..64")

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> ExportConfig:
        """Load ``[export]`` from a TOML file and ``FEDGE_EXPORT__*`` variables."""
        return load_section(cls, "export", path, env)


@dataclass(frozen=True)
class ArtifactFile:
    """An artifact file already written into a directory being built."""

    kind: Literal["onnx-fp32", "onnx-int8", "tflite"]
    file: str
    precision: str
    accuracy: float | None = None
    temperature: float = 1.0
    ece_before: float | None = None
    ece_after: float | None = None


@dataclass(frozen=True, kw_only=True)
class _Model:
    name: str
    version: int
    input: TensorSpec
    output: TensorSpec
    labels: tuple[str, ...] = ()
    reference_accuracy: float | None = None
    sparsity: float = 0.0
    lineage: Mapping[str, Any] = field(default_factory=dict)


def run_artifact(path: str | os.PathLike[str], kind: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of one artifact for every row of ``x``, through the engine a device would use."""
    with open_backend(path, kind, num_threads=0) as backend:
        return np.concatenate(
            [backend.run(np.ascontiguousarray(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        )


def build_model_dir(
    directory: str | os.PathLike[str],
    artifacts: list[ArtifactFile],
    *,
    name: str,
    version: int,
    input: TensorSpec,
    output: TensorSpec,
    probe_input: np.ndarray,
    labels: tuple[str, ...] = (),
    reference_accuracy: float | None = None,
    sparsity: float = 0.0,
    lineage: Mapping[str, Any] | None = None,
    preprocessing: Preprocessing | None = None,
    input_range: InputRange | None = None,
) -> Manifest:
    """Record each artifact's digest and probe output in ``directory`` and write its manifest."""
    directory = Path(directory)
    probe_input = compact_input(probe_input)
    expected = {f"expected/{a.kind}": run_artifact(directory / a.file, a.kind, probe_input) for a in artifacts}
    probe_sha, probe_size = write_probe(directory / PROBE_FILE, {"input": probe_input, **expected})
    entries: dict[str, Artifact] = {}
    for a in artifacts:
        sha, size = file_digest(directory / a.file)
        entries[a.kind] = Artifact(
            kind=a.kind,
            file=a.file,
            sha256=sha,
            size=size,
            accuracy=a.accuracy,
            precision=a.precision,
            temperature=a.temperature,
            ece_before=a.ece_before,
            ece_after=a.ece_after,
        )
    manifest = Manifest(
        name=name,
        version=version,
        inputs=(input,),
        outputs=(output,),
        artifacts=entries,
        labels=labels,
        probe=Probe(file=PROBE_FILE, sha256=probe_sha, size=probe_size),
        reference_accuracy=reference_accuracy,
        preprocessing=preprocessing,
        input_range=input_range,
        sparsity=sparsity,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        lineage=dict(lineage or {}),
    )
    manifest.write(directory)
    return manifest


def _measure(directory: Path, f: ArtifactFile, split: Split, step: StepCallback) -> ArtifactFile:
    """``f`` with its test accuracy, its temperature and its calibration error before and after it."""
    test = run_artifact(directory / f.file, f.kind, split.x_test)
    temperature = fit_temperature(run_artifact(directory / f.file, f.kind, split.x_val), split.y_val)
    right = test.argmax(axis=1) == split.y_test
    before = expected_calibration_error(confidences(test, "logits").max(axis=1), right)
    after = expected_calibration_error(confidences(test, "logits", temperature).max(axis=1), right)
    step(f"{f.kind}: temperature {temperature:.3f}, test ECE (15 bins) {before:.4f} -> {after:.4f}")
    return ArtifactFile(
        f.kind,
        f.file,
        f.precision,
        accuracy(test, split.y_test),
        temperature=round(temperature, 6),
        ece_before=round(before, 6),
        ece_after=round(after, 6),
    )


def export_model(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    split: Split,
    config: ExportConfig | None = None,
    *,
    labels: tuple[str, ...] = LABELS,
    lineage: Mapping[str, Any] | None = None,
    on_step: StepCallback | None = None,
) -> Manifest:
    """Export ``model`` into ``out_dir``, gated on accuracy; nothing is written unless it passes.

    Raises:
        AccuracyGateFailed: an int8 or pruned artifact lost more than the gate allows.
        ExportError: a conversion failed, or ``out_dir`` exists and ``overwrite`` is off.
    """
    config = config or ExportConfig()
    step = on_step or (lambda _msg: None)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise ExportError(f"{out} already exists and is not empty (set overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)

    model = model.eval()
    reference = accuracy(predict_logits(model, split.x_test), split.y_test)
    if config.sparsity > 0:
        step(f"pruning {config.sparsity:.0%} of weights, fine-tuning {config.finetune_epochs} epochs")

        def finetune(m: nn.Module) -> None:
            train(
                m, split.x_train, split.y_train, epochs=config.finetune_epochs, lr=config.finetune_lr, seed=config.seed
            )

        model = prune_magnitude(model, config.sparsity, finetune)
    calibration = split.x_train[: config.calibration_samples]
    tflite_mode = config.tflite
    if tflite_mode == "auto":
        tflite_mode = ("int8" if config.int8 else "float32") if tflite_available() else "off"

    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        files = [ArtifactFile("onnx-fp32", "model-fp32.onnx", "float32")]
        step("exporting fp32 ONNX")
        export_onnx(model, split.x_test, work / files[0].file)
        if config.int8:
            step(f"quantizing to int8 (static QDQ, per-channel, {len(calibration)} calibration samples)")
            quantize_int8(work / "model-fp32.onnx", work / "model-int8.onnx", calibration)
            files.append(ArtifactFile("onnx-int8", "model-int8.onnx", "int8"))
        if tflite_mode != "off":
            step(f"converting to LiteRT ({tflite_mode})")
            export_tflite(model, calibration, work / "model.tflite", int8=tflite_mode == "int8")
            files.append(ArtifactFile("tflite", "model.tflite", tflite_mode))

        step("measuring every artifact on the test split, fitting its temperature on the validation split")
        measured = [_measure(work, f, split, step) for f in files]
        for f in measured:
            gated = f.precision != "float32" or config.sparsity > 0
            if gated and (reference - f.accuracy) * 100 > config.max_accuracy_drop_pt:
                raise AccuracyGateFailed(f.kind, f.accuracy, reference, config.max_accuracy_drop_pt)

        step("writing probe and manifest")
        sample = split.x_test.shape[1:]
        manifest = build_model_dir(
            work,
            measured,
            name=config.name,
            version=config.version,
            input=TensorSpec(name="input", shape=(None, *sample), dtype="float32"),
            output=TensorSpec(name="output", shape=(None, len(labels)), dtype="float32"),
            probe_input=np.ascontiguousarray(split.x_test[: config.probe_samples]),
            labels=labels,
            reference_accuracy=reference,
            sparsity=round(sparsity(model), 4),
            lineage=lineage,
            preprocessing=split.preprocessing,
            input_range=InputRange(min=float(split.x_train.min()), max=float(split.x_train.max())),
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest
