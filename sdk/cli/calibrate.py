"""``fedge calibrate``: choose the edge-first confidence threshold on the validation split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.table import Table

from sdk.cli.console import console, progress

if TYPE_CHECKING:
    from rich.progress import Progress

    from sdk.edge import EdgeRuntime

__all__ = ["register"]

#: The artifact the cloud's inference service runs; fallen-back answers come from it.
CLOUD_ARTIFACT = "onnx-fp32"

ModelDirOpt = Annotated[Path, typer.Option("--model-dir", "-m", help="Model directory holding manifest.json.")]


def calibrate(
    model_dir: ModelDirOpt,
    target_accuracy: Annotated[
        float, typer.Option("--target-accuracy", help="End-to-end accuracy to reach, in (0, 1].")
    ] = 0.99,
    confidence_level: Annotated[
        float,
        typer.Option("--confidence-level", help="Reach the target with this confidence (Wilson bound); 0 = off."),
    ] = 0.95,
    artifact: Annotated[
        str, typer.Option(help="Artifact kind the device runs, e.g. onnx-int8 or tflite.")
    ] = "onnx-int8",
    cloud_model_dir: Annotated[
        Path | None,
        typer.Option("--cloud-model-dir", help="The model the cloud serves (default: this directory's fp32 artifact)."),
    ] = None,
    write: Annotated[bool, typer.Option("--write/--no-write", help="Store the threshold in manifest.json.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the data split.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Choose the confidence threshold below which the device asks the cloud, on the validation split."""
    from federation.task import load_split
    from sdk.edge import EdgeConfig, EdgeRuntime
    from sdk.edge.calibration import calibrate as choose

    if not 0.0 < target_accuracy <= 1.0:
        raise typer.BadParameter(f"must be within (0, 1], got {target_accuracy}", param_hint="--target-accuracy")
    if not 0.0 <= confidence_level < 1.0:
        raise typer.BadParameter(f"must be within [0, 1), got {confidence_level}", param_hint="--confidence-level")
    level = confidence_level or None

    split = load_split(seed)
    x, y = split.x_val, split.y_val
    with progress() as bar:
        with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=(artifact,))) as rt:
            manifest = rt.manifest
            edge_labels, edge_conf = _run(rt, x, bar, f"edge {artifact}")
        with EdgeRuntime.from_model_dir(cloud_model_dir or model_dir, EdgeConfig(artifacts=(CLOUD_ARTIFACT,))) as rt:
            cloud_labels, _ = _run(rt, x, bar, f"cloud {CLOUD_ARTIFACT}")
    result = choose(edge_conf, edge_labels == y, cloud_labels == y, target_accuracy, confidence_level=level)
    written = manifest.with_threshold(result.threshold).write(model_dir) if write else None

    if as_json:
        payload = {
            "model": manifest.name,
            "version": manifest.version,
            "artifact": artifact,
            "cloud_artifact": CLOUD_ARTIFACT,
            "samples": len(y),
            "target_accuracy": result.target_accuracy,
            "confidence_level": level,
            "reached": result.reached,
            "threshold": result.threshold,
            "accuracy": result.accuracy,
            "accuracy_lower": result.accuracy_lower,
            "fallback_rate": result.fallback_rate,
            "edge_accuracy": result.edge_accuracy,
            "cloud_accuracy": result.cloud_accuracy,
            "manifest": str(written) if written else None,
            "curve": [
                {
                    "threshold": p.threshold,
                    "fallback_rate": p.fallback_rate,
                    "accuracy": p.accuracy,
                    "accuracy_lower": p.accuracy_lower,
                }
                for p in result.curve
            ],
        }
        # typer.echo, not rich: rich would wrap long lines (paths) and break the JSON.
        typer.echo(json.dumps(payload, indent=2))
        return

    table = Table(
        title=f"{manifest.name} v{manifest.version}: {artifact} on the edge, {CLOUD_ARTIFACT} in the cloud, "
        f"{len(y)} validation samples"
    )
    columns = ["", "threshold", "fallback %", "accuracy %"] + ([f"{100 * level:g}% lower bound %"] if level else [])
    for col in columns:
        table.add_column(col, justify="right")
    for p in result.curve:
        chosen = p.threshold == result.threshold
        row = ["->" if chosen else "", f"{p.threshold:.4f}", f"{100 * p.fallback_rate:.1f}", f"{100 * p.accuracy:.2f}"]
        if level:
            row.append(f"{100 * p.accuracy_lower:.2f}")
        table.add_row(*row, style="bold green" if chosen else None)
    console.print(table)
    console.print(
        f"edge alone {result.edge_accuracy:.2%}, cloud alone {result.cloud_accuracy:.2%}; "
        f"threshold {result.threshold:.6g}: {result.accuracy:.2%} end to end "
        + (f"(lower bound {result.accuracy_lower:.2%}) " if level else "")
        + f"with {result.fallback_rate:.1%} of answers from the cloud"
    )
    if not result.reached:
        what = "lower bound" if level else "accuracy"
        console.print(
            f"[bold yellow]target {result.target_accuracy:.2%} not reached[/]: the best {what} is "
            f"{result.accuracy_lower:.2%}; chose the most accurate threshold instead"
        )
    if written:
        console.print(f"wrote confidence_threshold {result.threshold!r} to {written}")


def _run(rt: EdgeRuntime, x: np.ndarray, bar: Progress, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels and top-class confidences of ``x``, in batches the runtime accepts."""
    task = bar.add_task(label, total=len(x))
    labels, conf = [], []
    step = rt.config.max_batch_size
    for i in range(0, len(x), step):
        result = rt.predict(x[i : i + step])
        labels.append(result.labels)
        conf.append(result.confidences)
        bar.advance(task, len(result.labels))
    return np.concatenate(labels), np.concatenate(conf)


def register(app: typer.Typer) -> None:
    """Add the ``calibrate`` command to ``app``."""
    app.command()(calibrate)
