"""The fallback policy: which rows of a call the cloud should answer, and how long it may take.

Modes (``EdgeConfig.fallback``):

- ``edge-first`` (default): the local model answers; rows whose confidence is below the
  threshold go to the cloud; if the cloud cannot answer in time they keep the local
  answer, flagged ``edge-degraded``. A local engine failure sends the whole call to the cloud.
- ``edge-only``: never the cloud.
- ``cloud-first``: the cloud answers; the local model is the safety net (``edge-degraded``).
- ``cloud-only``: the cloud answers or the call raises a ``CloudError``; no local safety net.

Without a local model every mode but ``edge-only`` asks the cloud and raises when it cannot.
Decisions only; :class:`~sdk.edge.runtime.EdgeRuntime` does the calls.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

__all__ = ["DEFAULT_THRESHOLD", "MODES", "Mode", "cloud_budget", "low_confidence", "resolve_threshold"]

Mode = Literal["edge-first", "edge-only", "cloud-first", "cloud-only"]
MODES: tuple[Mode, ...] = get_args(Mode)
#: The threshold when neither the config nor a calibrated manifest sets one.
DEFAULT_THRESHOLD = 0.5
_SAFETY_S = 0.001


def resolve_threshold(configured: float | None, calibrated: float | None) -> float:
    """The confidence threshold in force: the config's, else the manifest's calibrated one, else the default."""
    if configured is not None:
        return configured
    if calibrated is not None:
        return calibrated
    return DEFAULT_THRESHOLD


def low_confidence(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Rows the cloud should answer under ``edge-first``: confidence strictly below the threshold."""
    return confidence < threshold


def cloud_budget(deadline_s: float, elapsed_s: float, local_s: float = 0.0) -> float:
    """Seconds a cloud call may take and still leave ``local_s`` to answer locally before the deadline."""
    return deadline_s - elapsed_s - local_s - _SAFETY_S
