"""``fedge demo``: the whole path on embedded defaults, from training to answers on the device."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from sdk.cli.console import console, progress

__all__ = ["register"]


def demo(
    workdir: Annotated[Path, typer.Option(help="Where checkpoints and model directories go.")] = Path(".fedge-demo"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the reference model.")] = 15,
    sparsity: Annotated[float, typer.Option(help="Fraction of weights pruned before export.")] = 0.5,
) -> None:
    """Train the digits model, export it pruned and int8, and run every artifact on the edge runtime."""
    from federation.export import ExportConfig, export_model
    from federation.task import DigitsCNN, evaluate, load_split, set_seed, train
    from sdk.edge import EdgeConfig, EdgeRuntime

    split = load_split(0)
    set_seed(0)
    model = DigitsCNN()
    with progress() as bar:
        task = bar.add_task("1/3 training the reference CNN on digits", total=epochs)
        train(model, split.x_train, split.y_train, epochs=epochs, lr=3e-3, on_epoch=lambda *_: bar.advance(task))
        _, torch_acc = evaluate(model, split.x_test, split.y_test)
        step = bar.add_task("2/3 export", total=None)
        model_dir = workdir / "models" / "digits-v1"
        config = ExportConfig(version=1, sparsity=sparsity, overwrite=True)
        manifest = export_model(
            model, model_dir, split, config, on_step=lambda m: bar.update(step, description=f"2/3 {m}")
        )
        bar.update(step, description="2/3 export", total=1, completed=1)
        kinds = list(manifest.artifacts)
        run = bar.add_task("3/3 edge runtime over the test split", total=len(kinds) * len(split.y_test))
        rows = []
        for kind in kinds:
            with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=(kind,), num_threads=1)) as rt:
                latencies, correct = [], 0
                for x, y in zip(split.x_test, split.y_test, strict=True):
                    t0 = time.perf_counter()
                    result = rt.predict(x)
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    correct += int(result.label == y)
                    bar.advance(run)
                art = rt.artifact
                rows.append(
                    (kind, art.precision, art.size, correct / len(split.y_test), latencies, rt.backend.devices[0])
                )

    table = Table(title=f"digits on the edge runtime ({len(split.y_test)} test images, one thread)")
    for col in ("artifact", "precision", "size (KiB)", "accuracy", "p50 ms", "p99 ms", "engine"):
        table.add_column(col, justify="right" if col not in ("artifact", "engine", "precision") else "left")
    for kind, precision, size, acc, lat, engine in rows:
        p50, p99 = np.percentile(lat, [50, 99])
        table.add_row(kind, precision, f"{size / 1024:.1f}", f"{acc:.4f}", f"{p50:.3f}", f"{p99:.3f}", engine)
    console.print(table)
    console.print(
        f"torch fp32 before pruning: {torch_acc:.4f}; pruned to {manifest.sparsity:.0%} sparsity; "
        f"model directory: {model_dir}"
    )


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command()(demo)
