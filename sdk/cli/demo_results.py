"""What the demo's stages return: the figures they print, kept for the report (the OTA stage's are in demo_fleet)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sdk.edge.calibration import Calibration

__all__ = ["ArtifactRun", "Call", "CascadeRun", "FederationRun", "RoundFigures"]


@dataclass(frozen=True, kw_only=True)
class ArtifactRun:
    """One artifact of the first release on the edge runtime, over the test split, one image per call."""

    kind: str
    precision: str
    size: int  # bytes
    accuracy: float
    latencies_ms: tuple[float, ...]
    engine: str


class Call(NamedTuple):
    """One call of the fallback stage: who answered, whether the label was right, and its wall time."""

    source: str  # "edge", "cloud" or "edge-degraded"
    correct: bool
    ms: float


@dataclass(frozen=True, kw_only=True)
class CascadeRun:
    """The fallback stage: the calibrated threshold and what device, cloud and cascade scored on the same rows."""

    calibration: Calibration  # on the validation rows, against the served cloud; its curve is the report's
    threshold: float  # the one the device used: the calibrated one when reached, else the manifest's or the default
    cloud_model: str  # "digits v1": the cloud tier the threshold was calibrated against
    rows: int
    device_accuracy: float
    cloud_accuracy: float
    cascade_accuracy: float
    fallback_rate: float  # share of the cascade's calls the cloud answered
    calls: tuple[Call, ...]  # the cascade's calls (``rows`` of them), then those made with the cloud stopped


@dataclass(frozen=True, kw_only=True)
class RoundFigures:
    """One federation round: the global model's validation accuracy, the privacy spent so far, its version."""

    round: int
    val_accuracy: float
    epsilon: float | None
    version: int | None  # the candidate version the gate made of it, if any
    released: bool  # whether the release pipeline released that version


@dataclass(frozen=True, kw_only=True)
class FederationRun:
    """The federation stage: per round, against the first release and the same network trained centrally."""

    rounds: tuple[RoundFigures, ...]
    release_accuracy: float  # the first release, validation split
    centralised_accuracy: float | None  # the same network trained on every training row in one place, validation
    test_accuracy: float  # the final global model
    epsilon: float | None
    delta: float | None
    newest: int | None  # the newest version that beat the release (released, when a registry was given)
