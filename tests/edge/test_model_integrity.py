"""A damaged, tampered or malformed model directory is refused with a typed error before use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.errors import ManifestError, ModelIntegrityError, ModelNotFound
from sdk.manifest import file_digest


def _rewrite_manifest(model_dir: Path, edit) -> None:
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _rehash(model_dir: Path, kind: str) -> None:
    """Make the manifest agree with a replaced file, as an attacker without the signing key could."""
    sha, size = file_digest(model_dir / f"model-{kind.split('-')[1]}.onnx")
    _rewrite_manifest(model_dir, lambda d: d["artifacts"][kind].update(sha256=sha, size=size))


def test_flipped_byte_is_caught_by_hash(model_copy):
    path = model_copy / "model-int8.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(ModelIntegrityError, match=r"model-int8\.onnx does not match its sha256"):
        EdgeRuntime.from_model_dir(model_copy)


def test_truncated_file_is_caught(model_copy):
    path = model_copy / "model-fp32.onnx"
    path.write_bytes(path.read_bytes()[:1000])

    with pytest.raises(ModelIntegrityError, match="truncated"):
        EdgeRuntime.from_model_dir(model_copy)


def test_every_artifact_is_verified_not_only_the_one_loaded(model_copy):
    (model_copy / "model.tflite").write_bytes(b"not a model")

    with pytest.raises(ModelIntegrityError, match=r"model\.tflite"):
        EdgeRuntime.from_model_dir(model_copy, EdgeConfig(artifacts=("onnx-int8",)))


def test_missing_file_is_caught(model_copy):
    (model_copy / "model-int8.onnx").unlink()

    with pytest.raises(ModelIntegrityError, match="missing"):
        EdgeRuntime.from_model_dir(model_copy)


def test_manifest_hash_that_does_not_match(model_copy):
    _rewrite_manifest(model_copy, lambda d: d["artifacts"]["onnx-int8"].update(sha256="0" * 64))

    with pytest.raises(ModelIntegrityError, match="sha256"):
        EdgeRuntime.from_model_dir(model_copy)


def test_garbage_with_consistent_hash_fails_to_load(model_copy):
    (model_copy / "model-int8.onnx").write_bytes(b"\x08\x07garbage" * 100)
    _rehash(model_copy, "onnx-int8")

    with pytest.raises(ModelIntegrityError, match="onnxruntime cannot load"):
        EdgeRuntime.from_model_dir(model_copy)


def test_swapped_model_fails_the_probe(model_copy):
    # A valid model that is not the one exported (fp32 posing as int8) gives other probe outputs.
    (model_copy / "model-int8.onnx").write_bytes((model_copy / "model-fp32.onnx").read_bytes())
    _rehash(model_copy, "onnx-int8")
    _rewrite_manifest(model_copy, lambda d: d["probe"].update(atol=1e-7))

    with pytest.raises(ModelIntegrityError, match="probe"):
        EdgeRuntime.from_model_dir(model_copy)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        pytest.param(lambda d: d.pop("version"), r"manifest\.version: missing", id="missing-version"),
        pytest.param(lambda d: d.update(version="1"), r"manifest\.version: expected int", id="version-type"),
        pytest.param(
            lambda d: d["artifacts"]["onnx-int8"].update(file="../../etc/passwd"),
            "not a plain file name",
            id="path-escape",
        ),
        pytest.param(lambda d: d["artifacts"].update(weird={}), "unknown artifact kind", id="unknown-kind"),
        pytest.param(lambda d: d["inputs"][0].update(shape=[None, None, 8, 8]), "only the batch", id="dynamic-dim"),
        pytest.param(lambda d: d["inputs"][0].update(dtype="object"), "unsupported dtype", id="dtype"),
        pytest.param(lambda d: d.update(format_version=99), "reads version 1", id="format-version"),
        pytest.param(lambda d: d.update(confidence_threshold=1.5), r"within \[0, 1\]", id="threshold"),
    ],
)
def test_malformed_manifest_names_the_field(model_copy, edit, match):
    _rewrite_manifest(model_copy, edit)

    with pytest.raises(ManifestError, match=match):
        EdgeRuntime.from_model_dir(model_copy)


def test_manifest_that_is_not_json(model_copy):
    (model_copy / "manifest.json").write_text("{not json")

    with pytest.raises(ManifestError, match="not valid JSON"):
        EdgeRuntime.from_model_dir(model_copy)


def test_directory_without_manifest(tmp_path):
    with pytest.raises(ModelNotFound, match=r"no manifest\.json"):
        EdgeRuntime.from_model_dir(tmp_path)
