"""Candidate versions on disk: ``<versions_dir>/<model>-v<N>/``, each a model directory the edge runtime loads.

The registry (OTA issue) takes these directories as they are; until it exists, this
folder is where the federation's accepted models go.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from federation.export import ExportConfig, export_model
from federation.task import Split
from sdk.errors import ExportError, ModelError
from sdk.manifest import Manifest, load_manifest

__all__ = ["VersionStore"]

log = logging.getLogger("fedge.federation")


class VersionStore:
    """Numbers, exports and lists the candidate versions of one model."""

    def __init__(self, root: str | os.PathLike[str], model_name: str) -> None:
        """Keep versions of ``model_name`` under ``root`` (created when needed)."""
        self.root = Path(root)
        self.model_name = model_name

    def manifests(self) -> list[Manifest]:
        """Every readable version, oldest first."""
        found = []
        for directory in sorted(self.root.glob(f"{self.model_name}-v*")):
            try:
                found.append(load_manifest(directory))
            except ModelError:
                continue  # a half-written or foreign directory is not a version
        return sorted(found, key=lambda m: m.version)

    def next_version(self) -> int:
        """One more than the newest version here (1 when there is none)."""
        versions = [m.version for m in self.manifests()]
        return max(versions, default=0) + 1

    def best_validation_accuracy(self) -> float:
        """The highest validation accuracy recorded in the lineage of a version here (0 when none)."""
        values = [float(m.lineage.get("metrics", {}).get("val_accuracy", 0.0)) for m in self.manifests()]
        return max(values, default=0.0)

    def export(
        self,
        model: nn.Module,
        split: Split,
        lineage: Mapping[str, Any],
        *,
        tflite: bool = False,
    ) -> Manifest | None:
        """Export ``model`` as the next version through the pipeline (its accuracy gate applies); None if refused."""
        version = self.next_version()
        target = self.root / f"{self.model_name}-v{version}"
        config = ExportConfig(name=self.model_name, version=version, tflite="int8" if tflite else "off")
        try:
            return export_model(model, target, split, config, lineage=lineage)
        except ExportError as exc:
            log.warning("round model not exported as v%d: %s", version, exc)
            return None
