"""The device program as tests start it: its files (``fedge.toml``, ``root.json``, samples) and its command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from extras import DEVICE_PYTHON

__all__ = ["edge_run_command"]


def edge_run_command(
    folder: Path,
    *,
    device_id: str,
    broker: str,
    repository_url: str,
    root: bytes,
    samples: np.ndarray,
    state_dir: Path,
    edge: str = "",
    update: str = "",
) -> list[str]:
    """Write the device's files into ``folder``; ``fedge edge run`` for them, in the device's Python.

    The config asks for int8 ONNX of model ``digits``; ``edge`` and ``update`` add lines to those tables.
    The command runs the worktree's ``sdk`` (``-m sdk.cli``), not an installed console script.
    """
    host, port = broker.rsplit(":", 1)
    config = folder / "fedge.toml"
    config.write_text(
        f"""
[edge]
artifacts = ["onnx-int8"]
model_name = "digits"
deadline_ms = 200
{edge}

[mqtt]
host = "{host}"
port = {port}

[update]
model = "digits"
device_id = "{device_id}"
repository_url = "{repository_url}"
target = "onnx-int8"
{update}
"""
    )
    (folder / "root.json").write_bytes(root)
    np.save(folder / "samples.npy", samples)
    command = [DEVICE_PYTHON, "-m", "sdk.cli", "edge", "run", "-c", str(config), "--state-dir", str(state_dir)]
    return [*command, "--root-metadata", str(folder / "root.json"), "--samples", str(folder / "samples.npy")]
