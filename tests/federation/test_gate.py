"""The validation gate's decisions: never chance level, an explicit floor without a release, the release with one."""

from __future__ import annotations

import numpy as np
import pytest

from federation.gate import CHANCE_RISK, ValidationGate, chance_floor
from federation.settings import FederationSettings
from sdk.errors import ConfigError, GateRefused

#: The digits validation split's size and its class counts (270 samples, 10 classes, nearly balanced).
DIGITS_VAL = np.repeat(np.arange(10), [27, 28, 25, 30, 25, 31, 26, 24, 25, 29])


def test_the_chance_floor_lets_a_guessing_model_through_at_most_at_its_stated_risk():
    floor = chance_floor(DIGITS_VAL, 10)
    assert 0.1 < floor < 0.25
    # 200,000 models that answer at random (the most frequent class's share, the best a guesser can expect)
    rng = np.random.default_rng(0)
    p_guess = 31 / 270
    accuracies = rng.binomial(len(DIGITS_VAL), p_guess, size=200_000) / len(DIGITS_VAL)
    passed = float(np.mean(accuracies > floor))
    assert passed <= CHANCE_RISK * 1.5, passed


def test_the_chance_floor_counts_a_split_dominated_by_one_class():
    labels = np.array([0] * 70 + [1] * 10 + [2] * 10 + [3] * 10)
    assert chance_floor(labels, 4) > 0.7  # always answering 0 scores 0.7 without learning anything


@pytest.mark.parametrize("min_accuracy", [0.0, 0.05, 0.1])
def test_a_chance_level_model_is_refused_whatever_min_accuracy_says(min_accuracy):
    gate = ValidationGate(chance=chance_floor(DIGITS_VAL, 10), min_accuracy=min_accuracy)
    decision = gate.consider(1, 0.10)
    assert not decision.accepted
    assert "chance level" in decision.reason
    assert decision.floor == pytest.approx(gate.chance)
    with pytest.raises(GateRefused, match="chance level"):
        decision.raise_if_refused()
    assert gate.best is None  # a refused model does not become the one to beat


def test_without_a_release_min_accuracy_is_the_floor():
    gate = ValidationGate(chance=chance_floor(DIGITS_VAL, 10), min_accuracy=0.8)
    refused = gate.consider(1, 0.79)
    assert not refused.accepted
    assert "min-accuracy 0.8000" in refused.reason
    accepted = gate.consider(2, 0.81)
    assert accepted.accepted
    assert accepted.reason == "accepted"
    accepted.raise_if_refused()  # nothing to raise
    assert accepted.as_record() == {
        "round": 2,
        "val_accuracy": 0.81,
        "accepted": True,
        "floor": 0.8,
        "reason": "accepted",
    }


def test_with_a_release_a_candidate_may_fall_below_it_only_by_the_allowed_drop():
    gate = ValidationGate(chance=chance_floor(DIGITS_VAL, 10), min_accuracy=0.5, release_accuracy=0.9, max_drop=0.02)
    assert gate.floor == pytest.approx(0.88)
    refused = gate.consider(1, 0.879)
    assert not refused.accepted
    assert "below the release's 0.9000" in refused.reason
    assert gate.consider(2, 0.885).accepted


def test_a_candidate_must_beat_this_runs_previous_candidate_by_the_margin():
    gate = ValidationGate(chance=chance_floor(DIGITS_VAL, 10), min_accuracy=0.5, margin=0.01)
    assert gate.consider(1, 0.90).accepted
    same = gate.consider(2, 0.905)
    assert not same.accepted
    assert "round 1's candidate" in same.reason
    kept = gate.consider(3, 0.92)
    assert kept.accepted
    lost = gate.consider(4, 0.95)
    gate.withdraw(lost)  # its export failed: round 3's model is again the one to beat
    assert gate.consider(5, 0.94).accepted
    assert gate.best is not None
    assert gate.best.round == 5


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"min-accuracy": 1.5}, "min-accuracy"),
        ({"min-accuracy": "high"}, "min-accuracy"),
        ({"max-accuracy-drop": -0.1}, "max-accuracy-drop"),
        ({"gate-margin": 2.0}, "gate-margin"),
        ({"registry-url": "ftp://registry", "versions-dir": "/tmp/v"}, "registry-url"),
        ({"registry-url": "http://127.0.0.1:8000"}, "registry-url"),  # nowhere to keep the versions
    ],
)
def test_a_bad_gate_or_registry_key_is_named(values, key):
    with pytest.raises(ConfigError) as info:
        FederationSettings.from_run_config(values)
    assert info.value.key.replace("_", "-").endswith(key)  # a type error names the field, a range error the key
