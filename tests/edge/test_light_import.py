"""The edge extra stays light: sdk.edge, loading and predicting pull in no heavy framework."""

from __future__ import annotations

import subprocess
import sys

# opentelemetry is not heavy, but the device imports it only when tracing is configured.
HEAVY = ("torch", "flwr", "fastapi", "sqlalchemy", "ray", "opentelemetry")


def test_edge_runtime_imports_no_heavy_framework(model_dir):
    code = (
        "import sys, numpy as np\n"
        "from sdk.edge import EdgeRuntime, EdgeConfig\n"
        f"for kinds in (('onnx-int8',), ('tflite',)):\n"
        f"    with EdgeRuntime.from_model_dir({str(model_dir)!r}, EdgeConfig(artifacts=kinds)) as rt:\n"
        "        rt.predict(np.zeros((1, 8, 8), np.float32))\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_device_side_modules_import_no_heavy_framework():
    # The device program (`fedge edge run` lives in sdk.cli) and the modules it pulls in; under Python 3.10 this
    # is also the check that each of them imports there.
    modules = (
        "sdk.edge.cloud_client sdk.edge.updater sdk.edge.status sdk.edge.background sdk.edge.install"
        " sdk.edge.calibration"
        " sdk.config sdk.mqtt sdk.wire sdk.manifest sdk.cli sdk.cli.device"
        " sdk.loading sdk.backends sdk.inputs sdk.confidence sdk.notices sdk.outcomes sdk.tracing"
    )
    code = (
        "import sys, importlib\n"
        f"for name in {modules.split()!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"
