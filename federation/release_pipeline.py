"""The release pipeline: a model the gate accepted, exported for every kind the fleet runs, checked, signed, rolled out.

```
accepted model ─> kinds: those the fleet's devices report (fleet view) + release-targets
  ─> export into staging: pruned per ExportConfig, fp32 and int8 ONNX, int8 LiteRT
  ─> each artifact's accuracy on the validation split, through the engine a device uses
  ─> with a ThresholdTarget: each artifact's edge-first threshold against the cloud, with a guarantee
  ─> decide: every kind there, none below the current release's on the same split less max-accuracy-drop
  ─> register (the registry numbers it; its lineage keeps the decision)
  ─> accepted: release it, staged (the registry's policy sets the first stage); refused: never released
```
:class:`ReleasePolicy` decides without I/O; :class:`ReleasePipeline` carries its decisions out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from federation.export import ExportConfig, run_artifact
from federation.export.thresholds import CloudAnswers, calibrate_thresholds, run_cloud_model_dir
from federation.export.to_tflite import tflite_available
from federation.settings import FederationSettings
from federation.task import Split, accuracy
from federation.versions import StoredVersion, VersionStore
from sdk.errors import RegistryError, ReleaseRefused
from sdk.manifest import ARTIFACT_KINDS, load_manifest

__all__ = [
    "KindCheck",
    "ReleaseDecision",
    "ReleaseOutcome",
    "ReleasePipeline",
    "ReleasePolicy",
    "ThresholdTarget",
    "release_accuracies",
]

log = logging.getLogger("fedge.federation")


def release_accuracies(lineage: Mapping[str, Any] | None, split: Mapping[str, int]) -> dict[str, float]:
    """A release's accuracy per artifact kind on ``split``, from its lineage; none when it names another split.

    A kind its lineage measured no artifact of takes the release model's own validation accuracy.
    """
    if not lineage or lineage.get("validation_split") != dict(split):
        return {}
    metrics = lineage.get("metrics") or {}
    measured = {str(k): float(v) for k, v in (metrics.get("artifact_accuracy") or {}).items()}
    model = metrics.get("val_accuracy")
    return {k: measured.get(k, float(model)) for k in ARTIFACT_KINDS if k in measured or model is not None}


@dataclass(frozen=True)
class ThresholdTarget:
    """Calibrate every released artifact's threshold against ``cloud`` (labels for rows) to reach ``accuracy``."""

    cloud: Callable[[np.ndarray], CloudAnswers]
    accuracy: float = 0.95
    confidence_level: float = 0.95


@dataclass(frozen=True)
class KindCheck:
    """What the policy said about one artifact kind of a candidate, and why."""

    kind: str
    accuracy: float | None
    release_accuracy: float | None
    accepted: bool
    reason: str

    def as_record(self) -> dict[str, Any]:
        """The JSON the report and the lineage keep."""
        return {
            "kind": self.kind,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 5),
            "release_accuracy": None if self.release_accuracy is None else round(self.release_accuracy, 5),
            "accepted": self.accepted,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ReleaseDecision:
    """The policy's verdict on a whole candidate: released only when every kind it checked is accepted."""

    kinds: tuple[str, ...]
    checks: tuple[KindCheck, ...]

    @property
    def accepted(self) -> bool:
        """Whether the candidate may be released."""
        return all(c.accepted for c in self.checks)

    @property
    def reason(self) -> str:
        """Why it was refused (every refused kind), or ``accepted``."""
        return "; ".join(c.reason for c in self.checks if not c.accepted) or "accepted"

    def raise_if_refused(self) -> None:
        """Raise ReleaseRefused (with the reason) unless the candidate was accepted."""
        if not self.accepted:
            raise ReleaseRefused(self.reason)

    def as_record(self) -> dict[str, Any]:
        """The JSON the report and the lineage keep."""
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "kinds": list(self.kinds),
            "checks": [c.as_record() for c in self.checks],
        }


@dataclass(frozen=True, kw_only=True)
class ReleasePolicy:
    """Which artifact kinds a release must carry, and how far below the release's an artifact may fall."""

    targets: tuple[str, ...] = ARTIFACT_KINDS
    max_drop: float = 0.0

    def kinds(self, fleet: Iterable[str]) -> tuple[str, ...]:
        """The kinds to export: the configured ones and every one the fleet runs (known kinds in their usual order)."""
        wanted = {*self.targets, *fleet}
        return (*(k for k in ARTIFACT_KINDS if k in wanted), *sorted(wanted - set(ARTIFACT_KINDS)))

    def decide(
        self, fleet: Iterable[str], candidate: Mapping[str, float], release: Mapping[str, float]
    ) -> ReleaseDecision:
        """Judge ``candidate`` (accuracy per kind it carries) against ``release``'s (per kind, on the same split).

        Every kind the fleet runs or ``targets`` names must be there, and no kind the candidate
        carries may be below the release's accuracy less ``max_drop``.
        """
        fleet = set(fleet)
        required = self.kinds(fleet)
        checks = []
        for kind in (*required, *(k for k in candidate if k not in required)):
            ours, theirs = candidate.get(kind), release.get(kind)
            checks.append(KindCheck(kind, ours, theirs, *self._verdict(kind, ours, theirs, fleet)))
        return ReleaseDecision(required, tuple(checks))

    def _verdict(self, kind: str, ours: float | None, theirs: float | None, fleet: set[str]) -> tuple[bool, str]:
        if ours is None:
            needs = "the fleet runs it" if kind in fleet else "release-targets names it"
            return False, f"{kind}: no artifact of this kind, and {needs}"
        if theirs is None:
            return True, f"{kind}: {ours:.4f} (no release measured on this split)"
        if ours < theirs - self.max_drop:
            return False, (
                f"{kind}: accuracy {ours:.4f} is below the release's {theirs:.4f}"
                f" less max-accuracy-drop {self.max_drop:.4f}"
            )
        return True, f"{kind}: {ours:.4f} (release {theirs:.4f})"


@dataclass(frozen=True)
class ReleaseOutcome:
    """What became of one candidate: its version, the decision, and whether it was released."""

    stored: StoredVersion
    decision: ReleaseDecision
    parent_version: int | None
    released: bool
    error: str | None = None

    @property
    def version(self) -> int:
        """The version number the registry gave it."""
        return self.stored.version

    @property
    def reason(self) -> str:
        """Why it was not released, or ``released``."""
        return "released" if self.released else self.error or self.decision.reason

    def raise_if_refused(self) -> None:
        """Raise ReleaseRefused (with the reason) unless the candidate was released."""
        self.decision.raise_if_refused()
        if not self.released:
            raise ReleaseRefused(self.reason)

    def as_record(self) -> dict[str, Any]:
        """The JSON the federation report keeps."""
        return {
            "version": self.version,
            "parent_version": self.parent_version,
            "released": self.released,
            "reason": self.reason,
            **({"error": self.error} if self.error else {}),
            **self.decision.as_record(),
        }


class ReleasePipeline:
    """Exports, checks, registers and releases the candidates of one model through a registry."""

    def __init__(
        self,
        store: VersionStore,
        split: Split,
        *,
        policy: ReleasePolicy | None = None,
        export: ExportConfig | None = None,
        channel: str = "stable",
        thresholds: ThresholdTarget | None = None,
    ) -> None:
        """Number and register through ``store`` (which needs a registry); measure on ``split``'s validation part.

        With ``thresholds``, each artifact's edge-first threshold is calibrated on the validation part too.
        """
        if store.registry is None:
            raise ValueError("a release pipeline needs a version store with a registry")
        self.store = store
        self.registry = store.registry
        self.split = split
        self.policy = policy or ReleasePolicy()
        self.export = export or ExportConfig()
        self.channel = channel
        self.thresholds = thresholds

    @classmethod
    def from_settings(cls, settings: FederationSettings, store: VersionStore, split: Split) -> ReleasePipeline:
        """The pipeline a run's settings describe: release targets, accuracy drop, export and threshold target."""
        policy = ReleasePolicy(targets=settings.release_kinds, max_drop=settings.max_accuracy_drop)
        thresholds = None
        if settings.threshold_target:
            cloud_dir = settings.threshold_cloud_model_dir
            thresholds = ThresholdTarget(lambda x: run_cloud_model_dir(cloud_dir, x), settings.threshold_target)
        export = ExportConfig.load(settings.export_config or None)
        return cls(store, split, policy=policy, export=export, thresholds=thresholds)

    def fleet_kinds(self) -> set[str]:
        """The artifact kinds the model's devices report running (the registry's fleet view)."""
        name = self.store.model_name
        return {str(d["target"]) for d in self.registry.fleet() if d.get("model") == name and d.get("target")}

    def release(self, model: nn.Module, lineage: Mapping[str, Any]) -> ReleaseOutcome:
        """Export ``model`` for every kind needed, check, register and, when accepted, release it (staged).

        ``lineage`` says where it comes from (run id, round, strategy, privacy, epsilon, delta,
        clients, metrics, ``validation_split``); the pipeline adds the parent version, the
        calibration, the export settings and its decision.

        Raises:
            ExportError: the export failed or its own accuracy gate refused an artifact; nothing is kept.
            RegistryError: the registry could not say what the fleet runs or what the release is.
        """
        current = self.store.current_release()
        parent = int(current["version"]) if current else None
        fleet = self.fleet_kinds()
        kinds = self.policy.kinds(fleet)
        config = self._export_config(kinds)
        full = {
            **lineage,
            "parent_version": parent,
            "calibration": {"samples": min(config.calibration_samples, len(self.split.x_train)), "source": "train"},
            "export": {"sparsity": config.sparsity, "finetune_epochs": config.finetune_epochs, "int8": config.int8},
            "fleet_targets": sorted(fleet),
        }
        baseline = release_accuracies(current["lineage"] if current else None, lineage.get("validation_split") or {})
        with self.store.staged(model, self.split, full, config) as (directory, manifest):
            measured = {
                kind: accuracy(run_artifact(directory / a.file, kind, self.split.x_val), self.split.y_val)
                for kind, a in manifest.artifacts.items()
            }
            decision = self.policy.decide(fleet, measured, baseline)
            metrics = {**(full.get("metrics") or {}), "artifact_accuracy": measured}
            full = {**full, "metrics": metrics, "release": decision.as_record()}
            if self.thresholds is not None:
                full["thresholds"] = self._calibrate(directory)
                manifest = load_manifest(directory)
            stored = self.store.keep(directory, dataclasses.replace(manifest, lineage=full))
        if stored.registry_error is not None:
            return ReleaseOutcome(stored, decision, parent, released=False, error=stored.registry_error)
        if not decision.accepted:
            log.warning("%s v%d registered, not released: %s", self.store.model_name, stored.version, decision.reason)
            return ReleaseOutcome(stored, decision, parent, released=False)
        try:
            self.registry.release(self.store.model_name, stored.version, channel=self.channel, staged=True)
        except RegistryError as exc:
            log.warning("%s v%d registered, its release failed: %s", self.store.model_name, stored.version, exc)
            return ReleaseOutcome(stored, decision, parent, released=False, error=f"{type(exc).__name__}: {exc}")
        return ReleaseOutcome(stored, decision, parent, released=True)

    def _calibrate(self, directory: Path) -> dict[str, Any]:
        """Write each artifact's threshold into the staged manifest; return what the lineage keeps."""
        assert self.thresholds is not None
        x, y = self.split.x_val, self.split.y_val
        cloud = self.thresholds.cloud(x)
        results = calibrate_thresholds(
            directory,
            x,
            y,
            cloud,
            target_accuracy=self.thresholds.accuracy,
            confidence_level=self.thresholds.confidence_level,
            plot=False,
        )
        for r in results:
            if not r.calibration.reached:
                log.warning("%s: no threshold reaches %.4f with the guarantee", r.artifact, self.thresholds.accuracy)
        return {
            "cloud_model": {"name": cloud.model.name, "version": cloud.model.version},
            "target_accuracy": self.thresholds.accuracy,
            "bound": "clopper-pearson",
            "artifacts": {
                r.artifact: {
                    "reached": r.calibration.reached,
                    "threshold": r.calibration.threshold if r.written else None,
                    "fallback_rate": round(r.calibration.fallback_rate, 5),
                    "accuracy_lower": round(r.calibration.accuracy_lower, 5),
                }
                for r in results
            },
        }

    def _export_config(self, kinds: tuple[str, ...]) -> ExportConfig:
        """The export config that produces ``kinds`` (LiteRT only where litert-torch is installed)."""
        tflite = self.export.tflite if self.export.tflite in ("int8", "float32") else "int8"
        if "tflite" not in kinds or not tflite_available():
            if "tflite" in kinds:
                log.warning("a release needs tflite, but litert-torch is not installed: pip install 'fedge[export]'")
            tflite = "off"
        return dataclasses.replace(self.export, int8=self.export.int8 or "onnx-int8" in kinds, tflite=tflite)
