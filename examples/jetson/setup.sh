#!/usr/bin/env bash
# Install the Fedge device runtime on a Jetson (JetPack 6, Python 3.10), from this checkout: the Raspberry Pi's
# setup.sh with the `edge` extra only and this folder's fedge.toml and unit, then NVIDIA's GPU onnxruntime.
# ORT_GPU_WHEEL=/path/to/onnxruntime_gpu-*.whl: NVIDIA's Jetson build for your JetPack (PyPI's onnxruntime is CPU-only).
# Without it the device runs on the CPU provider (the runtime keeps only the providers its onnxruntime offers).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
FEDGE_EXTRAS=edge FEDGE_EXAMPLE="$HERE" "$HERE/../raspberrypi/setup.sh"
if [ -n "${ORT_GPU_WHEEL:-}" ]; then  # both wheels install the `onnxruntime` module: the GPU one replaces the CPU one
  sudo install -m 644 "$ORT_GPU_WHEEL" /opt/fedge/
  sudo -u fedge /opt/fedge/.venv/bin/pip uninstall -y onnxruntime
  sudo -u fedge /opt/fedge/.venv/bin/pip install "/opt/fedge/$(basename "$ORT_GPU_WHEEL")"
fi
sudo install -d -o fedge -g fedge /var/lib/fedge/trt-cache
