"""Threshold calibration: hand-checked choices, the Clopper-Pearson bound, bad input, and ``fedge calibrate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from extras import needs

from sdk.edge.calibration import Calibration, calibrate, clopper_pearson_lower

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


def test_no_fallback_needed_keeps_fallback_on_below_the_least_confident_sample():
    result = calibrate(CONF, np.ones(10, bool), np.zeros(10, bool), 0.99, confidence_level=None)

    assert result.reached
    assert result.threshold == pytest.approx(0.075)  # halfway below 0.15: never 0.0, which turns fallback off
    assert result.fallback_rate == 0.0
    assert result.accuracy == 1.0
    assert end_to_end(CONF, np.ones(10, bool), np.zeros(10, bool), result.threshold) == (1.0, 0.0)


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
    assert result.threshold == pytest.approx(0.075)
    assert result.fallback_rate == 0.0
    assert result.accuracy == pytest.approx(0.8)


def test_always_fall_back_is_a_candidate_above_the_max():
    result = calibrate(CONF, np.zeros(10, bool), CLOUD, 1.0, confidence_level=None)

    assert result.reached
    assert result.fallback_rate == 1.0
    assert 0.95 < result.threshold <= 1.0
    assert end_to_end(CONF, np.zeros(10, bool), CLOUD, result.threshold) == (1.0, 1.0)


def test_the_guarantee_by_hand():
    # Two fallbacks: 10/10 right, Clopper-Pearson 95 % lower bound 0.05 ** (1/10) = 0.7411 >= 0.7.
    # One fallback: 9/10 right, bound 0.6058 (10 p^9 (1 - p) + p^10 = 0.05) < 0.7, though 0.9 itself is above.
    result = calibrate(CONF, EDGE, CLOUD, 0.7, confidence_level=0.95)

    assert result.reached
    assert result.fallback_rate == pytest.approx(0.2)
    assert result.accuracy_lower == pytest.approx(0.05**0.1)
    assert clopper_pearson_lower(9, 10, 0.95) == pytest.approx(0.605836, abs=1e-6)
    # The point estimate alone would keep every answer on the edge: 8/10 >= 0.7, but its bound is 0.4931.
    assert calibrate(CONF, EDGE, CLOUD, 0.7, confidence_level=None).fallback_rate == 0.0
    assert clopper_pearson_lower(8, 10, 0.95) == pytest.approx(0.493099, abs=1e-6)


@needs("scipy")
def test_clopper_pearson_is_the_beta_quantile():
    from scipy.stats import beta

    for k, n, level in [(0, 5, 0.95), (1, 10, 0.95), (267, 270, 0.95), (990, 1000, 0.9), (5, 7, 0.5)]:
        expected = 0.0 if k == 0 else beta.ppf(1 - level, k, n - k + 1)
        assert clopper_pearson_lower(k, n, level) == pytest.approx(expected, abs=1e-9)


def test_the_bound_is_stricter_than_the_point_estimate_and_just_reaches_the_target():
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
    assert bounded.accuracy_lower >= 0.97 > clopper_pearson_lower(round(point.accuracy * n), n, 0.95)
    assert bounded.accuracy_lower == pytest.approx(clopper_pearson_lower(round(bounded.accuracy * n), n, 0.95))
    # One fallback fewer than chosen: the bound falls short (the choice is the least fallback that reaches).
    order = np.argsort(conf)
    k = round(bounded.fallback_rate * n) - 1
    right = int(cloud[order[:k]].sum() + edge[order[k:]].sum())
    assert clopper_pearson_lower(right, n, 0.95) < 0.97
    assert point.accuracy_lower == point.accuracy


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


def test_clopper_pearson_lower_rejects_bad_counts():
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson_lower(11, 10, 0.95)
    with pytest.raises(ValueError, match="n must be"):
        clopper_pearson_lower(0, 0, 0.95)


@pytest.fixture(scope="module")
def served_cloud(module_broker, cloud_model_dir):
    """An MQTT inference worker serving the cloud tier behind a private Mosquitto."""
    from sdk.cloud.inference import InferenceService
    from sdk.cloud.worker import InferenceWorker
    from sdk.mqtt import MqttSettings

    service = InferenceService.from_model_dir(cloud_model_dir)
    worker = InferenceWorker({service.name: service}, MqttSettings.from_address(module_broker.address)).start()
    yield module_broker
    worker.stop()
    service.close()


def _calibrate(*args):
    from typer.testing import CliRunner

    from sdk.cli import app

    return CliRunner().invoke(app, ["calibrate", *args])


@FEDGE_CALIBRATE
def test_cli_calibrates_every_artifact_against_the_served_cloud(model_copy, served_cloud, cloud_model_dir):
    from sdk.edge import EdgeConfig, EdgeRuntime
    from sdk.manifest import ModelRef, load_manifest

    before = load_manifest(model_copy)
    result = _calibrate("-m", str(model_copy), "--broker", served_cloud.address, "--target-accuracy", "0.95", "--json")

    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    cloud = load_manifest(cloud_model_dir)
    assert out["cloud"] | {"source": None} == {"name": cloud.name, "version": cloud.version, "source": None}
    assert out["cloud"]["source"] == f"mqtt://{served_cloud.address}"
    assert out["bound"] == "clopper-pearson"
    assert set(out["artifacts"]) == set(before.artifacts)
    after = load_manifest(model_copy)
    assert after.cloud_model == ModelRef(cloud.name, cloud.version)
    assert after.confidence_threshold is None  # per artifact, not one for all
    for kind, chosen in out["artifacts"].items():
        assert chosen["reached"]
        assert chosen["written"]
        assert chosen["accuracy_lower"] >= 0.95
        assert 0.0 < chosen["threshold"] < 1.0
        assert 0.0 < chosen["fallback_rate"] < 0.5
        assert chosen["cloud_accuracy"] > chosen["edge_accuracy"]  # the bigger model is asked
        assert after.artifacts[kind].confidence_threshold == chosen["threshold"]
        assert (model_copy / f"calibration-{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with EdgeRuntime.from_model_dir(model_copy, EdgeConfig(artifacts=(kind,))) as rt:
            assert rt.confidence_threshold == chosen["threshold"]


@FEDGE_CALIBRATE
def test_cli_says_so_exits_non_zero_and_keeps_the_previous_threshold_when_unreachable(model_copy, cloud_model_dir):
    from sdk.manifest import load_manifest

    load_manifest(model_copy).with_threshold(0.6, artifact="onnx-int8").write(model_copy)
    before = (model_copy / "manifest.json").read_bytes()
    # 270 held-out rows: even all right, the 95 % lower bound is 0.05 ** (1/270) = 0.989 < 0.995.
    result = _calibrate(
        "-m", str(model_copy), "--cloud-model-dir", str(cloud_model_dir), "--artifact", "onnx-int8",
        "--target-accuracy", "0.995",
    )  # fmt: skip

    assert result.exit_code == 1, result.output
    said = " ".join(result.stdout.split())  # rich wraps long lines
    assert "onnx-int8: target 99.50% not reached" in said
    assert "kept the previous threshold 0.6" in said
    assert (model_copy / "manifest.json").read_bytes() == before
    assert (model_copy / "calibration-onnx-int8.png").is_file()


@FEDGE_CALIBRATE
def test_cli_no_write_leaves_the_manifest_and_a_missing_cloud_is_a_fedge_error(model_copy, cloud_model_dir):
    from sdk.errors import CloudUnavailable
    from sdk.mosquitto import free_port

    before = (model_copy / "manifest.json").read_bytes()
    result = _calibrate(
        "-m", str(model_copy), "--cloud-model-dir", str(cloud_model_dir), "--artifact", "tflite", "--no-write",
        "--no-plot",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "->" in result.stdout
    assert (model_copy / "manifest.json").read_bytes() == before
    assert not list(model_copy.glob("*.png"))

    nobody = _calibrate("-m", str(model_copy), "--broker", f"127.0.0.1:{free_port()}", "--timeout-s", "1")
    assert isinstance(nobody.exception, CloudUnavailable)
    assert (model_copy / "manifest.json").read_bytes() == before
