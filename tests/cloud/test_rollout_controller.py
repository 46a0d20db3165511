"""The rollout decision without I/O, and the release policy it follows: every branch, on a fake clock."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sdk.cloud.rollout_controller import DeviceEvidence, Evidence, Served, decide
from sdk.cloud.rollout_policy import RolloutPolicies, RolloutPolicy
from sdk.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rollout-policy.toml"
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
POLICY = RolloutPolicy(
    stages=(10, 50, 100),
    soak_s=(60.0, 120.0, 300.0),
    min_devices=(2, 3, 3),
    min_calls=100,
    max_install_failure_rate=0.2,
    max_error_rate=0.02,
    max_fallback_rate_increase=0.05,
    max_confidence_drop=0.05,
)


def served(calls: int = 200, *, errors: int = 0, fallbacks: int = 0, confidence: float = 0.9) -> Served:
    return Served(
        calls=calls,
        errors=errors,
        rows=calls,
        fallbacks=fallbacks,
        confident_rows=calls,
        confidence_sum=confidence * calls,
    )


def fleet(
    n: int, new: Served | None = None, previous: Served | None = None, failures: tuple[str, ...] = ()
) -> Evidence:
    devices = tuple(
        DeviceEvidence(device_id=f"pi-{i}", new=new or served(), previous=previous or served()) for i in range(n)
    )
    return Evidence(devices=devices, install_failures=failures)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_a_soaked_healthy_stage_advances_to_the_next_percent():
    decision = decide(POLICY, 0, T0, at(61), fleet(2))

    assert (decision.action, decision.stage, decision.percent) == ("advance", 1, 50)
    assert "widening to 50 %" in decision.reason
    assert [c.measured for c in decision.checks] == [0.0, 0.0, 0.0, pytest.approx(0.0)]
    assert not any(c.breached for c in decision.checks)


def test_the_last_stage_completes():
    decision = decide(POLICY, 2, T0, at(300), fleet(3))

    assert (decision.action, decision.stage, decision.percent) == ("complete", 2, 100)
    assert decision.reason.startswith("complete at 100 %")


def test_a_stage_holds_until_it_has_soaked():
    decision = decide(POLICY, 1, T0, at(119.5), fleet(5))

    assert (decision.action, decision.stage, decision.percent) == ("hold", 1, 50)
    assert decision.missing == ("soak: 119.5 s of 120 s",)


def test_a_stage_holds_until_enough_devices_have_enough_calls():
    evidence = Evidence(
        devices=(
            DeviceEvidence(device_id="pi-a", new=served(100)),
            DeviceEvidence(device_id="pi-b", new=served(99, errors=99)),  # not judged yet: too few calls
        )
    )

    decision = decide(POLICY, 0, T0, at(3600), evidence)

    assert decision.action == "hold"
    assert decision.missing == ("devices: 1 of 2 with >= 100 calls on the new version",)
    assert all(not c.enforced for c in decision.checks[1:])  # one judged device of two: no verdict yet


@pytest.mark.parametrize(
    ("evidence", "threshold", "measured"),
    [
        pytest.param(fleet(2, new=served(200, errors=10)), "max_error_rate", 0.05, id="error-rate"),
        pytest.param(
            fleet(2, new=served(fallbacks=40), previous=served(fallbacks=10)),
            "max_fallback_rate_increase",
            0.15,
            id="fallback-increase",
        ),
        pytest.param(
            fleet(2, new=served(confidence=0.6), previous=served(confidence=0.9)),
            "max_confidence_drop",
            0.3,
            id="confidence-drop",
        ),
        pytest.param(fleet(2, failures=("pi-x", "pi-y")), "max_install_failure_rate", 0.5, id="install-failures"),
    ],
)
def test_a_breached_threshold_aborts_before_the_soak_ends_naming_it_and_the_value(evidence, threshold, measured):
    decision = decide(POLICY, 0, T0, at(1), evidence)

    assert decision.action == "abort"
    assert (decision.stage, decision.percent) == (0, 10)
    assert decision.reason.startswith(f"{threshold}: {measured:.4g} > ")
    (breached,) = [c for c in decision.checks if c.breached]
    assert breached.threshold == threshold
    assert breached.measured == pytest.approx(measured)


def test_comparisons_use_only_devices_that_reported_both_versions():
    devices = (
        DeviceEvidence(device_id="pi-old", new=served(confidence=0.88), previous=served(confidence=0.9)),
        DeviceEvidence(device_id="pi-new", new=served(confidence=0.1)),  # no previous version: not compared
    )

    decision = decide(POLICY, 0, T0, at(61), Evidence(devices=devices))

    confidence = decision.checks[3]
    assert (confidence.devices, confidence.measured) == (1, pytest.approx(0.02))
    assert decision.action == "advance"


def test_a_breach_on_too_few_devices_holds_instead_of_aborting():
    decision = decide(POLICY, 0, T0, at(61), fleet(1, new=served(errors=100)))

    assert decision.action == "hold"
    assert decision.checks[1].measured == 0.5
    assert not decision.checks[1].breached


def test_a_stage_outside_the_policy_is_misuse():
    with pytest.raises(ValueError, match="stage 3"):
        decide(POLICY, 3, T0, at(0), fleet(3))


def test_the_decision_is_json_ready():
    data = decide(POLICY, 0, T0, at(1), fleet(2, new=served(errors=50))).as_dict()

    assert data["action"] == "abort"
    assert data["checks"][1] == {
        "threshold": "max_error_rate",
        "limit": 0.02,
        "measured": 0.25,
        "devices": 2,
        "enforced": True,
        "breached": True,
    }


def _policies(tmp_path: Path, text: str) -> RolloutPolicies:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return RolloutPolicies.load(path)


def test_a_model_section_overrides_the_default(tmp_path):
    policies = _policies(
        tmp_path,
        "[default]\nstages = [5, 100]\nsoak_s = 30\nmin_devices = [1, 4]\n"
        "[models.digits]\nsoak_s = [10, 20]\nmax_error_rate = 0.1\n",
    )

    digits, other = policies.for_model("digits"), policies.for_model("letters")
    assert (digits.stages, digits.soak_for(1), digits.min_devices_for(1), digits.max_error_rate) == (
        (5, 100),
        20,
        4,
        0.1,
    )
    assert (other.soak_for(0), other.soak_for(1), other.max_error_rate) == (30.0, 30.0, 0.02)


def test_the_shipped_example_loads():
    policies = RolloutPolicies.load(EXAMPLE)
    assert policies.default.stages[-1] == 100
    assert policies.models


@pytest.mark.parametrize(
    ("text", "key", "match"),
    [
        pytest.param("[default]\nstage = [5, 100]\n", "default.stage", "unknown key", id="unknown-key"),
        pytest.param("[default]\nstages = [50, 25, 100]\n", "default.stages", "must increase", id="decreasing"),
        pytest.param("[default]\nstages = [5, 25]\n", "default.stages", "last stage must be 100", id="no-100"),
        pytest.param("[default]\nstages = [0, 100]\n", "default.stages", "1..100", id="zero"),
        pytest.param("[default]\nsoak_s = [1, 2]\n", "default.soak_s", "2 values for 3 stages", id="soak-count"),
        pytest.param("[default]\nsoak_s = -1\n", "default.soak_s", ">= 0", id="soak-negative"),
        pytest.param("[default]\nmin_devices = 0\n", "default.min_devices", ">= 1", id="min-devices"),
        pytest.param("[default]\nmax_error_rate = 2\n", "default.max_error_rate", "0..1", id="rate-range"),
        pytest.param("[default]\nmax_error_rate = 'low'\n", "default.max_error_rate", "expected float", id="type"),
        pytest.param("[default]\ntargets = ['onnx']\n", "default.targets", "unknown kind", id="target"),
        pytest.param("[models.digits]\nmin_calls = 0\n", "models.digits.min_calls", "1..1e9", id="model-key"),
        pytest.param("[models]\ndigits = 3\n", "models.digits", "expected a table", id="model-not-table"),
        pytest.param("[defaults]\nsoak_s = 1\n", "defaults", "unknown table", id="unknown-table"),
        pytest.param("[default\n", "policy.toml", "not valid TOML", id="not-toml"),
    ],
)
def test_a_bad_policy_file_names_the_key(tmp_path, text, key, match):
    with pytest.raises(ConfigError, match=match) as info:
        _policies(tmp_path, text)
    assert info.value.key.endswith(key)


def test_a_missing_policy_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        RolloutPolicies.load(tmp_path / "nope.toml")
