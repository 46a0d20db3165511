"""Delta updates: what a device holding the parent fetches for a fine-tuned release, against the full artifact.

``python -m bench.delta [--quick] [--json] [--cache-dir DIR | --no-cache]``

The model is the int8 MobileNetV2 of ``bench.mobilenet`` (built once and cached, the model of
``bench.ota``). v1 is released and a device installs it; v2 is v1 fine-tuned
(:func:`bench.versions.fine_tuned`: ``FRACTION`` of the int8 weights move by one step, the rest keep
their value), released through the same signed repository, which signs a bsdiff4 patch from v1. The
device updates over HTTP through python-tuf and rebuilds v2 from v1 and the patch. Bytes are counted
at its fetcher: every metadata file, the release index, manifest, probe and patch.

``delta_bytes_ratio`` divides them by the full artifact (target <= 0.6). The raw baseline runs in
the same run: a second device that holds no parent installs the same release and fetches the full
file; ``update_bytes_ratio`` is the first device's bytes over its. ``patch_bytes_ratio_by_fraction``
shows how the patch alone grows when more weights move (made on the spot, no device).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.harness import Progress, command_line, figures_table, ratio
from bench.mobilenet import MobileNetSpec, add_cache_arguments, chosen_cache_root, mobilenet_dir
from bench.ota import CountingFetcher
from bench.versions import fine_tuned
from sdk.cloud.app import create_app
from sdk.cloud.repository import ReleaseRepository
from sdk.cloud.server import BackgroundServer
from sdk.cloud.signing import init_keys
from sdk.delta import make_patch
from sdk.edge.config import EdgeConfig
from sdk.edge.install import ModelStore
from sdk.edge.updater import ModelUpdater, UpdateConfig
from sdk.manifest import load_manifest

__all__ = ["main", "run"]

TARGETS = {"delta_bytes_ratio": 0.6}
FRACTION = 0.05  # of the int8 weights a fine-tune moves by one step
SWEEP = (0.01, 0.2, 0.5)


def run(model_dir: Path, step: Progress) -> dict[str, Any]:
    """Update a device on ``model_dir`` to a fine-tune of it by patch, and a device without it in full; report."""
    manifest = load_manifest(model_dir)
    artifact = manifest.artifacts["onnx-int8"]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedge-bench-delta-")))
        keys = init_keys(tmp / "online", tmp / "root", root_keys=1, root_threshold=1)
        repo = ReleaseRepository.create(tmp / "repository", keys)
        server = stack.enter_context(BackgroundServer(create_app({}, repository_dir=repo.directory)))
        step(f"fine-tuning v{manifest.version}: {FRACTION:.0%} of the int8 weights move by one step")
        tuned = fine_tuned(model_dir, tmp / "tuned", manifest.version + 1, fraction=FRACTION)

        def device(name: str) -> tuple[ModelUpdater, CountingFetcher]:
            fetcher = CountingFetcher()
            config = UpdateConfig(
                model=manifest.name, device_id=name, repository_url=f"{server.url}/tuf", health_window_s=0.0
            )
            edge = EdgeConfig(artifacts=("onnx-int8",), num_threads=1)
            store = ModelStore(tmp / "devices" / name)
            return ModelUpdater(store, config, repo.root_bytes(1), edge_config=edge, fetcher=fetcher), fetcher

        step(f"v{manifest.version} released; the delta device installs it")
        repo.release(model_dir)
        holder, holder_bytes = device("holds-parent")
        _installed(holder.check(), manifest.version)
        holder_bytes.bytes = 0
        step(f"v{manifest.version + 1} released with its patch; both devices update to it")
        started = time.perf_counter()
        repo.release(tuned)
        signing_s = time.perf_counter() - started
        _installed(holder.check(), manifest.version + 1)
        if holder.patches_applied != 1:
            raise RuntimeError(f"the device holding v{manifest.version} did not update by patch")
        fresh, fresh_bytes = device("no-parent")
        _installed(fresh.check(), manifest.version + 1)
        (patch,) = (repo.targets_dir / manifest.name / "patches").glob(f"*.onnx-int8-v{manifest.version}-to-*")
        patch_bytes = patch.stat().st_size
        step(f"patch sizes when {', '.join(f'{f:.0%}' for f in SWEEP)} of the weights move")
        sweep = {}
        for fraction in SWEEP:
            moved = fine_tuned(model_dir, tmp / f"sweep-{fraction}", manifest.version + 1, fraction=fraction)
            made = tmp / f"sweep-{fraction}.bsdiff"
            make_patch(model_dir / artifact.file, moved / artifact.file, made, max_ratio=float("inf"))
            sweep[str(fraction)] = ratio(made.stat().st_size, artifact.size)
    report = {
        "model": f"{manifest.name} onnx-int8",
        "artifact_bytes": artifact.size,
        "fine_tune_fraction": FRACTION,
        "patch_bytes": patch_bytes,
        "delta_update_bytes": holder_bytes.bytes,
        "full_update_bytes": fresh_bytes.bytes,
        "delta_bytes_ratio": ratio(holder_bytes.bytes, artifact.size),
        "patch_bytes_ratio": ratio(patch_bytes, artifact.size),
        "update_bytes_ratio": ratio(holder_bytes.bytes, fresh_bytes.bytes),
        "release_with_patch_s": round(signing_s, 3),
        "patch_bytes_ratio_by_fraction": sweep,
        "wall_s": round(time.time() - step.start, 1),
    }
    report["meets_targets"] = {k: report[k] <= v for k, v in TARGETS.items()}
    return report


def _installed(outcome: Any, version: int) -> None:
    if (outcome.outcome, outcome.version) != ("installed", version):
        raise RuntimeError(f"expected v{version} installed, got {outcome}")


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    keys = (
        "artifact_bytes",
        "patch_bytes",
        "delta_update_bytes",
        "full_update_bytes",
        "delta_bytes_ratio",
        "patch_bytes_ratio",
        "update_bytes_ratio",
        "release_with_patch_s",
    )
    title = f"Delta update of {report['model']} ({report['fine_tune_fraction']:.0%} of the weights moved)"
    console.print(figures_table(title, report, keys, {"delta_bytes_ratio": "<= 0.6"}))
    console.print(f"patch / artifact by fraction of weights moved: {report['patch_bytes_ratio_by_fraction']}")


def _run(args: argparse.Namespace, step: Progress) -> dict[str, Any]:
    with mobilenet_dir(MobileNetSpec(calibration_samples=16), chosen_cache_root(args), step) as (model_dir, _):
        return run(model_dir, step)


main = command_line(
    "python -m bench.delta",
    __doc__,
    quick_help="the same run (it is one device update either way)",
    run=_run,
    render=render,
    arguments=add_cache_arguments,
)

if __name__ == "__main__":
    sys.exit(main())
