"""The device's privacy policy on its own: which signed lineages it refuses, and how its keys load."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdk.backoff import Backoff
from sdk.edge.privacy_policy import PrivacyPolicy
from sdk.edge.update_machine import HealthRules, Release, State, UpdateMachine
from sdk.edge.updater import UpdateConfig
from sdk.errors import ConfigError, PolicyRefused, ReleaseUnusable

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PRIVATE = {"privacy": "central-dp", "epsilon": 0.5, "delta": 1e-5, "clients": 10}
UPDATE = '[update]\nmodel = "digits"\ndevice_id = "pi-1"\nrepository_url = "http://repo/tuf"\n'


def test_no_limits_take_every_lineage():
    assert PrivacyPolicy().refusal({}) is None
    assert PrivacyPolicy().refusal({"privacy": "none", "epsilon": None}) is None


def test_epsilon_over_the_limit_is_refused_with_both_figures():
    why = PrivacyPolicy(max_epsilon=1.0).refusal({**PRIVATE, "epsilon": 3.0})
    assert why == "spent epsilon 3 at delta 1e-05, over this device's max_epsilon 1"
    assert PrivacyPolicy(max_epsilon=1.0).refusal({**PRIVATE, "epsilon": 1.0}) is None  # the limit itself is allowed


@pytest.mark.parametrize(
    "lineage",
    [
        pytest.param({}, id="no-lineage"),
        pytest.param({"privacy": "none", "epsilon": None}, id="trained-without-privacy"),
        pytest.param({"privacy": "none", "epsilon": 0.1}, id="says-none-whatever-the-epsilon"),
    ],
)
def test_a_release_not_trained_privately_is_refused_when_epsilon_is_bounded(lineage):
    why = PrivacyPolicy(max_epsilon=8.0).refusal(lineage)
    assert why is not None
    assert "not trained with differential privacy" in why


@pytest.mark.parametrize("epsilon", ["0.5", True, -0.1, math.nan, math.inf, [0.5]])
def test_an_unusable_epsilon_is_refused(epsilon):
    why = PrivacyPolicy(max_epsilon=8.0).refusal({**PRIVATE, "epsilon": epsilon})
    assert why is not None
    assert "unusable epsilon" in why


@given(epsilon=st.floats(0, 1e6), limit=st.floats(1e-6, 1e6))
def test_epsilon_is_refused_exactly_when_it_is_over_the_limit(epsilon, limit):
    refused = PrivacyPolicy(max_epsilon=limit).refusal({**PRIVATE, "epsilon": epsilon}) is not None
    assert refused == (epsilon > limit)


@pytest.mark.parametrize(
    ("clients", "refused"),
    [(10, False), (25, False), (9, True), (0, True), (None, True), ("10", True), (True, True), (10.0, True)],
)
def test_min_clients(clients, refused):
    lineage = {**PRIVATE, "clients": clients}
    if clients is None:
        del lineage["clients"]
    why = PrivacyPolicy(min_clients=10).refusal(lineage)
    assert (why is not None) == refused, why


def test_both_limits_apply():
    policy = PrivacyPolicy(max_epsilon=1.0, min_clients=10)
    assert policy.refusal(PRIVATE) is None
    assert "min_clients 10" in policy.refusal({**PRIVATE, "clients": 3})
    assert "max_epsilon 1" in policy.refusal({**PRIVATE, "epsilon": 2.0, "clients": 3})


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("max_epsilon = -1.0", "update.max_epsilon"),
        ("max_epsilon = 0", "update.max_epsilon"),
        ("max_epsilon = nan", "update.max_epsilon"),
        ("max_epsilon = inf", "update.max_epsilon"),
        ('max_epsilon = "1.0"', "update.max_epsilon"),
        ("min_clients = 0", "update.min_clients"),
        ("min_clients = 2.5", "update.min_clients"),
        ("max_epsilion = 1.0", "update.max_epsilion"),
    ],
)
def test_a_bad_policy_value_in_the_file_is_a_config_error_naming_the_key(tmp_path, line, key):
    path = tmp_path / "fedge.toml"
    path.write_text(UPDATE + line + "\n")
    with pytest.raises(ConfigError) as caught:
        UpdateConfig.load(path, env={})
    assert caught.value.key == key


def test_the_policy_loads_from_the_file_and_the_environment(tmp_path):
    path = tmp_path / "fedge.toml"
    path.write_text(UPDATE + "max_epsilon = 2\nmin_clients = 5\n")
    assert UpdateConfig.load(path, env={}).terms() == {"max_epsilon": 2.0, "min_clients": 5}
    env = {"FEDGE_UPDATE__MAX_EPSILON": "0.75", "FEDGE_UPDATE__MIN_CLIENTS": "none"}
    assert UpdateConfig.load(path, env=env).terms() == {"max_epsilon": 0.75, "min_clients": None}
    with pytest.raises(ConfigError) as caught:
        UpdateConfig.load(path, env={"FEDGE_UPDATE__MAX_EPSILON": "lots"})
    assert caught.value.key == "update.max_epsilon"
    (tmp_path / "plain.toml").write_text(UPDATE)
    assert UpdateConfig.load(tmp_path / "plain.toml", env={}).terms() == {"max_epsilon": None, "min_clients": None}


def test_a_policy_refusal_is_a_remembered_rejection_that_is_not_a_failed_check():
    machine = UpdateMachine(
        backoff=Backoff(base_s=5.0, max_s=900.0, interval_s=900.0), health=HealthRules(), failures=2, draw=lambda: 0.0
    )
    machine.advance(State.CHECKING)
    machine.chosen(Release(version=2, channel="stable", rollout=100, state="active", targets=("onnx-int8",)))
    verdict = machine.failed(PolicyRefused("digits v2 spent epsilon 3"))
    assert isinstance(PolicyRefused("x"), ReleaseUnusable)
    assert (verdict.outcome, verdict.version, verdict.remember, verdict.by_policy) == ("rejected", 2, True, True)
    assert verdict.failures == 0  # the repository did its job: no backoff, the next check is at the interval
    assert verdict.detail.startswith("PolicyRefused: ")
    assert machine.state is State.IDLE
    other = UpdateMachine(backoff=machine.backoff, health=HealthRules(), failures=0, draw=lambda: 0.0)
    other.advance(State.CHECKING)
    other.chosen(Release(version=3, channel="stable", rollout=100, state="active", targets=("onnx-int8",)))
    assert other.failed(ReleaseUnusable("no manifest")).by_policy is False


@pytest.mark.parametrize("example", ["raspberrypi", "jetson"])
def test_the_examples_ship_the_policy_commented_out_and_it_loads_when_uncommented(tmp_path, example):
    text = (EXAMPLES / example / "fedge.toml").read_text()
    assert UpdateConfig.load(EXAMPLES / example / "fedge.toml", env={}).terms() == {
        "max_epsilon": None,
        "min_clients": None,
    }
    uncommented = re.sub(r"^# ((max_epsilon|min_clients) = )", r"\1", text, flags=re.MULTILINE)
    assert uncommented != text
    (tmp_path / "fedge.toml").write_text(uncommented)
    assert UpdateConfig.load(tmp_path / "fedge.toml", env={}).terms() == {"max_epsilon": 1.0, "min_clients": 10}
