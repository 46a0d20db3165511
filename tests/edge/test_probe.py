"""A probe travels small: a float input as one byte per value, read back exactly as the outputs were recorded."""

from __future__ import annotations

import numpy as np
import pytest

from sdk.edge import EdgeRuntime
from sdk.errors import ModelIntegrityError
from sdk.manifest import compact_input, load_manifest, read_probe, write_probe


@pytest.mark.parametrize(
    "x",
    [
        np.random.default_rng(0).standard_normal((1, 32, 32, 3), dtype=np.float32),
        np.random.default_rng(1).uniform(0, 16, (4, 8, 8)).astype(np.float32),
        np.random.default_rng(2).uniform(1000, 1001, (2, 64)).astype(np.float16),
        np.full((3, 5), 7.25, np.float32),
    ],
)
def test_a_compact_input_round_trips_exactly(tmp_path, x):
    compact = compact_input(x)
    assert compact.dtype == x.dtype
    assert compact.shape == x.shape
    assert np.max(np.abs(compact - x)) <= 2 * (float(x.max()) - float(x.min())) / 254
    expected = {"expected/onnx-int8": np.arange(6, dtype=np.float32).reshape(2, 3)}
    write_probe(tmp_path / "probe.npz", {"input": compact, **expected})

    back = read_probe(tmp_path / "probe.npz")

    assert back["input"].dtype == x.dtype
    assert np.array_equal(back["input"], compact)
    assert np.array_equal(back["expected/onnx-int8"], expected["expected/onnx-int8"])
    with np.load(tmp_path / "probe.npz", allow_pickle=False) as npz:
        assert "input" not in npz.files
        assert npz["input_codes"].dtype == np.uint8


def test_a_compact_float_input_is_a_quarter_of_its_float32_size(tmp_path):
    x = compact_input(np.random.default_rng(3).standard_normal((1, 224, 224, 3), dtype=np.float32))
    _, compact_size = write_probe(tmp_path / "compact.npz", {"input": x})
    np.savez(tmp_path / "plain.npz", input=x)

    assert compact_size < 0.3 * (tmp_path / "plain.npz").stat().st_size


@pytest.mark.parametrize(
    "x", [np.arange(12, dtype=np.int64).reshape(3, 4), np.random.default_rng(4).standard_normal(50).astype(np.float32)]
)
def test_an_input_that_is_not_compact_is_stored_as_it_is(tmp_path, x):
    write_probe(tmp_path / "probe.npz", {"input": x})

    assert np.array_equal(read_probe(tmp_path / "probe.npz")["input"], x)


def test_a_compact_input_that_claims_an_integer_dtype_is_refused(tmp_path):
    np.savez(
        tmp_path / "probe.npz",
        input_codes=np.zeros(4, np.uint8),
        input_levels=np.array([0.0, 1.0]),
        input_dtype=np.array("int64"),
    )

    with pytest.raises(ModelIntegrityError, match="floats"):
        read_probe(tmp_path / "probe.npz")


def test_an_exported_model_carries_a_compact_probe_that_passes_its_smoke_test(model_copy):
    manifest = load_manifest(model_copy)
    with np.load(model_copy / manifest.probe.file, allow_pickle=False) as npz:
        assert "input_codes" in npz.files

    runtime = EdgeRuntime.from_model_dir(model_copy)  # the smoke test runs the decoded probe input
    try:
        assert runtime.manifest.version == manifest.version
    finally:
        runtime.close()
