"""``fedge calibrate``: per-artifact edge-first thresholds with a guarantee, against the cloud model served.

By default the held-out rows (the validation split) go to the cloud workers serving the model
over MQTT (``--broker``, else the ``[mqtt]`` broker); ``--cloud-model-dir`` calibrates offline on
a cloud model directory instead. The bound is the one-sided Clopper-Pearson (exact binomial) lower bound.
Exit status: 0 every artifact reached the target; 1 some did not (their previous threshold is kept);
2 a Fedge error (e.g. no cloud answered).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from sdk.cli.console import console

if TYPE_CHECKING:
    from federation.export.thresholds import ArtifactThreshold, CloudAnswers

__all__ = ["register"]

ModelDirOpt = Annotated[Path, typer.Option("--model-dir", "-m", help="Device model directory holding manifest.json.")]


def calibrate(
    model_dir: ModelDirOpt,
    target_accuracy: Annotated[
        float, typer.Option("--target-accuracy", help="End-to-end accuracy to reach, in (0, 1].")
    ] = 0.95,
    confidence_level: Annotated[
        float,
        typer.Option("--confidence-level", help="Reach the target with this confidence (Clopper-Pearson); 0 = off."),
    ] = 0.95,
    artifact: Annotated[
        list[str] | None, typer.Option(help="Artifact kind to calibrate (repeat; default: every one in the manifest).")
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="Ask the cloud workers behind this broker HOST:PORT (default: \\[mqtt]).")
    ] = None,
    cloud_model: Annotated[
        str | None, typer.Option("--cloud-model", help="Model name to ask the cloud for (default: the manifest's).")
    ] = None,
    cloud_model_dir: Annotated[
        Path | None,
        typer.Option("--cloud-model-dir", help="Offline: run this cloud model directory here instead of asking."),
    ] = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Wait this long for each cloud answer.")] = 30.0,
    write: Annotated[bool, typer.Option("--write/--no-write", help="Store reached thresholds in the manifest.")] = True,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Draw calibration-<artifact>.png beside it.")] = True,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="fedge.toml with an \\[mqtt] table.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data split.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Choose each artifact's confidence threshold below which the device asks the cloud, with a guarantee."""
    from federation.export.thresholds import ask_served_cloud, calibrate_thresholds, run_cloud_model_dir
    from federation.task import load_split
    from sdk.manifest import load_manifest
    from sdk.mqtt import MqttSettings, parse_address

    if not 0.0 < target_accuracy <= 1.0:
        raise typer.BadParameter(f"must be within (0, 1], got {target_accuracy}", param_hint="--target-accuracy")
    if not 0.0 <= confidence_level < 1.0:
        raise typer.BadParameter(f"must be within [0, 1), got {confidence_level}", param_hint="--confidence-level")
    level = confidence_level or None
    manifest = load_manifest(model_dir)
    unknown = [k for k in artifact or () if k not in manifest.artifacts]
    if unknown:
        raise typer.BadParameter(f"{model_dir} has no {', '.join(unknown)} artifact", param_hint="--artifact")

    split = load_split(seed)
    x, y = split.x_val, split.y_val
    if cloud_model_dir is not None:
        cloud = run_cloud_model_dir(cloud_model_dir, x)
    else:
        settings = MqttSettings.load(config)
        if broker:
            host, port = parse_address(broker)
            settings = replace(settings, host=host, port=port)
        with console.status(f"asking the cloud at {settings.host}:{settings.port} for {len(y)} held-out rows"):
            # On a secured broker, replies reach only the account's own device id, which is its username.
            asker = settings.username
            cloud = ask_served_cloud(settings, cloud_model or manifest.name, x, timeout_s=timeout_s, device_id=asker)
    results = calibrate_thresholds(
        model_dir,
        x,
        y,
        cloud,
        target_accuracy=target_accuracy,
        confidence_level=level,
        artifacts=artifact,
        write=write,
        plot=plot,
    )
    reached = all(r.calibration.reached for r in results)
    if as_json:
        # typer.echo, not rich: rich would wrap long lines (paths) and break the JSON.
        typer.echo(json.dumps(_payload(model_dir, manifest, cloud, results, len(y), target_accuracy, level), indent=2))
    else:
        _show(manifest, cloud, results, len(y), level)
    if not reached:
        raise typer.Exit(code=1)


def _payload(model_dir: Path, manifest, cloud: CloudAnswers, results: list[ArtifactThreshold], n, target, level):
    written = any(r.written for r in results)
    return {
        "model": manifest.name,
        "version": manifest.version,
        "cloud": {"name": cloud.model.name, "version": cloud.model.version, "source": cloud.source},
        "samples": n,
        "target_accuracy": target,
        "confidence_level": level,
        "bound": "clopper-pearson" if level else None,
        "reached": all(r.calibration.reached for r in results),
        "manifest": str(model_dir / "manifest.json") if written else None,
        "artifacts": {
            r.artifact: {
                "reached": r.calibration.reached,
                "threshold": r.calibration.threshold,
                "previous_threshold": r.previous,
                "written": r.written,
                "accuracy": r.calibration.accuracy,
                "accuracy_lower": r.calibration.accuracy_lower,
                "fallback_rate": r.calibration.fallback_rate,
                "edge_accuracy": r.calibration.edge_accuracy,
                "cloud_accuracy": r.calibration.cloud_accuracy,
                "plot": str(r.plot) if r.plot else None,
                "curve": [
                    {
                        "threshold": p.threshold,
                        "fallback_rate": p.fallback_rate,
                        "accuracy": p.accuracy,
                        "accuracy_lower": p.accuracy_lower,
                    }
                    for p in r.calibration.curve
                ],
            }
            for r in results
        },
    }


def _show(manifest, cloud: CloudAnswers, results: list[ArtifactThreshold], n: int, level: float | None) -> None:
    for r in results:
        c = r.calibration
        table = Table(
            title=f"{manifest.name} v{manifest.version}: {r.artifact} on the edge, "
            f"{cloud.model.name} v{cloud.model.version} in the cloud ({cloud.source}), {n} held-out samples"
        )
        columns = ["", "threshold", "fallback %", "accuracy %"] + ([f"{100 * level:g}% lower bound %"] if level else [])
        for col in columns:
            table.add_column(col, justify="right")
        for p in c.curve:
            chosen = p.threshold == c.threshold
            row = ["->" if chosen else "", f"{p.threshold:.4f}", f"{100 * p.fallback_rate:.1f}"]
            row.append(f"{100 * p.accuracy:.2f}")
            if level:
                row.append(f"{100 * p.accuracy_lower:.2f}")
            table.add_row(*row, style="bold green" if chosen else None)
        console.print(table)
        console.print(
            f"edge alone {c.edge_accuracy:.2%}, cloud alone {c.cloud_accuracy:.2%}; "
            f"threshold {c.threshold:.6g}: {c.accuracy:.2%} end to end "
            + (f"(Clopper-Pearson lower bound {c.accuracy_lower:.2%}) " if level else "")
            + f"with {c.fallback_rate:.1%} of answers from the cloud"
        )
        if not c.reached:
            what = "lower bound" if level else "accuracy"
            console.print(
                f"[bold red]{r.artifact}: target {c.target_accuracy:.2%} not reached[/]: the best {what} is "
                f"{c.accuracy_lower:.2%}; kept the previous threshold {r.previous}"
            )
        elif r.written:
            console.print(f"wrote {r.artifact} confidence_threshold {c.threshold!r} (was {r.previous})")
        if r.plot:
            console.print(f"curve: {r.plot}")


def register(app: typer.Typer) -> None:
    """Add the ``calibrate`` command to ``app``."""
    app.command()(calibrate)
