"""The tests' reference models: two tiers trained once and exported by our own pipeline, with their data split.

The device tier is the small digits CNN (``DEVICE_WIDTH``), pruned and int8; the cloud tier a larger CNN, fp32 only,
served under the same model name (the name a device asks the cloud for). The device's thresholds are calibrated
against the cloud tier.

The session fixtures in ``conftest.py`` build it in-process. Where torch is not installed (the Python 3.10 edge run,
``scripts/test-py310.sh``), the main venv builds it ahead with ``python -m reference_model OUT`` and the tests find it
through ``FEDGE_TEST_MODELS=OUT``; loading it then needs only numpy.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

__all__ = [
    "CLOUD_MODEL_DIR",
    "ENV_VAR",
    "MODEL_DIR",
    "SPLIT_FILE",
    "build",
    "build_cloud",
    "copy_model",
    "load_split",
    "save_split",
    "train",
    "train_cloud",
    "write",
]

#: Names a folder that ``write`` filled: the tests use it instead of training and exporting.
ENV_VAR = "FEDGE_TEST_MODELS"
MODEL_DIR = "digits-v1"
CLOUD_MODEL_DIR = "digits-cloud-v1"
SPLIT_FILE = "digits-split.npz"
SPLIT_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def train(split):
    """The device tier's digits CNN trained on ``split`` with a fixed seed (needs torch)."""
    from federation.task import DEVICE_WIDTH, DigitsCNN, set_seed
    from federation.task import train as fit

    set_seed(0)
    model = DigitsCNN(width=DEVICE_WIDTH)
    fit(model, split.x_train, split.y_train, epochs=12, lr=3e-3)
    return model.eval()


def train_cloud(split):
    """The cloud tier's larger CNN trained on ``split`` with a fixed seed (needs torch)."""
    from federation.export.cloud_tier import train_cloud_tier

    return train_cloud_tier(split, epochs=10)


def build(model, split, out: Path) -> Path:
    """Export ``model`` into the model directory ``out``: pruned 50 %, fp32 ONNX, int8 ONNX and int8 LiteRT."""
    from federation.export import ExportConfig, export_model

    export_model(model, out, split, ExportConfig(version=1, sparsity=0.5))
    return out


def build_cloud(model, split, out: Path) -> Path:
    """Export the cloud tier into the model directory ``out``: fp32 ONNX only."""
    from federation.export.cloud_tier import export_cloud_tier

    export_cloud_tier(model, out, split)
    return out


def save_split(split, path: Path) -> None:
    """Write the split's arrays and its preprocessing to ``path`` (``.npz``, no pickle)."""
    scale_offset = np.array([split.preprocessing.scale, split.preprocessing.offset])
    np.savez(path, preprocessing=scale_offset, **{name: getattr(split, name) for name in SPLIT_FIELDS})


def load_split(path: Path) -> SimpleNamespace:
    """The split ``save_split`` wrote, with the same attribute names as ``federation.task.Split``."""
    from sdk.manifest import Preprocessing

    with np.load(path, allow_pickle=False) as data:
        scale, offset = (float(v) for v in data["preprocessing"])
        arrays = {name: data[name] for name in SPLIT_FIELDS}
    return SimpleNamespace(**arrays, preprocessing=Preprocessing(scale=scale, offset=offset))


def copy_model(folder: Path, out: Path, name: str = MODEL_DIR) -> Path:
    """A copy of the model directory ``name`` in ``folder`` (from ``write``) at ``out``: no test can alter the cache."""
    return Path(shutil.copytree(folder / name, out))


def write(folder: Path) -> None:
    """Train, export and save the split into ``folder``, for ``FEDGE_TEST_MODELS``."""
    from federation.task import load_split as digits_split

    split = digits_split(0)
    folder.mkdir(parents=True, exist_ok=True)
    build(train(split), split, folder / MODEL_DIR)
    build_cloud(train_cloud(split), split, folder / CLOUD_MODEL_DIR)
    save_split(split, folder / SPLIT_FILE)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
