"""The device program as tests start it: its ``fedge.toml`` and its ``fedge edge run`` command line."""

from __future__ import annotations

from pathlib import Path

from extras import DEVICE_PYTHON

__all__ = ["edge_run_command", "write_device_config"]


def write_device_config(
    path: Path, *, broker: str, repository_url: str, device_id: str, edge: str = "", update: str = ""
) -> Path:
    """A ``fedge.toml`` for ``device_id`` (int8 ONNX, model ``digits``); ``edge`` and ``update`` add lines to tables."""
    host, port = broker.rsplit(":", 1)
    path.write_text(
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
    return path


def edge_run_command(config: Path, state_dir: Path, root: Path, samples: Path, *options: str) -> list[str]:
    """``fedge edge run`` in the device's Python (the worktree's ``sdk``, not an installed console script)."""
    command = [DEVICE_PYTHON, "-m", "sdk.cli", "edge", "run", "-c", str(config)]
    return [*command, "--state-dir", str(state_dir), "--root-metadata", str(root), "--samples", str(samples), *options]
