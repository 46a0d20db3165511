"""Model versions for rollouts, made from one exported model: the benchmarks' and the OTA tests' shared helpers."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from sdk.loading import LoadOptions, load_model
from sdk.manifest import file_digest, load_manifest, read_probe, write_probe

__all__ = ["fine_tuned", "make_version", "with_wrong_probe"]


def make_version(model_dir: Path, out: Path, version: int) -> Path:
    """A copy of ``model_dir`` whose manifest says ``version`` (same, verified artifacts)."""
    shutil.copytree(model_dir, out)
    manifest = load_manifest(out)
    dataclasses.replace(manifest, version=version).write(out)
    return out


def with_wrong_probe(model_dir: Path) -> Path:
    """Make ``model_dir``'s recorded probe outputs wrong, re-signed in its manifest: a release whose probe fails."""
    manifest = load_manifest(model_dir)
    assert manifest.probe is not None, f"{model_dir} has no probe"
    path = model_dir / manifest.probe.file
    probe = {k: (v + 5.0 if k.startswith("expected") else v) for k, v in read_probe(path).items()}
    sha, size = write_probe(path, probe)
    dataclasses.replace(manifest, probe=dataclasses.replace(manifest.probe, sha256=sha, size=size)).write(model_dir)
    return model_dir


def fine_tuned(model_dir: Path, out: Path, version: int, *, fraction: float = 0.05, seed: int = 0) -> Path:
    """A copy of ``model_dir`` as ``version`` whose int8 ONNX weights moved as a short fine-tune moves them.

    ``fraction`` of the quantized weights move by one step (the rest keep their int8 value, as most
    do when a round changes the float weights slightly); the probe's expected output for that artifact
    is recorded again from the changed model, and the manifest re-signs both files.
    """
    import onnx
    from onnx import numpy_helper

    make_version(model_dir, out, version)
    manifest = load_manifest(out)
    artifact = manifest.artifacts["onnx-int8"]
    graph = onnx.load(out / artifact.file)
    rng = np.random.default_rng(seed)
    for tensor in graph.graph.initializer:
        if tensor.data_type != onnx.TensorProto.INT8 or len(tensor.dims) < 2:
            continue  # zero points and scales stay: a fine-tune moves weights
        weights = numpy_helper.to_array(tensor).astype(np.int16)
        moved = rng.random(weights.shape) < fraction
        weights[moved] += rng.choice(np.array([-1, 1], np.int16), size=int(moved.sum()))
        tensor.CopyFrom(numpy_helper.from_array(np.clip(weights, -127, 127).astype(np.int8), tensor.name))
    onnx.save(graph, out / artifact.file)
    sha, size = file_digest(out / artifact.file)
    manifest = dataclasses.replace(
        manifest, artifacts={**manifest.artifacts, artifact.kind: dataclasses.replace(artifact, sha256=sha, size=size)}
    )
    manifest.write(out)
    assert manifest.probe is not None, f"{model_dir} has no probe"
    model = load_model(out, LoadOptions(artifacts=(artifact.kind,), smoke_test=False))
    try:
        path = out / manifest.probe.file
        probe = read_probe(path)
        probe[f"expected/{artifact.kind}"] = model.backend.run(model.inputs.prepare(probe["input"])[0])
    finally:
        model.close()
    sha, size = write_probe(path, probe)
    dataclasses.replace(manifest, probe=dataclasses.replace(manifest.probe, sha256=sha, size=size)).write(out)
    return out
