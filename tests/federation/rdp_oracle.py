"""Test oracle for federation/accountant.py: Rényi DP of the sampled Gaussian mechanism, written from the papers.

Fedge's accountant is Flower's (``flwr.supercore.privacy_accounting``, dp-accounting
underneath); this independent implementation, Fedge's former accountant, is kept only to
check it (tests/federation/test_accountant.py).

Each round samples a fraction ``q`` of the clients and adds Gaussian noise of
``noise_multiplier`` times the clipping norm to the sum of their clipped updates:
the sampled Gaussian mechanism at the level of a client (user-level DP). Its Rényi
divergence at integer order ``a`` is (Mironov, Talwar and Zhang, 2019, section 3.3)

    A_a = sum_k C(a, k) (1 - q)^(a - k) q^k exp((k^2 - k) / (2 sigma^2)),   RDP(a) = log(A_a) / (a - 1),

rounds compose by adding RDP, and (epsilon, delta) follows from the conversion of
Balle et al. (2020, theorem 21), minimised over the orders. Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sdk.errors import PrivacyBudgetExhausted

__all__ = ["ORDERS", "PrivacyAccountant", "epsilon_from_rdp", "rdp_sampled_gaussian"]

#: Integer Rényi orders; integer orders keep the series exact and finite.
ORDERS: tuple[int, ...] = (*range(2, 33), 40, 48, 56, 64, 96, 128, 192, 256)


def rdp_sampled_gaussian(sample_rate: float, noise_multiplier: float, orders: tuple[int, ...] = ORDERS) -> np.ndarray:
    """RDP of one round of the sampled Gaussian mechanism at each order."""
    if not 0.0 <= sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be within [0, 1], got {sample_rate}")
    if noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if sample_rate == 0.0:
        return np.zeros(len(orders))
    sigma2 = noise_multiplier**2
    if sample_rate == 1.0:
        return np.array([a / (2 * sigma2) for a in orders])
    out = []
    log_q, log_1q = math.log(sample_rate), math.log1p(-sample_rate)
    for a in orders:
        k = np.arange(a + 1)
        log_binom = np.array([math.lgamma(a + 1) - math.lgamma(i + 1) - math.lgamma(a - i + 1) for i in k])
        terms = log_binom + (a - k) * log_1q + k * log_q + (k * k - k) / (2 * sigma2)
        peak = terms.max()
        out.append((peak + math.log(np.exp(terms - peak).sum())) / (a - 1))
    return np.array(out)


def epsilon_from_rdp(rdp: np.ndarray, delta: float, orders: tuple[int, ...] = ORDERS) -> tuple[float, int]:
    """The smallest epsilon at ``delta`` over the orders, and the order that gave it."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be within (0, 1), got {delta}")
    a = np.asarray(orders, dtype=float)
    eps = rdp + np.log1p(-1.0 / a) - (math.log(delta) + np.log(a)) / (a - 1)
    best = int(np.argmin(eps))
    return max(0.0, float(eps[best])), int(orders[best])


@dataclass
class PrivacyAccountant:
    """Adds up the privacy spent round by round and refuses a round that would overspend the budget."""

    delta: float
    epsilon_budget: float | None = None
    orders: tuple[int, ...] = ORDERS
    rounds: int = 0
    _rdp: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be within (0, 1), got {self.delta}")
        if self.epsilon_budget is not None and self.epsilon_budget <= 0:
            raise ValueError(f"epsilon_budget must be > 0, got {self.epsilon_budget}")
        self._rdp = np.zeros(len(self.orders))

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far, at ``delta``."""
        if self.rounds == 0:
            return 0.0
        return epsilon_from_rdp(self._rdp, self.delta, self.orders)[0]

    def epsilon_after(self, sample_rate: float, noise_multiplier: float, rounds: int = 1) -> float:
        """Epsilon that ``rounds`` more rounds would bring the total to (nothing is recorded)."""
        step = rdp_sampled_gaussian(sample_rate, noise_multiplier, self.orders)
        return epsilon_from_rdp(self._rdp + rounds * step, self.delta, self.orders)[0]

    def spend(self, sample_rate: float, noise_multiplier: float) -> float:
        """Record one round and return the epsilon spent so far.

        Raises:
            PrivacyBudgetExhausted: the round would take epsilon over the budget; it is not recorded.
        """
        after = self.epsilon_after(sample_rate, noise_multiplier)
        if self.epsilon_budget is not None and after > self.epsilon_budget:
            raise PrivacyBudgetExhausted(
                f"round {self.rounds + 1} would spend epsilon {after:.3f} > budget {self.epsilon_budget:.3f} "
                f"(delta {self.delta:g}); {self.rounds} rounds ran, epsilon spent {self.epsilon:.3f}"
            )
        self._rdp = self._rdp + rdp_sampled_gaussian(sample_rate, noise_multiplier, self.orders)
        self.rounds += 1
        return after
