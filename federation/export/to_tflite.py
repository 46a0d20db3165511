"""Torch to a LiteRT (``.tflite``) model through litert-torch, int8 by PT2E static quantization."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdk.errors import BackendUnavailable, ExportError

__all__ = ["export_tflite", "tflite_available"]


def tflite_available() -> bool:
    """Whether litert-torch (the ``export`` extra) is installed."""
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        return False
    return True


def export_tflite(model: nn.Module, samples: np.ndarray, path: str | os.PathLike[str], *, int8: bool = True) -> Path:
    """Convert ``model`` for a batch of one; with ``int8``, calibrate on ``samples`` (per-channel weights)."""
    try:
        import litert_torch
        from litert_torch.quantize import pt2e_quantizer, quant_config
        from torchao.quantization.pt2e import quantize_pt2e
    except ImportError as exc:
        raise BackendUnavailable("litert-torch is not installed: pip install 'fedge[export]'") from exc

    model = model.eval()
    args = (torch.from_numpy(np.ascontiguousarray(samples[:1])),)
    try:
        # litert-torch prints a progress tree per conversion; the pipeline reports its own progress.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if not int8:
                converted = litert_torch.convert(model, args)
            else:
                quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                    pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
                )
                graph = quantize_pt2e.prepare_pt2e(torch.export.export(model, args).module(), quantizer)
                with torch.no_grad():
                    for row in samples:
                        graph(torch.from_numpy(np.ascontiguousarray(row[None])))
                graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
                converted = litert_torch.convert(
                    graph, args, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
                )
            converted.export(os.fspath(path))
    except Exception as exc:
        raise ExportError(f"LiteRT conversion failed: {exc}") from exc
    return Path(path)
