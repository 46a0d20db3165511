"""The engine's threads and spinning: keys that reach the ONNX Runtime session (the worker process: test_cloud_cli)."""

import numpy as np
import pytest

from sdk.cloud.config import CloudConfig
from sdk.cloud.inference import InferenceService
from sdk.edge import EdgeConfig
from sdk.edge.runtime import load_model
from sdk.errors import ConfigError


def test_worker_session_is_built_with_one_thread_that_does_not_spin_by_default(model_dir):
    svc = InferenceService.from_model_dir(model_dir)
    try:
        # Read back from the session ONNX Runtime built, not from what we asked for.
        assert (svc.model.backend.num_threads, svc.model.backend.allow_spinning) == (1, False)
    finally:
        svc.close()


def test_thread_and_spinning_settings_reach_the_session(model_dir):
    svc = InferenceService.from_model_dir(model_dir, intra_op_threads=2, allow_spinning=True)
    try:
        assert (svc.model.backend.num_threads, svc.model.backend.allow_spinning) == (2, True)
        out, single = svc.submit(np.zeros((1, 8, 8), np.float32))
        assert single
        assert out.result(timeout=60).shape == (1, 10)  # the batcher answers a batch; the worker unwraps it
    finally:
        svc.close()


def test_the_device_does_not_spin_by_default_and_may_ask_to(model_dir):
    for config, spins in ((EdgeConfig(artifacts=("onnx-int8",)), False), (EdgeConfig(allow_spinning=True), True)):
        model = load_model(model_dir, config)
        try:
            assert model.backend.allow_spinning is spins
        finally:
            model.close()


@pytest.mark.parametrize(
    ("toml", "env", "key", "problem"),
    [
        pytest.param("[cloud]\nintra_op_threads = -1\n", {}, "cloud.intra_op_threads", "0..256", id="range"),
        pytest.param("[cloud]\nintra_op_threads = 'one'\n", {}, "cloud.intra_op_threads", "expected int", id="type"),
        pytest.param("[cloud]\nallow_spinning = 1\n", {}, "cloud.allow_spinning", "expected bool", id="int-for-bool"),
        pytest.param("", {"FEDGE_CLOUD__ALLOW_SPINNING": "maybe"}, "cloud.allow_spinning", "boolean", id="env"),
    ],
)
def test_bad_engine_keys_name_the_key(tmp_path, toml, env, key, problem):
    path = tmp_path / "fedge.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        CloudConfig.load(path, env)
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_engine_keys_load_from_toml_and_environment(tmp_path):
    path = tmp_path / "fedge.toml"
    path.write_text("[cloud]\nintra_op_threads = 4\nallow_spinning = true\n")
    assert (CloudConfig.load(path, {}).intra_op_threads, CloudConfig.load(path, {}).allow_spinning) == (4, True)
    loaded = CloudConfig.load(path, {"FEDGE_CLOUD__INTRA_OP_THREADS": "0", "FEDGE_CLOUD__ALLOW_SPINNING": "no"})
    assert (loaded.intra_op_threads, loaded.allow_spinning) == (0, False)
