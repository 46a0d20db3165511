"""The validation gate: a round's global model becomes a candidate version only when it clears every floor.

The floors, measured on the run's held-out validation split:

- **chance**: the accuracy a model that has learnt nothing reaches by luck. Its answers
  are no better than always naming the split's most frequent class (at least
  ``1 / classes``), so its count of right answers on ``n`` samples is at most
  Binomial(n, p_chance); the floor is that distribution's ``1 - CHANCE_RISK`` quantile,
  so a chance-level model passes at most once in a thousand runs, whatever the config says.
  On digits (270 validation samples, 10 balanced classes) it is about 0.18.
- **min-accuracy**: an explicit floor from the run config, for a run without a release.
- **the release**: the current release's accuracy on the same split, less ``max-accuracy-drop``.

A model that clears them must also beat this run's previous candidate by more than
``gate-margin``, so that a run does not export every round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from sdk.errors import GateRefused

__all__ = ["CHANCE_RISK", "GateDecision", "ValidationGate", "chance_floor"]

#: How often a model that learnt nothing may pass the chance floor by luck.
CHANCE_RISK = 1e-3


def chance_floor(labels: np.ndarray, num_classes: int, risk: float = CHANCE_RISK) -> float:
    """The accuracy on ``labels`` that a model answering by chance exceeds with probability at most ``risk``."""
    n = len(labels)
    if n == 0:
        raise ValueError("the validation split is empty")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    p_chance = max(1.0 / num_classes, counts.max() / n)
    return float(binom.ppf(1.0 - risk, n, p_chance)) / n


@dataclass(frozen=True)
class GateDecision:
    """What the gate said about one round's model, and why."""

    round: int
    accuracy: float
    accepted: bool
    floor: float
    reason: str

    def raise_if_refused(self) -> None:
        """Raise GateRefused (with the reason) unless the model was accepted."""
        if not self.accepted:
            raise GateRefused(self.reason)

    def as_record(self) -> dict[str, object]:
        """The JSON the run's report keeps."""
        return {
            "round": self.round,
            "val_accuracy": round(self.accuracy, 5),
            "accepted": self.accepted,
            "floor": round(self.floor, 5),
            "reason": self.reason,
        }


@dataclass
class ValidationGate:
    """Decides which round's model becomes a candidate; decisions only, no I/O.

    ``chance`` comes from :func:`chance_floor` on the validation labels; ``release_accuracy``
    is the current release's accuracy on the same split (None: there is no release).
    """

    chance: float
    min_accuracy: float = 0.0
    release_accuracy: float | None = None
    max_drop: float = 0.0
    margin: float = 0.0
    best: GateDecision | None = None
    _before: GateDecision | None = None

    @property
    def floor(self) -> float:
        """The lowest accuracy a candidate may have (before this run's own candidates raise the bar)."""
        release = -1.0 if self.release_accuracy is None else self.release_accuracy - self.max_drop
        return max(self.chance, self.min_accuracy, release)

    def consider(self, server_round: int, accuracy: float) -> GateDecision:
        """Decide on the model of ``server_round``; an accepted one becomes the one to beat."""
        reason = self._refusal(accuracy)
        decision = GateDecision(server_round, accuracy, reason is None, self.floor, reason or "accepted")
        if decision.accepted:
            self._before, self.best = self.best, decision
        return decision

    def withdraw(self, decision: GateDecision) -> None:
        """Forget an accepted model that could not be kept: the candidate before it is again the one to beat."""
        if self.best is decision:
            self.best = self._before

    def _refusal(self, accuracy: float) -> str | None:
        if accuracy <= self.chance:
            return f"validation accuracy {accuracy:.4f} is at chance level (<= {self.chance:.4f})"
        if accuracy < self.min_accuracy:
            return f"validation accuracy {accuracy:.4f} is below min-accuracy {self.min_accuracy:.4f}"
        if self.release_accuracy is not None and accuracy < self.release_accuracy - self.max_drop:
            return (
                f"validation accuracy {accuracy:.4f} is below the release's {self.release_accuracy:.4f}"
                f" less max-accuracy-drop {self.max_drop:.4f}"
            )
        if self.best is not None and accuracy <= self.best.accuracy + self.margin:
            return (
                f"validation accuracy {accuracy:.4f} does not beat round {self.best.round}'s candidate"
                f" ({self.best.accuracy:.4f}) by more than gate-margin {self.margin:.4f}"
            )
        return None
