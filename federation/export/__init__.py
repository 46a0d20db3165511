"""The export pipeline: torch checkpoint to a model directory a device can verify and run."""

from federation.export.checkpoint import ARCHITECTURES, load_checkpoint, save_checkpoint
from federation.export.pipeline import ArtifactFile, ExportConfig, build_model_dir, export_model, run_artifact

__all__ = [
    "ARCHITECTURES",
    "ArtifactFile",
    "ExportConfig",
    "build_model_dir",
    "export_model",
    "load_checkpoint",
    "run_artifact",
    "save_checkpoint",
]
