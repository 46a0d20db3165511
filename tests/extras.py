"""What the tests take from the environment they run in: the installed extras, and the Python a device runs.

The Python 3.10 edge run (``scripts/test-py310.sh``) has only the edge extras, so tests that need torch skip there;
it also runs the device-subprocess tests from the main venv with ``FEDGE_TEST_DEVICE_PYTHON`` set to its 3.10 venv,
so that the cloud (FastAPI, signing) runs on the main Python and the device program on 3.10, as on a Jetson.
"""

from __future__ import annotations

import os
import sys
from importlib.util import find_spec

import pytest

__all__ = ["DEVICE_PYTHON", "needs"]

#: The interpreter for tests that run device code in a child process.
DEVICE_PYTHON = os.environ.get("FEDGE_TEST_DEVICE_PYTHON") or sys.executable


def needs(*modules: str) -> pytest.MarkDecorator:
    """Skip the test unless every module in ``modules`` is installed, naming the missing ones."""
    missing = [name for name in modules if find_spec(name) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}, not installed here (edge-only venv)")
