"""The two-tier cascade on the digits test split: device alone, cloud alone, and edge-first with a guarantee.

``python -m bench.cascade [--quick] [--json] [--target-accuracy 0.96] [--device-seeds N]``

Everything runs for real: a private Mosquitto, a ``fedge cloud worker`` process serving the
cloud tier (a larger CNN, fp32), and the device's ``EdgeRuntime`` on the device tier (a small
CNN, pruned, int8 ONNX) with its export-fitted temperature. The threshold comes from
``fedge calibrate``'s driver asking that same worker for the validation rows (Clopper-Pearson,
95 %). Then the test split goes through the device alone, the cloud alone (cloud-only, same
worker) and the cascade (edge-first). ECE is over 15 equal-width bins, on the test split, from
the runtime's own confidences: before (temperature 1) and after (the manifest's temperature).
Both tiers are trained and exported first unless ``--model-dir`` and ``--cloud-model-dir`` name them.
Which rows a small device tier gets confidently wrong varies with its seed, and on 270 validation rows
that moves the gap by rows: ``--device-seeds N`` measures device tiers from seeds 0..N-1 against the same
served cloud tier and says how many meet every target.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rich.console import Console

from bench.harness import Progress, command_line, figures_table, start, wait_until
from sdk.confidence import expected_calibration_error
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.cloud_client import CloudClient
from sdk.manifest import load_manifest
from sdk.mosquitto import Mosquitto
from sdk.mqtt import MqttSettings

__all__ = ["build_tiers", "main", "run"]

TARGETS = {"cascade_gap_pt": 0.5, "fallback_rate": 0.20, "ece_after": 0.03}
#: What ``--device-seeds`` reports of each device tier.
SEED_KEYS = ("edge_accuracy", "cascade_accuracy", "fallback_rate", "cascade_gap_pt", "cloud_over_edge_pt", "ece_after")
DEVICE_ARTIFACT = "onnx-int8"
#: Long enough that no loaded machine turns a fallback into a degraded answer: this measures accuracy, not latency.
DEADLINE_MS = 60_000.0
BATCH = 64


def build_tiers(
    folder: Path, split: Any, *, quick: bool, step: Progress, device_seeds: int = 1
) -> tuple[list[Path], Path]:
    """Train and export the cloud tier (larger CNN, fp32), then device tiers (small CNN, pruned 50 %, int8).

    Each device tier is distilled from the cloud tier it falls back to: its confident mistakes then fall more often
    on rows the cloud gets wrong too, where keeping the device's answer costs the cascade nothing. Device tier
    ``k`` starts from seed ``k`` (weights and batch order); the first is the one the figures are about.
    """
    from federation.export import ExportConfig, export_model
    from federation.export.cloud_tier import export_cloud_tier, train_cloud_tier
    from federation.task import DEVICE_WIDTH, DigitsCNN, set_seed, train

    epochs = (6, 5) if quick else (12, 10)
    step(f"training the cloud tier ({epochs[1]} epochs)")
    cloud = train_cloud_tier(split, epochs=epochs[1])
    cloud_dir = folder / "digits-cloud"
    export_cloud_tier(cloud, cloud_dir, split, on_step=step)
    device_dirs = []
    for seed in range(device_seeds):
        set_seed(seed)
        device = DigitsCNN(width=DEVICE_WIDTH)
        step(f"training device tier {seed} ({epochs[0]} epochs), distilled from the cloud tier")
        train(device, split.x_train, split.y_train, epochs=epochs[0], lr=3e-3, seed=seed, teacher=cloud)
        step("exporting it: pruned 50 %, int8 ONNX")
        device_dir = folder / f"digits-device-{seed}"
        export_model(device.eval(), device_dir, split, ExportConfig(sparsity=0.5, tflite="off"), on_step=step)
        device_dirs.append(device_dir)
    return device_dirs, cloud_dir


def _predict(rt: EdgeRuntime, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels, top-class confidences and sources of ``x``, a batch at a time, as the runtime answers them."""
    labels, conf, sources = [], [], []
    for i in range(0, len(x), BATCH):
        result = rt.predict(x[i : i + BATCH])
        labels.append(result.labels)
        conf.append(result.confidences)
        sources.extend(result.sources)
    return np.concatenate(labels), np.concatenate(conf), sources


def _uncalibrated(model_dir: Path, out: Path) -> Path:
    """A copy of ``model_dir`` whose manifest records no temperature: what a runtime reported before calibration."""
    shutil.copytree(model_dir, out)
    manifest = load_manifest(out)
    artifacts = {k: replace(a, temperature=1.0) for k, a in manifest.artifacts.items()}
    replace(manifest, artifacts=artifacts).write(out)
    return out


def run(
    step: Progress,
    *,
    quick: bool = False,
    target_accuracy: float = 0.96,
    model_dir: Path | None = None,
    cloud_model_dir: Path | None = None,
    device_seeds: int = 1,
) -> dict[str, Any]:
    """Calibrate against a served cloud worker, then measure edge, cloud and cascade on the test split.

    With ``device_seeds`` > 1 (tiers trained here), device tiers from that many seeds are measured against the
    same cloud worker; the report is the first one's, and ``seeds`` says how each of them did.
    """
    from federation.task import load_split

    started = time.perf_counter()
    split = load_split(0)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedge-bench-cascade-")))
        if model_dir is None or cloud_model_dir is None:
            device_dirs, cloud_model_dir = build_tiers(tmp, split, quick=quick, step=step, device_seeds=device_seeds)
        else:
            device_dirs = [model_dir]
        name = load_manifest(cloud_model_dir).name
        broker = stack.enter_context(Mosquitto())
        settings = MqttSettings.from_address(broker.address)
        step(f"broker on {broker.address}; starting a `fedge cloud worker` on {cloud_model_dir.name}")
        proc = start("-m", "sdk.cli", "cloud", "worker", "-m", str(cloud_model_dir), "--broker", broker.address)
        stack.callback(proc.wait, 10)
        stack.callback(proc.terminate)
        client = CloudClient(settings, device_id=f"bench-{uuid.uuid4().hex[:8]}").start(wait=True)
        cloud_rt = stack.enter_context(
            EdgeRuntime(None, EdgeConfig(fallback="cloud-only", model_name=name, deadline_ms=DEADLINE_MS), cloud=client)
        )
        wait_until(lambda: cloud_rt.predict(split.x_test[:1]), "the worker process")
        step("cloud alone, through the worker")
        cloud_labels, _, cloud_sources = _predict(cloud_rt, split.x_test)
        cloud = _Cloud(settings, name, cloud_labels, cloud_sources.count("edge-degraded"))
        reports = [
            _measure(step, Path(tmp) / f"device-{k}", device_dir, split, cloud, target_accuracy)
            for k, device_dir in enumerate(device_dirs)
        ]
    report = {**reports[0], "target_accuracy": target_accuracy, "wall_s": round(time.perf_counter() - started, 1)}
    if len(reports) > 1:
        report["seeds"] = [
            {"seed": k, **{key: r[key] for key in SEED_KEYS}, "meets_all": all(r["meets_targets"].values())}
            for k, r in enumerate(reports)
        ]
        report["seeds_meeting_all"] = sum(row["meets_all"] for row in report["seeds"])
        report["mean_cascade_gap_pt"] = round(float(np.mean([r["cascade_gap_pt"] for r in reports])), 2)
    return report


class _Cloud(NamedTuple):
    """The served cloud tier: where it answers, and its answers to the test split."""

    settings: MqttSettings
    name: str
    labels: np.ndarray
    degraded_rows: int


def _measure(
    step: Progress, folder: Path, model_dir: Path, split: Any, cloud: _Cloud, target_accuracy: float
) -> dict[str, Any]:
    """Calibrate one device tier against the served cloud, then measure it alone and in the cascade."""
    from federation.export.thresholds import calibrate_against_served

    folder.mkdir()
    device_dir = Path(shutil.copytree(model_dir, folder / "device"))  # calibration writes its manifest
    step(f"calibrating {DEVICE_ARTIFACT} against the served cloud on {len(split.y_val)} validation rows")
    chosen, answers = calibrate_against_served(
        device_dir, split, cloud.settings, cloud.name, artifact=DEVICE_ARTIFACT, target_accuracy=target_accuracy
    )
    calibration = chosen.calibration
    x, y = split.x_test, split.y_test
    step(f"{len(y)} test rows: device alone")
    config = EdgeConfig(artifacts=(DEVICE_ARTIFACT,), fallback="edge-only", deadline_ms=DEADLINE_MS)
    with EdgeRuntime.from_model_dir(device_dir, config) as edge_rt:
        temperature = edge_rt.artifact.temperature
        edge_labels, edge_conf, _ = _predict(edge_rt, x)
    with EdgeRuntime.from_model_dir(_uncalibrated(device_dir, folder / "uncalibrated"), config) as raw_rt:
        raw_labels, raw_conf, _ = _predict(raw_rt, x)
    np.testing.assert_array_equal(raw_labels, edge_labels)  # a temperature never changes an answer
    step("the cascade: edge-first with the calibrated threshold")
    cascade_client = CloudClient(cloud.settings, device_id=f"bench-{uuid.uuid4().hex[:8]}").start(wait=True)
    with EdgeRuntime.from_model_dir(device_dir, replace(config, fallback="edge-first"), cloud=cascade_client) as rt:
        threshold = rt.confidence_threshold
        cascade_labels, _, sources = _predict(rt, x)

    edge_right, cascade_right = edge_labels == y, cascade_labels == y
    edge_acc, cloud_acc = float(edge_right.mean()), float((cloud.labels == y).mean())
    cascade_acc = float(cascade_right.mean())
    fallback_rate = sources.count("cloud") / len(y)
    report = {
        "edge_accuracy": round(edge_acc, 4),
        "cloud_accuracy": round(cloud_acc, 4),
        "cascade_accuracy": round(cascade_acc, 4),
        "fallback_rate": round(fallback_rate, 4),
        "cascade_gap_pt": round(100 * (cloud_acc - cascade_acc), 2),
        "cloud_over_edge_pt": round(100 * (cloud_acc - edge_acc), 2),
        "ece_before": round(expected_calibration_error(raw_conf, edge_right), 4),
        "ece_after": round(expected_calibration_error(edge_conf, edge_right), 4),
        "ece_bins": 15,
        "temperature": temperature,
        "threshold": threshold,
        "calibration_reached": calibration.reached,
        "calibration_accuracy_lower": round(calibration.accuracy_lower, 4),
        "calibration_fallback_rate": round(calibration.fallback_rate, 4),
        "cloud_model": f"{answers.model.name} v{answers.model.version}",
        "degraded_rows": sources.count("edge-degraded") + cloud.degraded_rows,
        "test_rows": len(y),
    }
    gap_ok = report["cascade_gap_pt"] <= TARGETS["cascade_gap_pt"] and fallback_rate <= TARGETS["fallback_rate"]
    report["meets_targets"] = {
        "cascade_gap_pt": gap_ok,
        "fallback_rate": fallback_rate <= TARGETS["fallback_rate"],
        "ece_after": report["ece_after"] <= TARGETS["ece_after"],
        "cloud_over_edge_pt": report["cloud_over_edge_pt"] >= 2.0,
    }
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    keys = (
        "edge_accuracy",
        "cloud_accuracy",
        "cascade_accuracy",
        "fallback_rate",
        "cascade_gap_pt",
        "ece_before",
        "ece_after",
        "threshold",
    )
    title = f"two-tier cascade on {report['test_rows']} test rows (cloud {report['cloud_model']})"
    limits = {"cascade_gap_pt": "<= 0.5", "fallback_rate": "<= 0.20", "ece_after": "<= 0.03"}
    console.print(figures_table(title, report, keys, limits))
    if "seeds" in report:
        console.print(
            f"{report['seeds_meeting_all']} of {len(report['seeds'])} device seeds meet every target; "
            f"mean cascade gap {report['mean_cascade_gap_pt']} pt"
        )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-accuracy", type=float, default=0.96, help="calibration target (default 0.96)")
    parser.add_argument("--model-dir", type=Path, help="device tier model directory (default: train one)")
    parser.add_argument("--cloud-model-dir", type=Path, help="cloud tier model directory (default: train one)")
    parser.add_argument(
        "--device-seeds", type=int, default=1, help="device tiers from seeds 0..N-1 against one cloud tier (default 1)"
    )


main = command_line(
    "python -m bench.cascade",
    __doc__,
    quick_help="shorter training of both tiers",
    run=lambda args, step: run(
        step,
        quick=args.quick,
        target_accuracy=args.target_accuracy,
        model_dir=args.model_dir,
        cloud_model_dir=args.cloud_model_dir,
        device_seeds=args.device_seeds,
    ),
    render=render,
    arguments=_arguments,
)


if __name__ == "__main__":
    sys.exit(main())
