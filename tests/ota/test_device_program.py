"""`fedge edge run`, the device program, against a real broker and a real signed repository."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from extras import DEVICE_PYTHON


@pytest.mark.device_subprocess
def test_device_program_installs_at_start_and_answers(tmp_path, broker, server, repo, versions, digits_split):
    repo.release(versions(1))
    (tmp_path / "root.json").write_bytes(repo.root_bytes(1))
    np.save(tmp_path / "samples.npy", digits_split.x_test[:3])
    host, port = broker.address.split(":")
    (tmp_path / "fedge.toml").write_text(
        f"""
[edge]
artifacts = ["onnx-int8"]
model_name = "digits"
deadline_ms = 200

[mqtt]
host = "{host}"
port = {port}

[update]
model = "digits"
device_id = "pi-program"
repository_url = "{server.url}/tuf"
target = "onnx-int8"
"""
    )
    command = [DEVICE_PYTHON, "-m", "sdk.cli", "edge", "run", "-c", str(tmp_path / "fedge.toml")]
    command += ["--state-dir", str(tmp_path / "state"), "--root-metadata", str(tmp_path / "root.json")]
    command += ["--samples", str(tmp_path / "samples.npy"), "--count", "3", "--interval", "0.1"]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answers = [line for line in proc.stdout.splitlines() if line.startswith("pi-program: label")]
    assert len(answers) == 3
    assert all("v1" in line for line in answers)
    assert (tmp_path / "state" / "current").is_symlink()
