"""Calibrated confidences: the temperature in the softmax, the calibration error, and the runtime applying both."""

from __future__ import annotations

import numpy as np
import pytest

from sdk.confidence import confidences, expected_calibration_error


def test_the_temperature_divides_the_logits_before_the_softmax():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=np.float32)

    plain = confidences(logits, "logits")
    softened = confidences(logits, "logits", 2.0)

    np.testing.assert_allclose(softened, confidences(logits / 2.0, "logits"), rtol=1e-6)
    np.testing.assert_array_equal(softened.argmax(axis=1), plain.argmax(axis=1))
    assert (softened.max(axis=1) < plain.max(axis=1)).all()
    assert softened.dtype == np.float32
    np.testing.assert_array_equal(confidences(logits, "probabilities", 2.0), logits)  # probabilities as they are


def test_ece_by_hand():
    # Two bins: (14/15, 1] holds 0.95 twice, one right: |0.5 - 0.95|; (9/15, 10/15] holds 0.65 twice, both right.
    conf = np.array([0.95, 0.95, 0.65, 0.65])
    correct = np.array([True, False, True, True])

    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    assert expected_calibration_error(conf, correct, bins=1) == pytest.approx(abs(0.75 - 0.8))
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([False, True])) == 0.0


@pytest.mark.parametrize(
    ("conf", "correct"),
    [
        pytest.param(np.ones((2, 2)), np.ones((2, 2), bool), id="2-d"),
        pytest.param(np.ones(2), np.ones(3, bool), id="lengths"),
        pytest.param(np.ones(0), np.ones(0, bool), id="empty"),
    ],
)
def test_ece_rejects_bad_shapes(conf, correct):
    with pytest.raises(ValueError, match="expected N confidences"):
        expected_calibration_error(conf, correct)


def test_the_runtime_reports_confidences_at_the_artifacts_temperature(model_dir, digits_split):
    from sdk.edge import EdgeConfig, EdgeRuntime

    x = digits_split.x_test[:64]
    for kind in ("onnx-int8", "onnx-fp32"):
        with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=(kind,))) as rt:
            result = rt.predict(x)
            temperature = rt.artifact.temperature
        assert temperature != 1.0  # the export fitted one
        expected = confidences(result.outputs, "logits", temperature)
        np.testing.assert_allclose(result.confidences, expected.max(axis=1), rtol=1e-6)
        assert not np.allclose(result.confidences, confidences(result.outputs, "logits").max(axis=1))
