"""Calibrate the ``edge-first`` confidence threshold on labelled held-out data, with a guarantee.

Under ``edge-first`` a device keeps its own answer when the top-class confidence is at
least the threshold and asks the cloud (the cloud tier's model) otherwise. Given each held-out
sample's edge confidence and whether the edge and the cloud answered it correctly,
:func:`calibrate` finds the threshold with the least cloud traffic whose end-to-end
accuracy reaches a target with the given confidence: the one-sided **Clopper-Pearson**
(exact binomial) lower bound of the end-to-end accuracy at ``confidence_level`` must reach the
target. The bound treats the held-out rows as independent draws of the traffic to come; it
holds for the chosen threshold, not uniformly over all of them. Pure numpy, no I/O (the
edge installs no scipy: the binomial tail is summed here).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

__all__ = ["Calibration", "CurvePoint", "calibrate", "clopper_pearson_lower"]

_CURVE_STEPS = 21
# Accuracies are ratios of integers; this absorbs rounding so that e.g. 99/100 reaches 0.99.
_EPS = 1e-12


@dataclass(frozen=True)
class CurvePoint:
    """End-to-end accuracy, its lower bound and the cloud share at one threshold."""

    threshold: float
    accuracy: float
    fallback_rate: float
    accuracy_lower: float


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold, what it achieves on the validation data, and a thinned curve for display."""

    threshold: float
    accuracy: float
    accuracy_lower: float
    fallback_rate: float
    target_accuracy: float
    reached: bool
    edge_accuracy: float
    cloud_accuracy: float
    curve: tuple[CurvePoint, ...]


def clopper_pearson_lower(successes: int, n: int, confidence_level: float) -> float:
    """One-sided Clopper-Pearson lower bound of a success rate at ``confidence_level`` (e.g. 0.95).

    The p at which ``successes`` or more of ``n`` has probability ``1 - confidence_level``
    (0 when there are no successes); the Beta(1 - level; k, n - k + 1) quantile.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..{n}, got {successes}")
    _check_level(confidence_level)
    return _cp_lower(int(successes), n, 1.0 - confidence_level)


def calibrate(
    confidence: np.ndarray,
    edge_correct: np.ndarray,
    cloud_correct: np.ndarray,
    target_accuracy: float,
    *,
    confidence_level: float | None = 0.95,
) -> Calibration:
    """Choose the ``edge-first`` threshold with the smallest fallback rate that reaches ``target_accuracy``.

    Answers with ``confidence >= threshold`` stay on the edge; the rest go to the cloud. The
    accuracy compared with the target is the one-sided Clopper-Pearson lower bound at
    ``confidence_level``, or the point estimate when ``confidence_level`` is None. When no
    threshold reaches the target, the most accurate one (then the least fallback) is chosen
    and ``reached`` is False. The threshold returned lies midway between two neighbouring
    observed confidences, so it does not sit on a sample value; with no fallback needed it lies
    halfway below the least confident sample, so that a device still asks the cloud when less
    sure than anything seen (it is 0.0 only when a sample had confidence 0).
    A confidence of exactly 1.0 can never fall back, since thresholds are at most 1.

    Raises:
        ValueError: arrays that are not 1-D, of different or zero length, confidences
            outside [0, 1], correctness flags other than 0/1, or a target or
            confidence level out of range.
    """
    conf, edge, cloud = _validate(confidence, edge_correct, cloud_correct, target_accuracy, confidence_level)
    n = len(conf)
    order = np.argsort(conf, kind="stable")
    conf = conf[order]
    cum_edge = np.concatenate(([0], np.cumsum(edge[order], dtype=np.int64)))
    cum_cloud = np.concatenate(([0], np.cumsum(cloud[order], dtype=np.int64)))

    # Candidate k sends the k least confident samples to the cloud; only group starts are reachable by a threshold.
    starts = np.flatnonzero(conf[1:] != conf[:-1]) + 1
    always = [n] if conf[-1] < 1.0 else []
    k = np.concatenate(([0], starts, always)).astype(np.int64)
    lo = np.concatenate(([0.0], conf[starts - 1], conf[-1:] if always else []))
    hi = np.concatenate((conf[:1], conf[starts], [1.0] if always else []))
    thresholds = _midpoints(lo, hi, conf.dtype)

    correct = cum_cloud[k] + (cum_edge[-1] - cum_edge[k])
    accuracy = correct / n
    fallback = k / n
    if confidence_level is None:
        lower = accuracy
        ok = np.flatnonzero(accuracy >= target_accuracy - _EPS)
    else:
        # lower bound >= target  <=>  P(X >= correct | p = target) <= alpha, since that tail grows with p.
        alpha = 1.0 - confidence_level
        ok = np.flatnonzero((_binomial_tail(n, target_accuracy)[correct] <= alpha * (1 + 1e-9)) & (correct > 0))
        lower = _LazyBounds(correct, n, alpha)

    reached = ok.size > 0
    chosen = int(ok[0]) if reached else int(np.argmax(correct))

    def point(i: int) -> CurvePoint:
        return CurvePoint(
            threshold=float(thresholds[i]),
            accuracy=float(accuracy[i]),
            fallback_rate=float(fallback[i]),
            accuracy_lower=float(lower[i]),
        )

    steps = np.linspace(0.0, 1.0, _CURVE_STEPS)
    nearest = np.abs(fallback[None, :] - steps[:, None]).argmin(axis=1)
    shown = np.unique(np.concatenate((nearest, [chosen])))
    best = point(chosen)
    return Calibration(
        threshold=best.threshold,
        accuracy=best.accuracy,
        accuracy_lower=best.accuracy_lower,
        fallback_rate=best.fallback_rate,
        target_accuracy=float(target_accuracy),
        reached=reached,
        edge_accuracy=float(cum_edge[-1] / n),
        cloud_accuracy=float(cum_cloud[-1] / n),
        curve=tuple(point(int(i)) for i in shown),
    )


def _midpoints(lo: np.ndarray, hi: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Thresholds t with lo < t <= hi, both in float64 and in the confidences' own dtype."""
    lo = lo.astype(np.float64)
    hi = hi.astype(np.float64)
    mid = (lo + hi) / 2.0
    # Runtimes compare float32 confidences with the threshold in float32, where a midpoint may round down onto lo.
    ok = (mid > lo) & (mid.astype(dtype).astype(np.float64) > lo)
    return np.where(ok, mid, hi)


class _LazyBounds:
    """Clopper-Pearson bounds computed only where asked: the chosen point and the shown curve."""

    def __init__(self, successes: np.ndarray, n: int, alpha: float) -> None:
        self.successes, self.n, self.alpha = successes, n, alpha

    def __getitem__(self, i: int) -> float:
        return _cp_lower(int(self.successes[i]), self.n, self.alpha)


def _binomial_tail(n: int, p: float) -> np.ndarray:
    """P(X >= k) for X ~ Binomial(n, p), for every k in 0..n (and 0.0 at k = n + 1)."""
    if p >= 1.0:
        return np.concatenate((np.ones(n + 1), [0.0]))
    if p <= 0.0:
        return np.concatenate(([1.0], np.zeros(n + 1)))
    j = np.arange(n + 1)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1)))))
    log_pmf = log_fact[n] - log_fact[j] - log_fact[n - j] + j * np.log(p) + (n - j) * np.log1p(-p)
    tail = np.cumsum(np.exp(log_pmf)[::-1])[::-1]
    return np.concatenate((np.minimum(tail, 1.0), [0.0]))


def _cp_lower(successes: int, n: int, alpha: float) -> float:
    """The p in [0, successes / n] with P(X >= successes | p) = alpha, by bisection (the tail grows with p)."""
    if successes == 0:
        return 0.0
    if successes == n:
        return float(alpha ** (1.0 / n))  # closed form: p^n = alpha
    lo, hi = 0.0, successes / n
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if _binomial_tail(n, mid)[successes] < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def _check_level(confidence_level: float) -> None:
    if not (_is_real(confidence_level) and 0.0 < confidence_level < 1.0):
        raise ValueError(f"confidence_level must be within (0, 1), got {confidence_level!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _flags(name: str, values: np.ndarray) -> np.ndarray:
    if values.dtype == np.bool_:
        return values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.number) or not np.isin(values, (0, 1)).all():
        raise ValueError(f"{name} must hold booleans or 0/1 values")
    return values.astype(np.int64)


def _validate(
    confidence: np.ndarray,
    edge_correct: np.ndarray,
    cloud_correct: np.ndarray,
    target_accuracy: float,
    confidence_level: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = {"confidence": confidence, "edge_correct": edge_correct, "cloud_correct": cloud_correct}
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    for name, a in arrays.items():
        if a.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array, got shape {a.shape}")
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"the arrays must have the same length, got {lengths}")
    if lengths["confidence"] < 1:
        raise ValueError("calibration needs at least one sample")
    conf = arrays["confidence"]
    if not (np.issubdtype(conf.dtype, np.number) and not np.issubdtype(conf.dtype, np.complexfloating)):
        raise ValueError(f"confidence must be real numbers, got dtype {conf.dtype}")
    if not np.issubdtype(conf.dtype, np.floating):
        conf = conf.astype(np.float64)
    if not ((conf >= 0.0) & (conf <= 1.0)).all():
        raise ValueError("confidence values must be within [0, 1] (and not NaN)")
    if not (_is_real(target_accuracy) and 0.0 < target_accuracy <= 1.0):
        raise ValueError(f"target_accuracy must be within (0, 1], got {target_accuracy!r}")
    if confidence_level is not None:
        _check_level(confidence_level)
    return conf, _flags("edge_correct", arrays["edge_correct"]), _flags("cloud_correct", arrays["cloud_correct"])
