"""Class probabilities from a model's outputs: what the device's fallback decision and the cloud's answers report."""

from __future__ import annotations

import numpy as np

__all__ = ["confidences"]


def confidences(outputs: np.ndarray, output_kind: str) -> np.ndarray:
    """Per-row class probabilities: a softmax of logits, or the outputs as they are."""
    if output_kind == "probabilities":
        return outputs
    shifted = outputs - outputs.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
