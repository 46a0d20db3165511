"""The tests' reference model: the digits CNN trained once and exported by our own pipeline, with its data split.

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

__all__ = ["ENV_VAR", "MODEL_DIR", "SPLIT_FILE", "build", "copy_model", "load_split", "save_split", "train", "write"]

#: Names a folder that ``write`` filled: the tests use it instead of training and exporting.
ENV_VAR = "FEDGE_TEST_MODELS"
MODEL_DIR = "digits-v1"
SPLIT_FILE = "digits-split.npz"
SPLIT_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def train(split):
    """The digits CNN trained on ``split`` with a fixed seed (needs torch)."""
    from federation.task import DigitsCNN, set_seed
    from federation.task import train as fit

    set_seed(0)
    model = DigitsCNN()
    fit(model, split.x_train, split.y_train, epochs=12, lr=3e-3)
    return model.eval()


def build(model, split, out: Path) -> Path:
    """Export ``model`` into the model directory ``out``: pruned 50 %, fp32 ONNX, int8 ONNX and int8 LiteRT."""
    from federation.export import ExportConfig, export_model

    export_model(model, out, split, ExportConfig(version=1, sparsity=0.5))
    return out


def save_split(split, path: Path) -> None:
    """Write the split's arrays to ``path`` (``.npz``, no pickle)."""
    np.savez(path, **{name: getattr(split, name) for name in SPLIT_FIELDS})


def load_split(path: Path) -> SimpleNamespace:
    """The split ``save_split`` wrote, with the same attribute names as ``federation.task.Split``."""
    with np.load(path, allow_pickle=False) as data:
        return SimpleNamespace(**{name: data[name] for name in SPLIT_FIELDS})


def copy_model(folder: Path, out: Path) -> Path:
    """A copy of the model directory in ``folder`` (from ``write``) at ``out``, so that no test can alter the cache."""
    return Path(shutil.copytree(folder / MODEL_DIR, out))


def write(folder: Path) -> None:
    """Train, export and save the split into ``folder``, for ``FEDGE_TEST_MODELS``."""
    from federation.task import load_split as digits_split

    split = digits_split(0)
    folder.mkdir(parents=True, exist_ok=True)
    build(train(split), split, folder / MODEL_DIR)
    save_split(split, folder / SPLIT_FILE)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
