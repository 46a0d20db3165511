"""Temperature scaling on a real exported model's logits, and the two tiers of the reference task."""

from __future__ import annotations

import numpy as np
import pytest

from federation.export import run_artifact
from federation.export.temperature import fit_temperature, nll
from sdk.confidence import confidences, expected_calibration_error
from sdk.manifest import load_manifest


def _logits(model_dir, kind, x):
    return run_artifact(model_dir / load_manifest(model_dir).artifacts[kind].file, kind, x)


def _ece(logits, labels, temperature=1.0):
    probs = confidences(logits, "logits", temperature)
    return expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == labels)


@pytest.mark.parametrize(
    ("scale", "hotter"), [pytest.param(4.0, True, id="overconfident"), pytest.param(0.3, False, id="underconfident")]
)
def test_a_miscalibrated_model_gets_the_temperature_that_undoes_it(model_dir, digits_split, scale, hotter):
    # The device model's real logits, made over- or underconfident by scaling them.
    val = _logits(model_dir, "onnx-fp32", digits_split.x_val) * scale
    test = _logits(model_dir, "onnx-fp32", digits_split.x_test) * scale

    temperature = fit_temperature(val, digits_split.y_val)

    assert (temperature > 1.0) is hotter
    assert nll(val, digits_split.y_val, temperature) < nll(val, digits_split.y_val)
    assert _ece(test, digits_split.y_test, temperature) < _ece(test, digits_split.y_test)
    assert _ece(test, digits_split.y_test, temperature) <= 0.03


def test_fit_temperature_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="expected"):
        fit_temperature(np.zeros((3, 10)), np.zeros(2, dtype=np.int64))


def test_the_cloud_tier_beats_the_device_tier_by_two_points(model_dir, cloud_model_dir, digits_split):
    device, cloud = load_manifest(model_dir), load_manifest(cloud_model_dir)
    x, y = digits_split.x_test, digits_split.y_test

    cloud_acc = float((_logits(cloud_model_dir, "onnx-fp32", x).argmax(axis=1) == y).mean())
    for kind in ("onnx-int8", "tflite"):
        device_acc = float((_logits(model_dir, kind, x).argmax(axis=1) == y).mean())
        assert cloud_acc - device_acc >= 0.02, (kind, device_acc, cloud_acc)
    assert list(cloud.artifacts) == ["onnx-fp32"]
    assert cloud.name == device.name  # the cloud serves the model under the name a device asks for
    assert device.sparsity >= 0.49
