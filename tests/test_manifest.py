"""The manifest's calibration fields: temperatures, per-artifact thresholds, the cloud model; old ones still load."""

from __future__ import annotations

import json

import pytest

from sdk.errors import ManifestError
from sdk.manifest import Manifest, ModelRef, load_manifest


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
