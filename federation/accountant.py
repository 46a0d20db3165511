"""The privacy accountant of a DP run: Flower's RDP accountant for the epsilon spent, and the run's budget.

The mechanism: every round that samples clients clips each sampled client's update to
``clipping-norm`` and adds Gaussian noise of ``noise-multiplier`` times that norm to their
sum (client-level DP, add-or-remove-one neighbours, sensitivity one clipping norm). Each such
round is one ``GaussianPrivacyEvent`` composed in ``flwr.supercore.privacy_accounting``'s
``RdpAccountant`` (Google's ``dp-accounting`` underneath, the ``flwr[dp]`` extra).

Sampling: Flower's strategies sample a fixed number of clients without replacement, which
is not Poisson sampling, and the library's without-replacement model counts a client
replaced (twice our sensitivity). So, as Flower's own fixed-clipping wrapper does, rounds are
accounted with no amplification by sampling: exact when every client takes part
(``clients-per-round`` = ``num-clients``, as in the shipped configs), an upper bound otherwise.
``tests/federation/rdp_oracle.py`` (our former accountant) checks these figures.
"""

from __future__ import annotations

from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from sdk.errors import PrivacyBudgetExhausted

__all__ = ["RoundAccountant"]


class RoundAccountant:
    """Epsilon spent by a run's rounds, and the refusal of a round that would take it over the budget."""

    def __init__(
        self,
        *,
        delta: float,
        noise_multiplier: float,
        sample_size: int,
        population: int,
        epsilon_budget: float | None = None,
    ) -> None:
        """Account rounds that each sample ``sample_size`` of ``population`` clients (``epsilon_budget`` None: none)."""
        if epsilon_budget is not None and epsilon_budget <= 0:
            raise ValueError(f"epsilon_budget must be > 0, got {epsilon_budget}")
        self.delta = delta
        self.epsilon_budget = epsilon_budget
        self._config = PrivacyConfig(
            target_delta=delta,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
        self._event = GaussianPrivacyEvent(
            noise_multiplier=noise_multiplier, sample_size=sample_size, population_size=population
        )
        self._rdp = RdpAccountant(self._config)

    @property
    def rounds(self) -> int:
        """Rounds accounted so far."""
        return self._rdp.num_releases

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far, at ``delta``."""
        return self._rdp.get_epsilon(self.delta) if self.rounds else 0.0

    def epsilon_after(self, rounds: int = 1) -> float:
        """Epsilon that ``rounds`` more rounds would bring the total to (nothing is recorded)."""
        projected = RdpAccountant(self._config)
        projected.load_state_dict(self._rdp.state_dict())
        projected.compose(self._event, rounds)
        return projected.get_epsilon(self.delta)

    def refusal(self) -> str | None:
        """Why the next round would overspend the budget, or None when it fits (or there is no budget)."""
        if self.epsilon_budget is None:
            return None
        after = self.epsilon_after()
        if after <= self.epsilon_budget:
            return None
        return (
            f"privacy budget exhausted: round {self.rounds + 1} would spend epsilon {after:.3f} > "
            f"{self.epsilon_budget:g} (delta {self.delta:g}); "
            f"stopping after {self.rounds} rounds at epsilon {self.epsilon:.3f}"
        )

    def spend(self) -> float:
        """Record one round and return the epsilon spent so far.

        Raises:
            PrivacyBudgetExhausted: the round would take epsilon over the budget; it is not recorded.
        """
        reason = self.refusal()
        if reason is not None:
            raise PrivacyBudgetExhausted(reason)
        self._rdp.compose(self._event)
        return self.epsilon
