"""Inputs the manifest describes: raw inputs preprocessed on request, rows far outside the training range by policy."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest
from waiting import PATIENCE_S

from sdk.config import from_mapping
from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.edge.cloud_client import CloudClient
from sdk.errors import ConfigError, InputOutOfRange, InvalidInput, ManifestError, ModelNotFound
from sdk.loading import LoadOptions, load_model
from sdk.manifest import load_manifest

PATIENT_MS = PATIENCE_S * 1000


def raw(x: np.ndarray) -> np.ndarray:
    """Scaled digits back to the 0..16 pixels ``load_digits().images`` holds (float64, as sklearn gives them)."""
    return np.rint(x.astype(np.float64) * 16)


def client(settings) -> CloudClient:
    return CloudClient(settings, device_id=f"d-{uuid.uuid4().hex[:8]}").start(wait=True)


@pytest.fixture
def old_model(model_copy):
    """The reference model with a manifest as exported before it recorded preprocessing and a range."""
    manifest = load_manifest(model_copy)
    dataclasses.replace(manifest, preprocessing=None, input_range=None).write(model_copy)
    return model_copy


def test_raw_pixels_with_preprocess_get_the_answers_of_scaled_ones(model_dir, digits_split):
    x = digits_split.x_test[:64]
    with (
        EdgeRuntime.from_model_dir(model_dir) as scaled,
        EdgeRuntime.from_model_dir(model_dir, EdgeConfig(preprocess=True)) as preprocessing,
    ):
        expected = scaled.predict(x)
        got = preprocessing.predict(raw(x))
        one = preprocessing.predict(raw(x[5]))

    assert raw(x).max() == 16.0
    assert got.labels.tolist() == expected.labels.tolist()
    np.testing.assert_allclose(got.outputs, expected.outputs, rtol=1e-6, atol=1e-6)
    assert (one.label, one.source) == (expected.labels[5], "edge")


def test_raw_pixels_without_preprocess_are_rejected_and_the_runtime_serves_on(model_dir, digits_split):
    x = digits_split.x_test[:4]
    mixed = x.copy()
    mixed[[1, 3]] = raw(x[[1, 3]])
    with EdgeRuntime.from_model_dir(model_dir) as rt:  # range_policy = "reject" by default
        with pytest.raises(InputOutOfRange, match=r"2 of 4 rows .* \[0, 1\] .*set edge.preprocess = true"):
            rt.predict(mixed)
        with pytest.raises(InputOutOfRange, match="1 of 1 rows"):
            rt.predict(raw(x[0]))
        served = rt.predict(x)
        assert rt.out_of_range_rows == 3
    assert issubclass(InputOutOfRange, InvalidInput)
    assert served.sources == ("edge",) * 4


def test_only_values_beyond_the_margin_are_far_outside(model_dir, digits_split):
    x = digits_split.x_test[:8] * 1.4  # up to 1.4: within half the range's width beyond [0, 1]
    with (
        EdgeRuntime.from_model_dir(model_dir) as default,
        EdgeRuntime.from_model_dir(model_dir, EdgeConfig(range_margin=0.1)) as narrow,
    ):
        assert default.predict(x).sources == ("edge",) * 8
        assert default.predict(x - 0.45).sources == ("edge",) * 8
        with pytest.raises(InputOutOfRange, match=r"8 of 8 rows"):
            narrow.predict(x)
        with pytest.raises(InputOutOfRange, match=r"1 of 1 rows"):
            default.predict(np.full((1, 8, 8), -0.6, np.float32))


def test_allow_answers_raw_rows_on_the_device(model_dir, digits_split):
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(range_policy="allow")) as rt:
        result = rt.predict(raw(digits_split.x_test[:4]))
        assert rt.out_of_range_rows == 0
    assert result.sources == ("edge",) * 4


def test_range_policy_cloud_with_no_cloud_to_ask_rejects(model_dir, digits_split):
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(range_policy="cloud")) as rt:
        with pytest.raises(InputOutOfRange, match="no cloud"):
            rt.predict(raw(digits_split.x_test[:2]))
        assert rt.predict(digits_split.x_test[:2]).sources == ("edge", "edge")


def test_range_policy_cloud_sends_the_rows_outside_and_only_them_to_the_cloud(cloud, model_dir, digits_split):
    x = digits_split.x_test[:4].copy()
    x[[1, 3]] = raw(x[[1, 3]])
    config = EdgeConfig(range_policy="cloud", confidence_threshold=0.0, deadline_ms=PATIENT_MS)
    with (
        EdgeRuntime.from_model_dir(model_dir, config, cloud=client(cloud.settings)) as rt,
        EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("onnx-fp32",), range_policy="allow")) as fp32,
    ):
        result = rt.predict(x)
        local = rt.predict(x[[0, 2]])
        served_by_cloud = fp32.predict(x[[1, 3]])  # what the cloud's worker serves: the same fp32 artifact
    assert result.sources == ("edge", "cloud", "edge", "cloud")
    np.testing.assert_allclose(result.outputs[[1, 3]], served_by_cloud.outputs, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(result.outputs[[0, 2]], local.outputs)


def test_the_cloud_gets_the_preprocessed_input(cloud, model_dir, digits_split):
    x = digits_split.x_test[:6]
    config = EdgeConfig(preprocess=True, fallback="cloud-only", deadline_ms=PATIENT_MS)
    with (
        EdgeRuntime.from_model_dir(model_dir, config, cloud=client(cloud.settings)) as rt,
        EdgeRuntime.from_model_dir(model_dir, EdgeConfig(artifacts=("onnx-fp32",))) as fp32,
    ):
        result = rt.predict(raw(x))
        expected = fp32.predict(x)
    assert result.sources == ("cloud",) * 6
    np.testing.assert_allclose(result.outputs, expected.outputs, rtol=1e-4, atol=1e-4)


def test_preprocess_without_a_local_model_refuses_rather_than_send_raw_inputs(cloud, digits_split):
    config = EdgeConfig(preprocess=True, model_name=cloud.service.name, deadline_ms=PATIENT_MS)
    with (
        EdgeRuntime(None, config, cloud=client(cloud.settings)) as rt,
        pytest.raises(ModelNotFound, match="preprocess"),
    ):
        rt.predict(raw(digits_split.x_test[:2]))


def test_a_manifest_without_range_checks_nothing_and_cannot_preprocess(old_model, model_dir, digits_split):
    x = raw(digits_split.x_test[:3])
    with EdgeRuntime.from_model_dir(old_model) as rt:
        assert rt.predict(x).sources == ("edge",) * 3  # no recorded range: the check is off
    with pytest.raises(ManifestError, match=r"manifest.preprocessing: missing .* edge.preprocess = true"):
        EdgeRuntime.from_model_dir(old_model, EdgeConfig(preprocess=True))


def test_a_runtime_that_preprocesses_refuses_a_model_that_cannot_and_serves_on(old_model, model_dir, digits_split):
    x = raw(digits_split.x_test[:3])
    old = load_model(old_model, LoadOptions())
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(preprocess=True)) as rt:
        with pytest.raises(ManifestError, match=r"manifest\.preprocessing"):
            rt.swap(old)
        assert rt.predict(x).model_version == rt.manifest.version
        assert rt.model.directory == model_dir
    old.close()


@pytest.mark.parametrize(
    ("values", "key", "problem"),
    [
        pytest.param({"range_policy": "cloudy"}, "edge.range_policy", "'reject', 'cloud', 'allow'", id="policy"),
        pytest.param({"range_margin": -0.1}, "edge.range_margin", "within [0, 1000]", id="margin"),
        pytest.param({"preprocess": "yes"}, "edge.preprocess", "expected bool", id="preprocess"),
    ],
)
def test_bad_values_name_the_key(values, key, problem):
    with pytest.raises(ConfigError) as caught:
        from_mapping(EdgeConfig, values, section="edge")
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_the_keys_load_from_toml_and_the_environment(tmp_path):
    path = tmp_path / "fedge.toml"
    path.write_text('[edge]\npreprocess = true\nrange_policy = "cloud"\nrange_margin = 0.25\n')

    config = EdgeConfig.load(path, env={"FEDGE_EDGE__RANGE_POLICY": "allow"})

    assert (config.preprocess, config.range_policy, config.range_margin) == (True, "allow", 0.25)
    assert (EdgeConfig().preprocess, EdgeConfig().range_policy) == (False, "reject")
