"""Every input the model cannot take is a typed InvalidInput, and the runtime keeps serving."""

from __future__ import annotations

import numpy as np
import pytest

from sdk.edge import EdgeConfig, EdgeRuntime
from sdk.errors import InputDtypeError, InputShapeError, InvalidInput, NonFiniteInput


@pytest.fixture(scope="module")
def runtime(model_dir):
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(max_batch_size=64)) as rt:
        yield rt


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        pytest.param(np.zeros((8, 8), np.float32), InputShapeError, r"got \(8, 8\)", id="missing-channel"),
        pytest.param(np.zeros((2, 1, 8, 9), np.float32), InputShapeError, r"\(N, 1, 8, 8\)", id="wrong-width"),
        pytest.param(np.zeros((65, 1, 8, 8), np.float32), InputShapeError, "outside 1..64", id="batch-too-big"),
        pytest.param(np.zeros((0, 1, 8, 8), np.float32), InputShapeError, "outside", id="empty-batch"),
        pytest.param(np.zeros((1, 8, 8), np.complex64), InputDtypeError, "complex64", id="complex"),
        pytest.param(np.zeros((1, 8, 8), bool), InputDtypeError, "bool", id="bool"),
        pytest.param(np.full((1, 8, 8), "x"), InputDtypeError, "<U1", id="strings"),
        pytest.param([[1.0, 2.0], [3.0]], InputShapeError, "ragged", id="ragged-list"),
        pytest.param(np.full((1, 8, 8), np.nan, np.float32), NonFiniteInput, "64 NaN", id="nan"),
        pytest.param(np.full((1, 8, 8), 1e300), NonFiniteInput, "infinite", id="float64-overflows-to-inf"),
    ],
)
def test_rejected_with_typed_error(runtime, digits_split, x, error, match):
    with pytest.raises(error, match=match):
        runtime.predict(x)

    # The runtime keeps serving after a bad call.
    assert runtime.predict(digits_split.x_test[0]).source == "edge"


def test_every_input_error_is_invalid_input():
    assert all(issubclass(e, InvalidInput) for e in (InputShapeError, InputDtypeError, NonFiniteInput))


def test_numeric_dtypes_are_cast_within_kind(runtime, digits_split):
    x = digits_split.x_test[3]
    expected = runtime.predict(x).label

    assert runtime.predict(x.astype(np.float64)).label == expected
    assert runtime.predict((x * 16).round().astype(np.int64) / 16).label == expected
    assert runtime.predict(x.tolist()).label == expected


def test_strict_dtype_refuses_casts(model_dir, digits_split):
    with (
        EdgeRuntime.from_model_dir(model_dir, EdgeConfig(strict_dtype=True)) as rt,
        pytest.raises(InputDtypeError, match="exactly"),
    ):
        rt.predict(digits_split.x_test[0].astype(np.float64))


def test_nan_policy_allow_passes_nan_through(model_dir):
    x = np.zeros((1, 8, 8), np.float32)
    x[0, 0, 0] = np.nan
    with EdgeRuntime.from_model_dir(model_dir, EdgeConfig(nan_policy="allow", artifacts=("onnx-fp32",))) as rt:
        assert rt.predict(x).outputs.shape == (10,)


def test_non_contiguous_input_is_accepted(runtime, digits_split):
    x = np.asfortranarray(digits_split.x_test[:4])
    assert not x.flags.c_contiguous
    assert list(runtime.predict(x).labels) == list(runtime.predict(np.ascontiguousarray(x)).labels)


def test_finite_values_whose_sum_overflows_are_finite(runtime):
    # 64 values of 1.4e38 sum past float32's limit; each is finite, and checking must not warn (warnings are errors).
    x = np.full((1, 1, 8, 8), 1.4e38, np.float32)
    batch, single = runtime.model.inputs.prepare(x)
    assert batch.shape == (1, 1, 8, 8)
    assert not single
