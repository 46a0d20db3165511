import math

import numpy as np
import pytest

from sdk.errors import PrivacyBudgetExhausted
from tests.federation.rdp_oracle import ORDERS, PrivacyAccountant, epsilon_from_rdp, rdp_sampled_gaussian


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


# Fedge's accountant is Flower's (federation/accountant.py); the oracle above checks it.


def flower_rdp(sampling, population: int, orders=None):
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    config = PrivacyConfig(1e-5, population, NeighboringRelation.ADD_OR_REMOVE_ONE, sampling)
    return RdpAccountant(config, orders=orders)


@pytest.mark.parametrize(
    ("sampled", "population", "sigma"), [(3, 10, 0.8), (6, 10, 1.0), (10, 10, 2.0), (5, 5, 0.5), (5, 5, 0.05)]
)
def test_flower_and_the_oracle_agree_on_the_same_mechanism_and_orders(sampled, population, sigma):
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent, SamplingMethod

    flower = flower_rdp(SamplingMethod.POISSON, population, orders=tuple(float(a) for a in ORDERS))
    flower.compose(GaussianPrivacyEvent(sigma, sampled, population), 5)
    oracle = PrivacyAccountant(delta=1e-5)
    for _ in range(5):
        oracle.spend(sampled / population, sigma)
    assert flower.get_epsilon(1e-5) == pytest.approx(oracle.epsilon, rel=1e-9)


@pytest.mark.parametrize(
    ("clients", "sigma", "rounds"),
    [
        pytest.param(5, 0.5, 5, id="fedge-federate-defaults"),
        pytest.param(3, 1.0, 2, id="budget-test"),
        pytest.param(10, 1.0, 10, id="ten-clients"),
        pytest.param(5, 2.0, 10, id="strong-noise"),
    ],
)
def test_the_run_accountant_agrees_with_the_oracle_on_the_settings_we_use(clients, sigma, rounds):
    from federation.settings import FederationSettings

    settings = FederationSettings(privacy="dp", num_clients=clients, clients_per_round=clients, noise_multiplier=sigma)
    accountant = settings.privacy_mode.accountant(settings)
    oracle = PrivacyAccountant(delta=settings.delta)
    for _ in range(rounds):
        accountant.spend()
        oracle.spend(settings.sample_rate, sigma)
    # Flower's orders are finer than the oracle's integers, so its epsilon may only be lower, and only a little.
    assert oracle.epsilon * 0.95 <= accountant.epsilon <= oracle.epsilon * (1 + 1e-9)
    assert accountant.rounds == rounds


@pytest.mark.parametrize(("sigma", "rounds"), [pytest.param(0.05, 8, id="secagg-dp-test"), (0.01, 5)])
def test_with_almost_no_noise_both_say_there_is_no_meaningful_privacy(sigma, rounds):
    # Below sigma 0.5 the best orders lie under 2, which only Flower's orders reach: its figure is lower, still vacuous.
    from federation.accountant import RoundAccountant

    accountant = RoundAccountant(delta=1e-5, noise_multiplier=sigma, sample_size=5, population=5)
    oracle = PrivacyAccountant(delta=1e-5)
    for _ in range(rounds):
        accountant.spend(), oracle.spend(1.0, sigma)
    assert 100 < accountant.epsilon <= oracle.epsilon


def test_partial_participation_claims_no_amplification():
    # A fixed number of clients sampled without replacement is not Poisson sampling: no amplification is claimed.
    from federation.accountant import RoundAccountant

    accountant = RoundAccountant(delta=1e-5, noise_multiplier=1.0, sample_size=3, population=10)
    full = RoundAccountant(delta=1e-5, noise_multiplier=1.0, sample_size=10, population=10)
    poisson = PrivacyAccountant(delta=1e-5)
    for _ in range(4):
        accountant.spend(), full.spend(), poisson.spend(0.3, 1.0)
    assert accountant.epsilon == pytest.approx(full.epsilon)
    assert accountant.epsilon > poisson.epsilon


def test_the_run_accountant_refuses_the_round_that_would_overspend():
    from federation.accountant import RoundAccountant

    accountant = RoundAccountant(delta=1e-5, noise_multiplier=1.5, sample_size=5, population=5, epsilon_budget=3.0)
    spent = []
    while accountant.refusal() is None:
        spent.append(accountant.spend())
    before = accountant.epsilon
    assert accountant.epsilon_after() > 3.0
    assert accountant.epsilon == before  # looking ahead records nothing
    with pytest.raises(PrivacyBudgetExhausted, match=rf"round {len(spent) + 1} would spend epsilon"):
        accountant.spend()
    assert accountant.rounds == len(spent) > 0
    assert spent == sorted(spent)
    assert accountant.epsilon <= 3.0
    assert "stopping after" in accountant.refusal()


def test_without_a_budget_nothing_is_refused():
    from federation.accountant import RoundAccountant

    accountant = RoundAccountant(delta=1e-5, noise_multiplier=0.1, sample_size=2, population=2)
    assert accountant.epsilon == 0.0
    for _ in range(20):
        accountant.spend()
    assert accountant.refusal() is None
    assert accountant.epsilon > 100
