"""Model versions for rollouts, made from one exported model: the benchmarks' and the OTA tests' shared helpers."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from sdk.manifest import file_digest, load_manifest

__all__ = ["make_version", "with_wrong_probe"]


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
    with np.load(path, allow_pickle=False) as npz:
        probe = {k: (v + 5.0 if k.startswith("expected") else v) for k, v in npz.items()}
    np.savez(path, **probe)
    sha, size = file_digest(path)
    dataclasses.replace(manifest, probe=dataclasses.replace(manifest.probe, sha256=sha, size=size)).write(model_dir)
    return model_dir
