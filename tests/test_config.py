"""Configuration from TOML and environment, with errors that name the bad key."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from extras import needs

from sdk.edge import EdgeConfig
from sdk.errors import ConfigError


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fedge.toml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    assert EdgeConfig.load(env={}) == EdgeConfig()


def test_values_from_toml_and_env_override(tmp_path):
    path = _toml(tmp_path, '[edge]\nnum_threads = 2\nproviders = ["cuda", "cpu"]\n')

    config = EdgeConfig.load(path, env={"FEDGE_EDGE__NUM_THREADS": "4", "FEDGE_EDGE__STRICT_DTYPE": "yes"})

    assert config.num_threads == 4
    assert config.providers == ("cuda", "cpu")
    assert config.strict_dtype is True


def test_list_from_env():
    config = EdgeConfig.load(env={"FEDGE_EDGE__ARTIFACTS": "tflite, onnx-fp32"})
    assert config.artifacts == ("tflite", "onnx-fp32")


@pytest.mark.parametrize(
    ("text", "env", "key", "match"),
    [
        pytest.param("[edge]\nnum_thread = 2\n", {}, "edge.num_thread", "unknown key", id="unknown-key"),
        pytest.param("[edge]\nnum_threads = 'two'\n", {}, "edge.num_threads", "expected int", id="type"),
        pytest.param("[edge]\nnum_threads = true\n", {}, "edge.num_threads", "got bool", id="bool-for-int"),
        pytest.param("[edge]\nnum_threads = -1\n", {}, "edge.num_threads", "0..256", id="range"),
        pytest.param("[edge]\nnan_policy = 'ignore'\n", {}, "edge.nan_policy", "'reject', 'allow'", id="literal"),
        pytest.param("[edge]\nartifacts = ['onnx']\n", {}, "edge.artifacts", "unknown kind", id="artifact-kind"),
        pytest.param("", {"FEDGE_EDGE__NUM_THREADS": "x"}, "edge.num_threads", "expected int", id="env-type"),
        pytest.param("", {"FEDGE_EDGE__SMOKE_TEST": "maybe"}, "edge.smoke_test", "boolean", id="env-bool"),
        pytest.param("", {"FEDGE_EDGE__LOG_LEVEL": "chatty"}, "edge.log_level", "'INFO'", id="log-level"),
        pytest.param("[edge]\nmin_check_interval_s = 30\n", {}, "edge.min_check_interval_s", "unknown", id="moved"),
        pytest.param("edge = 3\n", {}, "edge", "expected a table", id="not-a-table"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, env, key, match):
    path = _toml(tmp_path, text)

    with pytest.raises(ConfigError, match=match) as info:
        EdgeConfig.load(path, env=env)

    assert info.value.key == key


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        EdgeConfig.load(_toml(tmp_path, "[edge\n"), env={})
    with pytest.raises(ConfigError, match="not found"):
        EdgeConfig.load(tmp_path / "nope.toml", env={})


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="max_batch_size"):
        EdgeConfig(max_batch_size=0)


@pytest.mark.parametrize(
    ("module", "name", "key", "expected"),
    [
        ("sdk.edge", "EdgeConfig", "fallback", "edge-first"),
        ("sdk.mqtt", "MqttSettings", "tls", True),
        ("sdk.edge.updater", "UpdateConfig", "target", "tflite"),
        ("sdk.cloud.config", "CloudConfig", "max_queue", 1024),
        pytest.param("federation.export", "ExportConfig", "sparsity", 0.5, marks=needs("torch")),
    ],
)
def test_the_readme_configuration_example_loads(tmp_path, module, name, key, expected):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("### Configuration", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    path = tmp_path / "fedge.toml"
    path.write_text(block)
    value = getattr(getattr(importlib.import_module(module), name).load(path, {}), key)
    assert (value, type(value)) == (expected, type(expected))


def test_the_least_gap_between_update_checks_is_an_update_key(tmp_path):
    from sdk.edge.updater import UpdateConfig

    fields = "model = 'digits'\ndevice_id = 'pi-7'\nrepository_url = 'https://fedge.example.net/tuf'\n"
    assert UpdateConfig.load(_toml(tmp_path, f"[update]\n{fields}")).min_check_interval_s == 30.0
    with pytest.raises(ConfigError, match=r"0\.\.86400") as info:
        UpdateConfig.load(_toml(tmp_path, f"[update]\n{fields}min_check_interval_s = -1\n"), env={})
    assert info.value.key == "update.min_check_interval_s"
