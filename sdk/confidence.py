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


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top class: equal-width bins, each |accuracy - confidence| by its share."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or not len(labels):
        raise ValueError(
            f"expected (N, classes) probabilities and N labels, got {probabilities.shape} and {labels.shape}"
        )
    top = probabilities.max(axis=1).astype(np.float64)
    correct = probabilities.argmax(axis=1) == labels
    # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.ceil(top * bins).astype(np.int64) - 1, 0, bins - 1)
    error = 0.0
    for b in np.unique(which):
        inside = which == b
        error += inside.mean() * abs(correct[inside].mean() - top[inside].mean())
    return float(error)
