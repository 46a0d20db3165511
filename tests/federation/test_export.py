"""The export pipeline writes a complete, honest model directory, or nothing."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from federation.export import ExportConfig, export_model, load_checkpoint, save_checkpoint
from federation.export.pruning import prune_magnitude, sparsity
from sdk.errors import AccuracyGateFailed, ConfigError, ExportError
from sdk.manifest import file_digest, load_manifest, load_probe


def test_manifest_describes_every_artifact(model_dir):
    manifest = load_manifest(model_dir)

    assert set(manifest.artifacts) == {"onnx-fp32", "onnx-int8", "tflite"}
    assert manifest.input.shape == (None, 1, 8, 8)
    assert manifest.input.dtype == "float32"
    assert manifest.outputs[0].shape == (None, 10)
    assert manifest.labels == tuple("0123456789")
    for artifact in manifest.artifacts.values():
        assert file_digest(model_dir / artifact.file) == (artifact.sha256, artifact.size)
        assert manifest.reference_accuracy - artifact.accuracy <= 0.01
    assert manifest.artifacts["onnx-int8"].precision == "int8"
    assert manifest.artifacts["tflite"].precision == "int8"
    # The small device CNN: the int8 file's fixed QDQ overhead weighs more than on a larger net.
    assert manifest.artifacts["onnx-int8"].size < 0.5 * manifest.artifacts["onnx-fp32"].size
    assert manifest.sparsity == pytest.approx(0.5, abs=0.01)
    probe = load_probe(model_dir, manifest)
    assert probe["input"].shape == (4, 1, 8, 8)
    assert set(probe) == {"input", "expected/onnx-fp32", "expected/onnx-int8", "expected/tflite"}


def test_gate_refuses_a_model_that_lost_accuracy(digits_model, digits_split, tmp_path):
    out = tmp_path / "too-sparse"
    config = ExportConfig(sparsity=0.97, finetune_epochs=0, tflite="off")

    with pytest.raises(AccuracyGateFailed, match="points below the fp32 reference") as info:
        export_model(digits_model, out, digits_split, config)

    assert info.value.artifact == "onnx-fp32"
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_gate_threshold_is_configurable(digits_model, digits_split, tmp_path):
    config = ExportConfig(sparsity=0.97, finetune_epochs=0, tflite="off", int8=False, max_accuracy_drop_pt=100.0)
    manifest = export_model(digits_model, tmp_path / "lenient", digits_split, config)

    assert manifest.artifacts["onnx-fp32"].accuracy < manifest.reference_accuracy - 0.01


def test_existing_directory_is_not_overwritten(digits_model, digits_split, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    with pytest.raises(ExportError, match="not empty"):
        export_model(digits_model, out, digits_split, ExportConfig(tflite="off"))
    assert (out / "keep.txt").read_text() == "mine"


def test_export_config_is_validated():
    with pytest.raises(ConfigError, match="sparsity"):
        ExportConfig(sparsity=1.0)


def test_pruning_zeroes_the_requested_fraction_and_keeps_the_original(digits_model):
    before = [p.detach().clone() for p in digits_model.parameters()]
    pruned = prune_magnitude(digits_model, 0.6)

    assert sparsity(pruned) == pytest.approx(0.6, abs=0.01)
    assert sparsity(digits_model) < 0.01
    for a, b in zip(before, digits_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fine_tuning_keeps_pruned_weights_at_zero(digits_model, digits_split):
    from federation.task import train

    pruned = prune_magnitude(
        digits_model, 0.5, lambda m: train(m, digits_split.x_train[:200], digits_split.y_train[:200], epochs=1)
    )
    assert sparsity(pruned) >= 0.5 - 1e-3


def test_checkpoint_round_trip(digits_model, digits_split, tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(digits_model, path, arch="digits-cnn-small", metrics={"acc": 0.9})
    model, metrics = load_checkpoint(path)

    x = torch.from_numpy(digits_split.x_test[:5])
    assert torch.allclose(model(x), digits_model(x))
    assert metrics == {"acc": 0.9}


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"not a checkpoint", id="garbage"),
        pytest.param(pickle.dumps(_Payload()), id="pickle-payload"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path, content, capsys):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)

    with pytest.raises(ExportError, match="cannot be read"):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_checkpoint_with_a_pickled_object_inside_torch_save_is_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"arch": "digits-cnn", "state_dict": _Payload()}, buf)
    path = tmp_path / "evil.pt"
    path.write_bytes(buf.getvalue())

    with pytest.raises(ExportError, match="cannot be read"):
        load_checkpoint(path)


def test_checkpoint_of_unknown_architecture(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"arch": "resnet", "state_dict": {}}, path)
    with pytest.raises(ExportError, match="no known architecture"):
        load_checkpoint(path)


def test_probe_reproduces_on_every_artifact(model_dir):
    from federation.export import run_artifact

    manifest = load_manifest(model_dir)
    probe = load_probe(model_dir, manifest)
    for kind, artifact in manifest.artifacts.items():
        got = run_artifact(model_dir / artifact.file, kind, probe["input"])
        np.testing.assert_allclose(got, probe[f"expected/{kind}"], atol=1e-4)
