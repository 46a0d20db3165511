"""Model commands: ``train``, ``export``, ``predict`` and ``info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from sdk.cli.console import console, progress

__all__ = ["register"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="fedge.toml with \\[edge] / \\[export] tables.")]
ModelDirOpt = Annotated[Path, typer.Option("--model-dir", "-m", help="Model directory holding manifest.json.")]


def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint file to write.")] = Path("checkpoints/digits.pt"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 15,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
    seed: Annotated[int, typer.Option(help="Seed of the split, the weights and the shuffling.")] = 0,
    arch: Annotated[
        str,
        typer.Option(
            help="digits-cnn (federation's), digits-cnn-small (the device tier) or digits-cloud-cnn (the cloud tier)."
        ),
    ] = "digits-cnn",
) -> None:
    """Train a reference digits network and save a checkpoint."""
    from federation.export import ARCHITECTURES, save_checkpoint
    from federation.task import evaluate, load_split, set_seed
    from federation.task import train as fit

    if arch not in ARCHITECTURES:
        raise typer.BadParameter(f"known: {', '.join(ARCHITECTURES)}", param_hint="--arch")
    split = load_split(seed)
    set_seed(seed)
    model = ARCHITECTURES[arch]()
    with progress() as bar:
        task = bar.add_task(f"training {arch}", total=epochs)
        fit(model, split.x_train, split.y_train, epochs=epochs, lr=lr, seed=seed, on_epoch=lambda *_: bar.advance(task))
    _, acc = evaluate(model, split.x_test, split.y_test)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out, arch=arch, metrics={"test_accuracy": acc})
    console.print(f"saved {out} (test accuracy {acc:.4f})")


def export(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint written by `fedge train`.")],
    model_dir: ModelDirOpt,
    config: ConfigOpt = None,
    version: Annotated[int | None, typer.Option(help="Model version number.")] = None,
    sparsity: Annotated[float | None, typer.Option(help="Prune this fraction of weights (0 = off).")] = None,
    max_drop: Annotated[float | None, typer.Option("--max-drop", help="Accuracy gate, in points.")] = None,
    tflite: Annotated[str | None, typer.Option(help="auto, int8, float32 or off.")] = None,
    int8: Annotated[
        bool | None, typer.Option("--int8/--no-int8", help="Quantize to int8 ONNX (the cloud tier: no).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model directory.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the data split.")] = 0,
) -> None:
    """Prune, export and quantize a checkpoint into a verified model directory."""
    from dataclasses import replace

    from federation.export import ExportConfig, export_model, load_checkpoint
    from federation.task import load_split

    cfg = ExportConfig.load(config)
    overrides = {
        "version": version,
        "sparsity": sparsity,
        "max_accuracy_drop_pt": max_drop,
        "tflite": tflite,
        "int8": int8,
    }
    cfg = replace(cfg, overwrite=overwrite or cfg.overwrite, **{k: v for k, v in overrides.items() if v is not None})
    model, _ = load_checkpoint(checkpoint)
    with progress() as bar:
        task = bar.add_task("export", total=None)
        manifest = export_model(
            model, model_dir, load_split(seed), cfg, on_step=lambda msg: bar.update(task, description=msg)
        )
        bar.update(task, description="export done", total=1, completed=1)
    table = Table(title=f"{manifest.name} v{manifest.version} -> {model_dir}")
    for col in ("artifact", "precision", "KiB", "test accuracy", "temperature", "test ECE, 15 bins"):
        table.add_column(col, no_wrap=col == "artifact")
    for a in manifest.artifacts.values():
        ece = f"{a.ece_before:.4f} -> {a.ece_after:.4f}" if a.ece_before is not None else "-"
        row = [a.kind, a.precision, f"{a.size / 1024:.1f}", f"{a.accuracy:.4f}", f"{a.temperature:.3f}", ece]
        table.add_row(*row)
    console.print(table)
    console.print(f"fp32 reference accuracy {manifest.reference_accuracy:.4f}, sparsity {manifest.sparsity:.0%}")


def predict(
    input_file: Annotated[Path, typer.Argument(help=".npy file: one sample or a batch.")],
    model_dir: ModelDirOpt,
    config: ConfigOpt = None,
    artifact: Annotated[str | None, typer.Option(help="Only this artifact kind, e.g. onnx-int8 or tflite.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per sample on stdout.")] = False,
) -> None:
    """Run a model directory on the samples of an .npy file."""
    from dataclasses import replace

    from sdk.edge import EdgeConfig, EdgeRuntime
    from sdk.errors import InvalidInput

    cfg = EdgeConfig.load(config)
    if artifact:
        cfg = replace(cfg, artifacts=(artifact,))
    try:
        x = np.load(input_file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{input_file} is not a readable .npy array: {exc}") from exc
    with EdgeRuntime.from_model_dir(model_dir, cfg) as rt:
        result = rt.predict(x)
        rows = list(result) if hasattr(result, "labels") else [result]
        labels = rt.manifest.labels
        if as_json:
            for r in rows:
                name = labels[r.label] if r.label < len(labels) else str(r.label)
                line = {"label": r.label, "name": name, "confidence": r.confidence, "source": r.source}
                console.print_json(json.dumps(line | {"model_version": r.model_version, "latency_ms": r.latency_ms}))
            return
        table = Table(
            title=f"{rt.manifest.name} v{rt.manifest.version} on {rt.artifact.kind} ({rt.backend.devices[0]})"
        )
        for col in ("#", "label", "confidence", "source"):
            table.add_column(col)
        for i, r in enumerate(rows):
            table.add_row(
                str(i), labels[r.label] if r.label < len(labels) else str(r.label), f"{r.confidence:.4f}", r.source
            )
        console.print(table)
        console.print(f"{len(rows)} sample(s) in {rows[0].latency_ms:.2f} ms")


def info(model_dir: ModelDirOpt) -> None:
    """Show a model directory's manifest and the engines this machine offers."""
    from sdk.backends.litert import interpreter_package
    from sdk.backends.ort import available_providers
    from sdk.manifest import load_manifest

    m = load_manifest(model_dir)
    console.print(f"[bold]{m.name}[/] v{m.version}  created {m.created_at or '?'}")
    console.print(f"input  {m.input.name} {list(m.input.shape)} {m.input.dtype}")
    console.print(f"output {m.outputs[0].name} {list(m.outputs[0].shape)} {m.outputs[0].dtype} ({m.output_kind})")
    console.print(
        f"labels {', '.join(m.labels) or '-'}   sparsity {m.sparsity:.0%}   threshold {m.confidence_threshold}"
    )
    table = Table()
    for col in ("artifact", "precision", "KiB", "accuracy", "T", "threshold", "sha256"):
        table.add_column(col, no_wrap=col == "artifact")
    for a in m.artifacts.values():
        acc = "-" if a.accuracy is None else f"{a.accuracy:.4f}"
        threshold = m.threshold_for(a.kind)
        shown = "-" if threshold is None else f"{threshold:.4g}"
        table.add_row(a.kind, a.precision, f"{a.size / 1024:.1f}", acc, f"{a.temperature:.3f}", shown, a.sha256[:16])
    console.print(table)
    if m.cloud_model:
        console.print(f"thresholds calibrated against the cloud's {m.cloud_model.name} v{m.cloud_model.version}")
    if m.lineage:
        console.print(f"lineage {json.dumps(dict(m.lineage), sort_keys=True)}")
    console.print(f"onnxruntime providers: {', '.join(available_providers()) or 'not installed'}")
    console.print(f"LiteRT interpreter: {interpreter_package() or 'not installed'}")


def register(app: typer.Typer) -> None:
    """Add the model commands to ``app``."""
    for command in (train, export, predict, info):
        app.command()(command)
