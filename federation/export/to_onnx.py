"""Torch to ONNX (fp32, dynamic batch) and ONNX Runtime static int8 quantization."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdk.errors import ExportError

__all__ = ["OPSET", "export_onnx", "quantize_int8"]

OPSET = 18


def export_onnx(model: nn.Module, sample: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Export ``model`` to one self-contained ONNX file with a dynamic batch dimension."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter narrates every step on stdout and warns about optional torchvision ops.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                model,
                (torch.from_numpy(np.ascontiguousarray(sample[:2])),),
                os.fspath(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                external_data=False,
                dynamo=True,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    return Path(path)


class _Calibration:
    """Feeds real samples to ONNX Runtime's calibrator, a batch at a time."""

    def __init__(self, samples: np.ndarray, input_name: str, batch_size: int = 32) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: np.ascontiguousarray(samples[i : i + batch_size])} for i in range(0, len(samples), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - only used by multi-pass calibrators
        raise NotImplementedError


def quantize_int8(fp32_path: str | os.PathLike[str], int8_path: str | os.PathLike[str], samples: np.ndarray) -> Path:
    """Static QDQ quantization: per-channel int8 weights, uint8 activations calibrated on ``samples``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(samples, "input")
    with tempfile.TemporaryDirectory(prefix="fedge-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # Shape inference and graph fusions first, as ONNX Runtime recommends for static quantization.
            quant_pre_process(os.fspath(fp32_path), os.fspath(prepared))
            quantize_static(
                os.fspath(prepared),
                os.fspath(int8_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # uint8 activations with int8 weights: on x86 ORT fuses every QDQ pair this way,
                # while int8 activations leave convolutions at residual branches in float.
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibTensorRangeSymmetric": False},
            )
        except Exception as exc:
            raise ExportError(f"int8 quantization failed: {exc}") from exc
    return Path(int8_path)
