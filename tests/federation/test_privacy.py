"""Each privacy mode owns its client mods, its server fit workflow, its strategy wrapper and its accountant."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.server.workflow import SecAggPlusWorkflow

from federation.accountant import RoundAccountant
from federation.privacy import MODES, finite_mod
from federation.runner import APP_DIR
from federation.settings import PRIVACY_MODES, FederationSettings
from federation.strategy import build_strategy
from sdk.config import tomllib
from sdk.errors import ConfigError

WIRING = {
    "none": ([], False, False),
    "secagg": ([secaggplus_mod, finite_mod], True, False),
    "dp": ([fixedclipping_mod], False, True),
    "secagg+dp": ([secaggplus_mod, fixedclipping_mod, finite_mod], True, True),
}


def test_the_run_config_accepts_exactly_the_modes():
    assert PRIVACY_MODES == tuple(MODES) == tuple(WIRING)
    with pytest.raises(ConfigError, match="must be one of none, secagg, dp, secagg\\+dp") as info:
        FederationSettings.from_run_config({"privacy": "sometimes"})
    assert info.value.key == "run-config.privacy"


@pytest.mark.parametrize("name", list(WIRING))
def test_each_mode_wires_its_mods_workflow_wrapper_and_accountant(name):
    mods, secure, private = WIRING[name]
    settings = FederationSettings(privacy=name, num_clients=4, clients_per_round=4, epsilon_budget=5.0)
    mode = settings.privacy_mode
    assert mode is MODES[name]
    assert mode.name == name
    assert (settings.secure_aggregation, settings.differential_privacy) == (secure, private)
    assert mode.client_mods() == mods  # outermost first: clipping inside masking, the finite check innermost

    workflow = mode.fit_workflow(settings)
    assert isinstance(workflow, SecAggPlusWorkflow) == secure
    if secure:
        assert workflow.num_shares == 4
        assert workflow.reconstruction_threshold == 3
        assert workflow.timeout == settings.round_timeout_s

    strategy = build_strategy(settings, [])
    if private:
        assert isinstance(strategy, DifferentialPrivacyClientSideFixedClipping)
        assert strategy.noise_multiplier == settings.noise_multiplier
        assert strategy.clipping_norm == settings.clipping_norm
        assert isinstance(strategy.strategy, FedAvg)
    else:
        assert isinstance(strategy, FedAvg)

    accountant = mode.accountant(settings)
    if private:
        assert isinstance(accountant, RoundAccountant)
        assert accountant.epsilon_budget == 5.0
        assert accountant.delta == settings.delta
    else:
        assert accountant is None


@pytest.mark.parametrize("name", ["secagg", "secagg+dp"])
def test_secure_aggregation_refuses_what_it_cannot_do(name):
    with pytest.raises(ConfigError, match="hides from the server") as info:
        FederationSettings.from_run_config({"privacy": name, "robust": "trimmed-mean"})
    assert info.value.key == "run-config.robust"
    with pytest.raises(ConfigError, match="at least 3 clients") as info:
        FederationSettings.from_run_config({"privacy": name, "num-clients": 2, "clients-per-round": 2})
    assert info.value.key == "run-config.clients-per-round"


def test_without_a_budget_the_accountant_refuses_nothing():
    settings = FederationSettings(privacy="dp")
    assert settings.privacy_mode.accountant(settings).epsilon_budget is None


def test_the_production_run_config_has_no_test_hooks():
    config = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert not [key for key in config if key.startswith("attack")]
    assert set(config) == set(FederationSettings().to_run_config())
    with pytest.raises(ConfigError, match="unknown key") as info:
        FederationSettings.from_run_config({"attack": "scale", "attack-partition": 0})
    assert info.value.key.startswith("run-config.attack")


def test_the_attack_app_adds_its_keys_to_the_production_config_and_nothing_else(tmp_path: Path):
    from tests.federation.attackers import KEYS, write_app

    app = write_app(tmp_path / "app")
    project = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert project["components"] == {"serverapp": "attackers:server", "clientapp": "attackers:client"}
    assert set(project["config"]) == set(FederationSettings().to_run_config()) | set(KEYS)
    assert (app / "attackers.py").is_file()
