"""The ``fedge`` console script, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from extras import needs


def fedge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdk.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("command", ["export", "predict", "info", "train", "demo", "calibrate", "edge run"])
def test_every_command_has_help(command):
    result = fedge(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_info_shows_manifest_and_engines(model_dir):
    result = fedge("info", "--model-dir", str(model_dir))

    assert result.returncode == 0, result.stderr
    assert "digits" in result.stdout
    assert "onnx-int8" in result.stdout
    assert "CPUExecutionProvider" in result.stdout


def test_predict_json(model_dir, digits_split, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, digits_split.x_test[:3])

    result = fedge("predict", "--model-dir", str(model_dir), str(path), "--json", "--artifact", "tflite")

    assert result.returncode == 0, result.stderr
    rows = [json.loads(chunk) for chunk in result.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert [r["label"] for r in rows] == digits_split.y_test[:3].tolist()
    assert all(r["source"] == "edge" for r in rows)


def test_predict_refuses_pickled_npy(model_dir, tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)

    result = fedge("predict", "--model-dir", str(model_dir), str(path))

    assert result.returncode == 2
    assert "InvalidInput" in result.stderr
    assert "Object arrays cannot be loaded" in result.stderr


def test_predict_wrong_shape_is_one_clear_line(model_dir, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 3), np.float32))

    result = fedge("predict", "--model-dir", str(model_dir), str(path))

    assert result.returncode == 2
    assert "InputShapeError" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_key_names_the_key(model_dir, tmp_path):
    config = tmp_path / "fedge.toml"
    config.write_text("[edge]\nthreads = 2\n")
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1, 8, 8), np.float32))

    result = fedge("predict", "--model-dir", str(model_dir), str(path), "--config", str(config))

    assert result.returncode == 2
    assert "edge.threads: unknown key" in result.stderr


def test_predict_raw_pixels_with_preprocess_and_without(model_dir, digits_split, tmp_path):
    path = tmp_path / "samples.npy"
    np.save(path, np.rint(digits_split.x_test[:3].astype(np.float64) * 16))  # raw 0..16, as load_digits gives them
    config = tmp_path / "fedge.toml"
    config.write_text("[edge]\npreprocess = true\n")

    scaled = fedge("predict", "--model-dir", str(model_dir), str(path), "--json", "--config", str(config))
    refused = fedge("predict", "--model-dir", str(model_dir), str(path))

    assert scaled.returncode == 0, scaled.stderr
    rows = [json.loads(chunk) for chunk in scaled.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert [r["label"] for r in rows] == digits_split.y_test[:3].tolist()
    assert refused.returncode == 2
    assert "InputOutOfRange" in refused.stderr
    assert "set edge.preprocess = true" in " ".join(refused.stderr.split())


def test_edge_run_with_a_bad_range_policy_exits_naming_the_key(tmp_path):
    config = tmp_path / "fedge.toml"
    config.write_text('[edge]\nrange_policy = "ask"\n')

    result = fedge(
        "edge", "run", "-c", str(config), "--state-dir", str(tmp_path / "state"), "--root-metadata", "root.json"
    )

    assert result.returncode == 2
    message = " ".join(result.stderr.split())  # the console wraps long lines
    assert "ConfigError: edge.range_policy: expected one of 'reject', 'cloud', 'allow', got 'ask'" in message
    assert "Traceback" not in result.stderr


@needs("torch", "sklearn")
def test_train_then_export(tmp_path):
    ckpt = tmp_path / "digits.pt"
    assert fedge("train", "--out", str(ckpt), "--epochs", "6").returncode == 0

    result = fedge("export", "--checkpoint", str(ckpt), "--model-dir", str(tmp_path / "m"), "--tflite", "off")

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "model-int8.onnx").exists()
    assert "onnx-int8" in result.stdout
