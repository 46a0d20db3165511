import math

import numpy as np
import pytest

from federation.accountant import PrivacyAccountant, epsilon_from_rdp, rdp_sampled_gaussian
from sdk.errors import PrivacyBudgetExhausted


def rdp_by_quadrature(q: float, sigma: float, order: int) -> float:
    """The Rényi divergence of the mixture from its definition, by numerical integration."""
    x = np.linspace(-40 * sigma, 40 * sigma + 1, 400_001)
    log_mu0 = -(x**2) / (2 * sigma**2) - math.log(sigma * math.sqrt(2 * math.pi))
    ratio = (1 - q) + q * np.exp((2 * x - 1) / (2 * sigma**2))  # mixture / mu0, without dividing tiny numbers
    integrand = np.exp(log_mu0 + order * np.log(ratio))
    return math.log(np.trapezoid(integrand, x)) / (order - 1)


@pytest.mark.parametrize(("q", "sigma", "order"), [(0.1, 1.0, 2), (0.3, 1.5, 8), (0.5, 2.0, 16), (0.05, 0.8, 4)])
def test_closed_form_matches_the_definition(q, sigma, order):
    (closed,) = rdp_sampled_gaussian(q, sigma, (order,))
    assert closed == pytest.approx(rdp_by_quadrature(q, sigma, order), rel=1e-6)


def test_full_participation_is_the_gaussian_mechanism():
    np.testing.assert_allclose(rdp_sampled_gaussian(1.0, 2.0, (2, 10)), [2 / 8, 10 / 8])


def test_epsilon_grows_with_rounds_and_sampling_and_shrinks_with_noise():
    acc = PrivacyAccountant(delta=1e-5)
    assert acc.epsilon == 0.0
    e1 = acc.spend(0.5, 1.0)
    e2 = acc.spend(0.5, 1.0)
    assert 0 < e1 < e2
    assert acc.epsilon_after(0.5, 2.0) < acc.epsilon_after(0.5, 1.0)
    assert acc.epsilon_after(0.2, 1.0) < acc.epsilon_after(0.5, 1.0)


def test_conversion_beats_the_classic_gaussian_bound():
    # One Gaussian mechanism with sigma 4: the classic analysis gives sqrt(2 ln(1.25/delta)) / 4 = 1.21.
    eps, _ = epsilon_from_rdp(rdp_sampled_gaussian(1.0, 4.0), 1e-5)
    assert 0.8 < eps < math.sqrt(2 * math.log(1.25e5)) / 4


def test_budget_stops_the_round_that_would_overspend():
    acc = PrivacyAccountant(delta=1e-5, epsilon_budget=3.0)
    spent = []
    while acc.epsilon_after(1.0, 1.5) <= 3.0:
        spent.append(acc.spend(1.0, 1.5))
    with pytest.raises(PrivacyBudgetExhausted, match=r"budget 3\.000"):
        acc.spend(1.0, 1.5)
    assert acc.rounds == len(spent) > 0
    assert acc.epsilon <= 3.0
    assert acc.epsilon_after(1.0, 1.5) > 3.0


@pytest.mark.parametrize("kwargs", [{"delta": 0.0}, {"delta": 1e-5, "epsilon_budget": -1.0}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError, match="must be"):
        PrivacyAccountant(**kwargs)
