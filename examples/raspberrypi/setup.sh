#!/usr/bin/env bash
# Install the Fedge device runtime on Raspberry Pi OS (64-bit, Bookworm or later).
# The device needs no torch: the `edge` extra (onnxruntime, paho-mqtt, tuf) and `litert`.
set -euo pipefail
sudo useradd --system --home /var/lib/fedge --create-home fedge 2>/dev/null || true
sudo mkdir -p /opt/fedge /etc/fedge
sudo chown fedge:fedge /opt/fedge
sudo -u fedge python3 -m venv /opt/fedge/.venv
# On NumPy 2 images ai-edge-litert runs the .tflite model; on older NumPy 1.x images use tflite-runtime instead.
sudo -u fedge /opt/fedge/.venv/bin/pip install "fedge[edge,litert] @ ${FEDGE_WHEEL:-git+https://example.net/fedge.git}"
sudo cp fedge.toml /etc/fedge/fedge.toml
echo "now copy the repository's root.json (from \`fedge keys init\`) to /etc/fedge/root.json,"
echo "put FEDGE_MQTT__PASSWORD=... in /etc/fedge/secrets.env (mode 600), and install fedge-device.service"
