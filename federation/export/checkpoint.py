"""Torch checkpoints that name their architecture, loaded without pickle (``weights_only=True``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from federation.task import DEVICE_WIDTH, CloudCNN, DigitsCNN
from sdk.errors import ExportError

__all__ = ["ARCHITECTURES", "load_checkpoint", "save_checkpoint"]

#: Architectures a checkpoint may name; a checkpoint carries weights, never code.
ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "digits-cnn": DigitsCNN,
    "digits-cnn-small": lambda: DigitsCNN(width=DEVICE_WIDTH),
    "digits-cloud-cnn": CloudCNN,
}


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], *, arch: str, metrics: dict[str, float] | None = None
) -> None:
    """Save ``model``'s weights with the name of its architecture and optional metrics."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}")
    torch.save({"arch": arch, "state_dict": model.state_dict(), "metrics": dict(metrics or {})}, path)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint names and load its weights; return it with its metrics."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"checkpoint {path} not found") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise ExportError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or data.get("arch") not in ARCHITECTURES:
        raise ExportError(f"checkpoint {path} names no known architecture (known: {', '.join(ARCHITECTURES)})")
    model = ARCHITECTURES[data["arch"]]()
    try:
        model.load_state_dict(data["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise ExportError(f"checkpoint {path} does not fit {data['arch']}: {exc}") from exc
    return model.eval(), dict(data.get("metrics", {}))
