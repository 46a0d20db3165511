"""Temperature scaling: one scalar T per artifact so that ``softmax(logits / T)`` is calibrated.

T is fitted on the validation split by minimising the negative log-likelihood over log T
(Guo et al., 2017, "On Calibration of Modern Neural Networks"); T > 1 softens an overconfident model,
T < 1 sharpens an underconfident one. Arg-max, and so accuracy, is unchanged.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

__all__ = ["MAX_TEMPERATURE", "MIN_TEMPERATURE", "fit_temperature", "nll"]

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature within [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises the NLL of ``labels``.

    Raises:
        ValueError: logits that are not (N, classes) with N >= 1, or labels of another length.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) < 1 or labels.shape != (len(logits),):
        raise ValueError(f"expected (N, classes) logits and N labels, got {logits.shape} and {labels.shape}")
    found = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(found.x))
