"""Per-artifact edge-first thresholds with a guarantee, against the cloud model actually served.

```
held-out rows ─> each device artifact, through the engine a device uses, with its temperature: labels, confidences
              ─> the cloud tier: a served worker over MQTT (default), or a cloud model directory (offline)
              ─> sdk.edge.calibration.calibrate: the least fallback whose end-to-end accuracy reaches the target
                 with 95 % confidence (one-sided Clopper-Pearson bound)
              ─> reached: the artifact's threshold and the cloud model it was calibrated against go into the manifest
                 not reached: said so, the previous threshold kept (never one that turns fallback off)
              ─> the accuracy/fallback curve as a PNG next to the manifest
```
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from federation.export.pipeline import run_artifact
from federation.task import Split
from sdk.confidence import confidences
from sdk.edge.calibration import Calibration, calibrate
from sdk.manifest import Manifest, ModelRef, load_manifest
from sdk.mqtt import MqttSettings

__all__ = [
    "ArtifactThreshold",
    "CloudAnswers",
    "ask_served_cloud",
    "calibrate_against_served",
    "calibrate_thresholds",
    "plot_curve",
    "run_cloud_model_dir",
]

#: Rows per request to a served cloud: well under a worker's payload limit.
CLOUD_BATCH = 64


@dataclass(frozen=True)
class CloudAnswers:
    """The cloud tier's labels for the held-out rows, which model version gave them, and where it was asked."""

    labels: np.ndarray
    model: ModelRef
    source: str


@dataclass(frozen=True)
class ArtifactThreshold:
    """One artifact's calibration: the choice, the threshold it had before, and what was written."""

    artifact: str
    calibration: Calibration
    previous: float | None
    written: bool
    plot: Path | None


def ask_served_cloud(
    settings: MqttSettings, model_name: str, x: np.ndarray, *, timeout_s: float = 30.0, device_id: str | None = None
) -> CloudAnswers:
    """The labels a served cloud worker gives ``x`` over MQTT, a batch of rows per request.

    ``device_id`` is the identity replies come back to; a secured broker's ACL wants the account's own (default:
    a fresh one, for an open broker).

    Raises:
        CloudError: the broker or the workers did not answer (a CloudError subclass says why).
    """
    from sdk.edge.cloud_client import CloudClient

    labels, versions = [], set()
    with CloudClient(settings, device_id=device_id or f"calibrate-{uuid.uuid4().hex[:8]}") as client:
        for i in range(0, len(x), CLOUD_BATCH):
            reply = client.infer(model_name, np.ascontiguousarray(x[i : i + CLOUD_BATCH]), timeout_s=timeout_s)
            labels.append(np.asarray(reply.tensor).argmax(axis=1))
            versions.add(reply.model_version)
    if len(versions) != 1:
        raise ValueError(f"the cloud answered {model_name} with versions {sorted(versions, key=str)}: calibrate again")
    version = versions.pop()
    return CloudAnswers(
        np.concatenate(labels), ModelRef(model_name, int(version or 0)), f"mqtt://{settings.host}:{settings.port}"
    )


def calibrate_against_served(
    model_dir: str | os.PathLike[str],
    split: Split,
    settings: MqttSettings,
    model_name: str,
    *,
    artifact: str,
    target_accuracy: float,
    device_id: str | None = None,
) -> tuple[ArtifactThreshold, CloudAnswers]:
    """Calibrate one artifact on the validation rows against the cloud served behind ``settings``; write it if reached.

    Raises:
        CloudError: the broker or the workers did not answer.
    """
    answers = ask_served_cloud(settings, model_name, split.x_val, device_id=device_id)
    (chosen,) = calibrate_thresholds(
        model_dir,
        split.x_val,
        split.y_val,
        answers,
        target_accuracy=target_accuracy,
        artifacts=[artifact],
        plot=False,
    )
    return chosen, answers


def run_cloud_model_dir(model_dir: str | os.PathLike[str], x: np.ndarray) -> CloudAnswers:
    """The labels a cloud model directory's fp32 artifact gives ``x``, on this machine (offline calibration)."""
    manifest = load_manifest(model_dir)
    outputs = run_artifact(Path(model_dir) / manifest.artifacts["onnx-fp32"].file, "onnx-fp32", x)
    return CloudAnswers(outputs.argmax(axis=1), ModelRef(manifest.name, manifest.version), str(model_dir))


def calibrate_thresholds(
    model_dir: str | os.PathLike[str],
    x: np.ndarray,
    y: np.ndarray,
    cloud: CloudAnswers,
    *,
    target_accuracy: float,
    confidence_level: float | None = 0.95,
    artifacts: Sequence[str] | None = None,
    write: bool = True,
    plot: bool = True,
) -> list[ArtifactThreshold]:
    """Calibrate each artifact of ``model_dir`` (default: all) on ``(x, y)`` against ``cloud``; write those reached.

    Raises:
        KeyError: an asked artifact is not in the manifest.
        ValueError: the cloud's labels do not cover ``y``, or a bad target or confidence level.
    """
    directory = Path(model_dir)
    manifest = load_manifest(directory)
    kinds = list(artifacts or manifest.artifacts)
    missing = [k for k in kinds if k not in manifest.artifacts]
    if missing:
        raise KeyError(f"{manifest.name} v{manifest.version} has no {', '.join(missing)} artifact")
    if cloud.labels.shape != y.shape:
        raise ValueError(f"the cloud answered {cloud.labels.shape} labels for {y.shape} rows")
    results, updated = [], manifest
    for kind in kinds:
        artifact = manifest.artifacts[kind]
        outputs = run_artifact(directory / artifact.file, kind, x)
        probs = confidences(outputs, manifest.output_kind, artifact.temperature)
        chosen = calibrate(
            probs.max(axis=1),
            probs.argmax(axis=1) == y,
            cloud.labels == y,
            target_accuracy,
            confidence_level=confidence_level,
        )
        written = write and chosen.reached
        if written:
            updated = updated.with_threshold(chosen.threshold, artifact=kind)
        png = plot_curve(directory / f"calibration-{kind}.png", chosen, _title(manifest, kind, cloud)) if plot else None
        results.append(ArtifactThreshold(kind, chosen, manifest.threshold_for(kind), written, png))
    if updated is not manifest:
        replace(updated, cloud_model=cloud.model).write(directory)
    return results


def _title(manifest: Manifest, kind: str, cloud: CloudAnswers) -> str:
    return f"{manifest.name} v{manifest.version} {kind} -> cloud {cloud.model.name} v{cloud.model.version}"


def plot_curve(path: Path, result: Calibration, title: str) -> Path:
    """Draw end-to-end accuracy (and its lower bound) against the fallback rate, the choice marked, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib import pyplot as plt

    fallback = [100 * p.fallback_rate for p in result.curve]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        ax.plot(fallback, [100 * p.accuracy for p in result.curve], marker=".", label="end-to-end accuracy")
        ax.plot(fallback, [100 * p.accuracy_lower for p in result.curve], linestyle="--", label="95 % lower bound")
        ax.axhline(100 * result.target_accuracy, color="grey", linewidth=0.8, label="target")
        state = "chosen" if result.reached else "best (target not reached)"
        ax.plot([100 * result.fallback_rate], [100 * result.accuracy], "o", color="red", label=state)
        ax.set_xlabel("answers from the cloud (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        tmp = path.with_suffix(".png.tmp")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path
