"""The cascade's cloud tier: a larger CNN trained on the whole training split, exported as fp32 ONNX only.

It is served under the device model's name (the name a device asks the cloud for); its lineage says it is the
cloud tier, so a registry or a reader never takes it for a device release.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import nn

from federation.export.pipeline import ExportConfig, StepCallback, export_model
from federation.task import CloudCNN, Split, set_seed, train
from sdk.manifest import Manifest

__all__ = ["CLOUD_LINEAGE", "export_cloud_tier", "train_cloud_tier"]

CLOUD_LINEAGE = {"tier": "cloud", "arch": "digits-cloud-cnn"}


def train_cloud_tier(
    split: Split, *, epochs: int = 10, on_epoch: Callable[[int, float], None] | None = None
) -> nn.Module:
    """A :class:`CloudCNN` trained ``epochs`` on ``split``'s training rows with a fixed seed, in eval mode."""
    set_seed(0)
    model = CloudCNN()
    train(model, split.x_train, split.y_train, epochs=epochs, lr=3e-3, on_epoch=on_epoch)
    return model.eval()


def export_cloud_tier(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    split: Split,
    *,
    version: int = 1,
    overwrite: bool = False,
    on_step: StepCallback | None = None,
) -> Manifest:
    """Export the cloud tier ``model`` into ``out_dir``: fp32 ONNX only, with the cloud tier's lineage."""
    config = ExportConfig(version=version, int8=False, tflite="off", overwrite=overwrite)
    return export_model(model, out_dir, split, config, lineage=CLOUD_LINEAGE, on_step=on_step)
