"""The manifest's calibration and input fields (temperatures, thresholds, the cloud model, preprocessing, the
training range); old manifests without them still load."""

from __future__ import annotations

import json

import pytest

from sdk.errors import ManifestError
from sdk.manifest import InputRange, Manifest, ModelRef, Preprocessing, load_manifest


def _data(model_dir):
    return json.loads((model_dir / "manifest.json").read_text())


def test_a_manifest_without_temperatures_or_cloud_model_loads_with_temperature_one(model_dir):
    data = _data(model_dir)
    for artifact in data["artifacts"].values():
        for key in ("temperature", "ece_before", "ece_after", "confidence_threshold"):
            artifact.pop(key)
    data.pop("cloud_model")

    old = Manifest.from_json(json.dumps(data))

    assert {a.temperature for a in old.artifacts.values()} == {1.0}
    assert old.cloud_model is None
    assert old.threshold_for("onnx-int8") is None


def test_the_export_records_a_temperature_and_the_ece_of_every_artifact(model_dir):
    manifest = load_manifest(model_dir)

    for artifact in manifest.artifacts.values():
        assert 0.05 <= artifact.temperature <= 20.0
        assert 0.0 <= artifact.ece_after <= 1.0
        assert 0.0 <= artifact.ece_before <= 1.0
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_thresholds_per_artifact_and_the_cloud_model_round_trip(model_dir):
    manifest = load_manifest(model_dir).with_threshold(0.4)
    changed = manifest.with_threshold(0.8, artifact="tflite")
    changed = Manifest.from_json(
        changed.to_json().replace('"cloud_model": null', '"cloud_model": {"name": "d", "version": 3}')
    )

    assert changed.threshold_for("tflite") == 0.8
    assert changed.threshold_for("onnx-int8") == 0.4  # no own threshold: the manifest's
    assert changed.cloud_model == ModelRef("d", 3)
    with pytest.raises(KeyError, match="no model-bin artifact"):
        manifest.with_threshold(0.5, artifact="model-bin")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        pytest.param("temperature", 0.0, r"artifacts.onnx-int8.temperature: must be > 0", id="zero-temperature"),
        pytest.param("temperature", "hot", r"artifacts.onnx-int8.temperature: expected float", id="text"),
        pytest.param("confidence_threshold", 1.5, r"onnx-int8.confidence_threshold: must be within", id="threshold"),
    ],
)
def test_bad_calibration_fields_name_the_field(model_dir, field, value, message):
    data = _data(model_dir)
    data["artifacts"]["onnx-int8"][field] = value

    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(json.dumps(data))


def test_a_bad_cloud_model_names_the_field(model_dir):
    data = _data(model_dir)
    data["cloud_model"] = {"name": "digits"}

    with pytest.raises(ManifestError, match=r"manifest.cloud_model.version: missing"):
        Manifest.from_json(json.dumps(data))


def test_the_export_records_the_splits_preprocessing_and_training_range(model_dir, digits_split):
    manifest = load_manifest(model_dir)

    assert manifest.preprocessing == Preprocessing(scale=1 / 16, offset=0.0)  # digits: pixels 0..16 to 0..1
    assert manifest.input_range == InputRange(
        min=float(digits_split.x_train.min()), max=float(digits_split.x_train.max())
    )
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_a_manifest_without_preprocessing_or_range_loads_with_neither(model_dir):
    data = _data(model_dir)
    data.pop("preprocessing")
    data.pop("input_range")

    old = Manifest.from_json(json.dumps(data))

    assert old.preprocessing is None
    assert old.input_range is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        pytest.param(
            "preprocessing", {"scale": 0, "offset": 0}, r"manifest.preprocessing.scale: must not be 0", id="0"
        ),
        pytest.param("preprocessing", {"offset": 1.0}, r"manifest.preprocessing.scale: missing", id="no-scale"),
        pytest.param("preprocessing", {"scale": "1/16"}, r"manifest.preprocessing.scale: expected float", id="text"),
        pytest.param("preprocessing", [0.0625, 0], r"manifest.preprocessing: expected dict", id="list"),
        pytest.param(
            "input_range", {"min": 1.0, "max": 0.0}, r"manifest.input_range.min: 1.0 is above max", id="order"
        ),
        pytest.param("input_range", {"min": 0.0}, r"manifest.input_range.max: missing", id="no-max"),
    ],
)
def test_bad_input_fields_name_the_field(model_dir, field, value, message):
    data = _data(model_dir)
    data[field] = value

    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(json.dumps(data))
