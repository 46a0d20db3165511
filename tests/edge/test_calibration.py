"""Threshold calibration: hand-checked choices, the Wilson bound, bad input, and ``fedge calibrate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from extras import needs

from sdk.edge.calibration import Calibration, calibrate, wilson_lower

# Ten samples; the two least confident are wrong on the edge and right in the cloud.
CONF = np.array([0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.9, 0.95], dtype=np.float32)
EDGE = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
CLOUD = np.ones(10, dtype=bool)

#: ``fedge calibrate`` reads the digits validation split through federation.task (torch, scikit-learn).
FEDGE_CALIBRATE = needs("torch", "sklearn")


def end_to_end(conf, edge, cloud, threshold):
    """The edge-first policy as the runtime applies it: below the threshold, the cloud answers."""
    low = conf < threshold
    return float(np.where(low, cloud, edge).mean()), float(low.mean())


def test_hand_checked_threshold_sends_exactly_the_wrong_ones_to_the_cloud():
    result = calibrate(CONF, EDGE, CLOUD, 1.0, confidence_level=None)

    assert result.reached
    assert result.fallback_rate == pytest.approx(0.2)
    assert result.accuracy == 1.0
    assert 0.25 < result.threshold < 0.35
    assert result.threshold == pytest.approx(0.30, abs=1e-6)  # midway, not on a sample value
    assert end_to_end(CONF, EDGE, CLOUD, result.threshold) == (1.0, pytest.approx(0.2))
    assert result.edge_accuracy == pytest.approx(0.8)
    assert result.cloud_accuracy == 1.0


def test_partial_target_needs_only_one_fallback():
    result = calibrate(CONF, EDGE, CLOUD, 0.9, confidence_level=None)

    assert result.reached
    assert result.fallback_rate == pytest.approx(0.1)
    assert result.accuracy == pytest.approx(0.9)
    assert 0.15 < result.threshold < 0.25
    assert end_to_end(CONF, EDGE, CLOUD, result.threshold) == (pytest.approx(0.9), pytest.approx(0.1))


def test_no_fallback_needed_gives_threshold_zero():
    result = calibrate(CONF, np.ones(10, bool), np.zeros(10, bool), 0.99, confidence_level=None)

    assert result.reached
    assert result.threshold == 0.0
    assert result.fallback_rate == 0.0
    assert result.accuracy == 1.0


def test_unreachable_target_chooses_the_most_accurate_threshold_with_least_fallback():
    # Edge alone: 8/10. Sending 1 sample: 9/10; 2 or 3: 8/10; 4 or 5: 9/10 again; more: worse.
    edge = np.array([0, 1, 1, 0, 1, 1, 1, 1, 1, 1], dtype=bool)
    cloud = np.array([1, 0, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)

    result = calibrate(CONF, edge, cloud, 0.95, confidence_level=None)

    assert not result.reached
    assert result.accuracy == pytest.approx(0.9)
    assert result.fallback_rate == pytest.approx(0.1)
    assert 0.15 < result.threshold < 0.25
    assert result.target_accuracy == 0.95


def test_unreachable_ties_prefer_the_least_fallback():
    # Sending anyone to the cloud never helps: stay on the edge.
    result = calibrate(CONF, EDGE, EDGE, 0.99, confidence_level=None)

    assert not result.reached
    assert result.threshold == 0.0
    assert result.fallback_rate == 0.0
    assert result.accuracy == pytest.approx(0.8)


def test_always_fall_back_is_a_candidate_above_the_max():
    result = calibrate(CONF, np.zeros(10, bool), CLOUD, 1.0, confidence_level=None)

    assert result.reached
    assert result.fallback_rate == 1.0
    assert 0.95 < result.threshold <= 1.0
    assert end_to_end(CONF, np.zeros(10, bool), CLOUD, result.threshold) == (1.0, 1.0)


def test_wilson_bound_is_stricter_than_the_point_estimate():
    rng = np.random.default_rng(0)
    n = 400
    conf = rng.uniform(0, 1, n)
    # The edge gets more right as confidence grows; the cloud is always right.
    edge = rng.uniform(0, 1, n) < 0.7 + 0.3 * conf
    cloud = np.ones(n, bool)

    point = calibrate(conf, edge, cloud, 0.97, confidence_level=None)
    bounded = calibrate(conf, edge, cloud, 0.97, confidence_level=0.95)

    assert point.reached
    assert bounded.reached
    assert bounded.fallback_rate > point.fallback_rate
    assert bounded.threshold > point.threshold
    assert bounded.accuracy_lower >= 0.97 > wilson_lower(round(point.accuracy * n), n, 0.95)
    assert bounded.accuracy_lower == pytest.approx(wilson_lower(round(bounded.accuracy * n), n, 0.95))
    assert point.accuracy_lower == point.accuracy


def test_wilson_lower_known_values():
    # p = 1: the bound is 1 / (1 + z^2 / n); z(0.95) = 1.6449
    assert wilson_lower(10, 10, 0.95) == pytest.approx(1 / (1 + 1.6448536**2 / 10))
    assert wilson_lower(0, 10, 0.95) == 0.0
    assert wilson_lower(5, 10, 0.5) == pytest.approx(0.5)  # z = 0
    assert wilson_lower(90, 100, 0.95) < wilson_lower(90, 100, 0.9) < 0.9


def test_matches_brute_force_on_random_data_with_ties():
    rng = np.random.default_rng(1)
    n = 300
    conf = rng.integers(0, 20, n).astype(np.float32) / 20  # many ties, some at 0.0
    edge = rng.uniform(0, 1, n) < 0.5 + 0.5 * conf
    cloud = rng.uniform(0, 1, n) < 0.95

    for target in (0.8, 0.9, 0.97, 1.0):
        result = calibrate(conf, edge, cloud, target, confidence_level=None)
        candidates = [0.0, *np.unique(conf).tolist(), 1.0]
        scored = [(end_to_end(conf, edge, cloud, t), t) for t in candidates]
        reaching = [fb for (acc, fb), _ in scored if acc >= target]
        if reaching:
            assert result.reached
            assert result.fallback_rate == pytest.approx(min(reaching))
        else:
            assert not result.reached
            assert result.accuracy == pytest.approx(max(acc for (acc, _), _ in scored))
        assert end_to_end(conf, edge, cloud, result.threshold) == (
            pytest.approx(result.accuracy),
            pytest.approx(result.fallback_rate),
        )
        assert result.threshold not in set(conf.tolist()) - {0.0}


def test_curve_is_thinned_sorted_and_holds_the_choice():
    rng = np.random.default_rng(2)
    n = 5000
    conf = rng.uniform(0, 1, n)
    edge = rng.uniform(0, 1, n) < conf
    result = calibrate(conf, edge, np.ones(n, bool), 0.9)

    assert isinstance(result, Calibration)
    assert len(result.curve) <= 22
    thresholds = [p.threshold for p in result.curve]
    assert thresholds == sorted(thresholds)
    assert [p.fallback_rate for p in result.curve] == sorted(p.fallback_rate for p in result.curve)
    assert result.curve[0].fallback_rate == 0.0
    assert result.curve[-1].fallback_rate == 1.0
    assert any(p.threshold == result.threshold and p.accuracy == result.accuracy for p in result.curve)


def test_float32_midpoint_never_rounds_onto_the_lower_neighbour():
    lo = np.float32(0.5)
    hi = np.nextafter(lo, np.float32(1))  # adjacent float32 values: their midpoint is not a float32
    conf = np.array([lo, hi], dtype=np.float32)

    result = calibrate(conf, np.array([0, 1], bool), np.array([1, 1], bool), 1.0, confidence_level=None)

    assert result.fallback_rate == 0.5
    low = conf < result.threshold  # NEP 50: compared in float32, as the runtime does
    assert low.tolist() == [True, False]


@pytest.mark.parametrize(
    ("conf", "edge", "cloud", "target", "level", "message"),
    [
        ([0.5, 0.6], [1], [1, 1], 0.9, 0.95, "same length"),
        ([], [], [], 0.9, 0.95, "at least one sample"),
        ([[0.5]], [[1]], [[1]], 0.9, 0.95, "1-D"),
        ([0.5, 1.5], [1, 1], [1, 1], 0.9, 0.95, "within \\[0, 1\\]"),
        ([0.5, np.nan], [1, 1], [1, 1], 0.9, 0.95, "within \\[0, 1\\]"),
        ([0.5, -0.1], [1, 1], [1, 1], 0.9, 0.95, "within \\[0, 1\\]"),
        ([0.5, 0.6], [1, 2], [1, 1], 0.9, 0.95, "edge_correct"),
        ([0.5, 0.6], [1, 1], [0.5, 1], 0.9, 0.95, "cloud_correct"),
        ([0.5, 0.6], [1, 1], [1, 1], 0.0, 0.95, "target_accuracy"),
        ([0.5, 0.6], [1, 1], [1, 1], 1.1, 0.95, "target_accuracy"),
        ([0.5, 0.6], [1, 1], [1, 1], float("nan"), 0.95, "target_accuracy"),
        ([0.5, 0.6], [1, 1], [1, 1], 0.9, 1.0, "confidence_level"),
        ([0.5, 0.6], [1, 1], [1, 1], 0.9, 0.0, "confidence_level"),
    ],
)
def test_bad_input_is_a_clear_value_error(conf, edge, cloud, target, level, message):
    with pytest.raises(ValueError, match=message):
        calibrate(np.asarray(conf), np.asarray(edge), np.asarray(cloud), target, confidence_level=level)


def test_wilson_lower_rejects_bad_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson_lower(11, 10, 0.95)
    with pytest.raises(ValueError, match="n must be"):
        wilson_lower(0, 0, 0.95)


@FEDGE_CALIBRATE
def test_cli_writes_a_threshold_the_runtime_loads(model_copy):
    from typer.testing import CliRunner

    from sdk.cli import app
    from sdk.edge import EdgeConfig, EdgeRuntime
    from sdk.manifest import load_manifest

    before = load_manifest(model_copy)
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", "-m", str(model_copy), "--target-accuracy", "0.9", "--json"])

    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["artifact"] == "onnx-int8"
    assert out["cloud_artifact"] == "onnx-fp32"
    assert out["reached"] is True
    assert out["accuracy_lower"] >= 0.9
    assert 0.0 <= out["threshold"] <= 1.0
    assert out["samples"] > 0
    assert out["curve"]
    assert out["manifest"] == str(model_copy / "manifest.json")

    after = load_manifest(model_copy)
    assert before.confidence_threshold is None
    assert after.confidence_threshold == out["threshold"]
    assert after.artifacts == before.artifacts
    with EdgeRuntime.from_model_dir(model_copy, EdgeConfig(artifacts=("onnx-int8",))) as rt:
        assert rt.manifest.confidence_threshold == out["threshold"]
        assert rt.confidence_threshold == out["threshold"]


@FEDGE_CALIBRATE
def test_cli_writes_a_nonzero_threshold_exactly(model_copy, monkeypatch):
    from typer.testing import CliRunner

    import sdk.edge.calibration as calibration
    from sdk.cli import app
    from sdk.edge import EdgeConfig, EdgeRuntime

    # The real int8 and fp32 models err on the same samples; a perfect cloud makes falling back pay off.
    real = calibration.calibrate
    monkeypatch.setattr(
        calibration, "calibrate", lambda conf, edge, cloud, *a, **kw: real(conf, edge, np.ones_like(cloud), *a, **kw)
    )
    result = CliRunner().invoke(app, ["calibrate", "-m", str(model_copy), "--target-accuracy", "0.99", "--json"])

    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["reached"] is True
    assert 0.0 < out["threshold"] < 1.0
    assert 0.0 < out["fallback_rate"] < 1.0
    with EdgeRuntime.from_model_dir(model_copy, EdgeConfig(artifacts=("onnx-int8",))) as rt:
        assert rt.manifest.confidence_threshold == out["threshold"]
        assert rt.confidence_threshold == out["threshold"]


@FEDGE_CALIBRATE
def test_cli_table_and_no_write(model_copy):
    from typer.testing import CliRunner

    from sdk.cli import app

    before = (model_copy / "manifest.json").read_bytes()
    result = CliRunner().invoke(app, ["calibrate", "-m", str(model_copy), "--target-accuracy", "1.0", "--no-write"])

    assert result.exit_code == 0, result.output
    assert "->" in result.stdout
    assert "fallback %" in result.stdout
    assert "not reached" in result.stdout  # a Wilson bound never reaches 100 %
    assert (model_copy / "manifest.json").read_bytes() == before
