"""Candidate versions on disk, ``<versions_dir>/<model>-v<N>/``, numbered by the registry when there is one.

Each version is a model directory the edge runtime loads. A model is exported under a
staging name first and numbered only when it is complete: one more than the highest
number the registry holds for the model and than any ``<model>-v<N>`` here (a
half-written directory keeps its number too). With a registry, the version is uploaded
at once; a number another uploader took in the meantime (409) moves it to the next one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from federation.export import ExportConfig, export_model
from federation.task import Split
from sdk.errors import Conflict, ModelError, RegistryError
from sdk.manifest import Manifest, load_manifest
from sdk.registry_client import RegistryClient

__all__ = ["StoredVersion", "VersionStore", "split_key"]

log = logging.getLogger("fedge.federation")

#: How many numbers an export tries when other uploaders keep taking the next one.
NUMBER_ATTEMPTS = 5


def split_key(seed: int, samples: int) -> dict[str, int]:
    """What identifies a validation split in a lineage: accuracies compare only on the same split."""
    return {"seed": seed, "samples": samples}


@dataclasses.dataclass(frozen=True)
class StoredVersion:
    """An exported candidate: its manifest, where it lies, and whether the registry took it."""

    manifest: Manifest
    directory: Path
    registry_error: str | None = None

    @property
    def version(self) -> int:
        """The version number it got."""
        return self.manifest.version


class VersionStore:
    """Numbers, exports, registers and lists the candidate versions of one model."""

    def __init__(
        self, root: str | os.PathLike[str], model_name: str, *, registry: RegistryClient | None = None
    ) -> None:
        """Keep versions of ``model_name`` under ``root`` (created when needed); with ``registry``, register them."""
        self.root = Path(root)
        self.model_name = model_name
        self.registry = registry
        self._pattern = re.compile(rf"{re.escape(model_name)}-v(\d+)")

    def manifests(self) -> list[Manifest]:
        """Every readable version here, oldest first."""
        found = []
        for directory in self._numbered():
            try:
                found.append(load_manifest(directory))
            except ModelError:
                continue  # a half-written or foreign directory is not a version
        return sorted(found, key=lambda m: m.version)

    def _numbered(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and self._pattern.fullmatch(p.name)]

    def next_version(self) -> int:
        """One more than the highest number the registry holds and than any version directory here."""
        local = max((int(self._pattern.fullmatch(p.name)[1]) for p in self._numbered()), default=0)  # type: ignore[index]
        registered = self.registry.latest_version(self.model_name) if self.registry is not None else 0
        return max(local, registered) + 1

    def current_release(self) -> dict[str, Any] | None:
        """The registry's newest release not aborted (its version, lineage, artifacts); None without one."""
        if self.registry is None:
            return None
        standing = {int(r["version"]) for r in self.registry.releases(self.model_name) if r.get("state") != "aborted"}
        found = [v for v in self.registry.versions(self.model_name) if int(v["version"]) in standing]
        return max(found, key=lambda v: int(v["version"]), default=None)

    def release_accuracy(self, split: Mapping[str, int]) -> float | None:
        """The validation accuracy, on ``split``, of the current release (the registry's) or the best version here.

        Only lineages that name the same validation split count; None when there is none.
        """
        if self.registry is not None:
            current = self.current_release()
            lineages = [current["lineage"]] if current else []
        else:
            lineages = [dict(m.lineage) for m in self.manifests()]
        values = [
            float(lineage["metrics"]["val_accuracy"])
            for lineage in lineages
            if lineage.get("validation_split") == dict(split) and "val_accuracy" in lineage.get("metrics", {})
        ]
        return max(values, default=None)

    def export(
        self,
        model: nn.Module,
        split: Split,
        lineage: Mapping[str, Any],
        *,
        tflite: bool = False,
        config: ExportConfig | None = None,
    ) -> StoredVersion:
        """Export ``model`` through the pipeline (its accuracy gate applies), number it, and register it.

        ``config`` (default: int8 ONNX, and int8 LiteRT with ``tflite``) says what the export produces.

        Raises:
            ExportError: the pipeline refused the model; nothing is kept.
            Conflict: every number tried was taken meanwhile; nothing is kept.
        """
        config = config or ExportConfig(tflite="int8" if tflite else "off")
        with self.staged(model, split, lineage, config) as (directory, manifest):
            return self.keep(directory, manifest)

    @contextlib.contextmanager
    def staged(
        self, model: nn.Module, split: Split, lineage: Mapping[str, Any], config: ExportConfig
    ) -> Iterator[tuple[Path, Manifest]]:
        """Export ``model`` into a staging directory, not yet numbered; whatever :meth:`keep` did not take goes.

        Raises:
            ExportError: the pipeline refused the model; nothing is kept.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{self.model_name}-export-"))
        try:
            config = dataclasses.replace(config, name=self.model_name, version=0)
            yield staging / "model", export_model(model, staging / "model", split, config, lineage=lineage)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def keep(self, directory: Path, manifest: Manifest) -> StoredVersion:
        """Number a staged ``directory`` (``manifest`` is written with the number) and register it.

        Raises:
            Conflict: every number tried was taken meanwhile; the directory stays staged.
        """
        for _ in range(NUMBER_ATTEMPTS):
            manifest = dataclasses.replace(manifest, version=self.next_version())
            manifest.write(directory)
            target = self.root / f"{self.model_name}-v{manifest.version}"
            try:
                target.mkdir()  # taken by a concurrent run on this folder: try the next number
            except FileExistsError:
                continue
            os.replace(directory, target)
            if self.registry is None:
                return StoredVersion(manifest, target)
            try:
                self.registry.upload(target)
            except Conflict:
                os.replace(target, directory)  # another uploader took the number: the next one
                continue
            except RegistryError as exc:
                log.warning("%s v%d kept here but not registered: %s", self.model_name, manifest.version, exc)
                return StoredVersion(manifest, target, registry_error=str(exc))
            return StoredVersion(manifest, target)
        raise Conflict(f"{self.model_name}: {NUMBER_ATTEMPTS} version numbers in a row were taken while registering")
