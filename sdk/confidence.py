"""Class probabilities from a model's outputs, and how well they are calibrated.

What the device's fallback decision and the cloud's answers report. Logits are divided by the
artifact's temperature (fitted at export, 1.0 when its manifest records none) before the softmax,
so that a confidence of 0.9 is right about 90 % of the time.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ECE_BINS", "confidences", "expected_calibration_error"]

#: Bins of :func:`expected_calibration_error`: equal-width over [0, 1].
ECE_BINS = 15


def confidences(outputs: np.ndarray, output_kind: str, temperature: float = 1.0) -> np.ndarray:
    """Per-row class probabilities: a softmax of logits scaled by ``1 / temperature``, or the outputs as they are."""
    if output_kind == "probabilities":
        return outputs
    scaled = outputs if temperature == 1.0 else outputs / np.asarray(temperature, dtype=outputs.dtype)
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of top-class ``confidence``: equal-width bins, |accuracy - confidence| by share.

    Raises:
        ValueError: arrays that are not 1-D of one non-zero length, or ``bins`` < 1.
    """
    top, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if top.ndim != 1 or correct.shape != top.shape or not len(top) or bins < 1:
        raise ValueError(f"expected N confidences and N flags (N >= 1), got {top.shape} and {correct.shape}")
    # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.ceil(top * bins).astype(np.int64) - 1, 0, bins - 1)
    error = 0.0
    for b in np.unique(which):
        inside = which == b
        error += inside.mean() * abs(correct[inside].mean() - top[inside].mean())
    return float(error)
