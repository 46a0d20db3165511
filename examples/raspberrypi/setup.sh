#!/usr/bin/env bash
# Install the Fedge device runtime on Raspberry Pi OS (64-bit, Bookworm or later), from this checkout.
# Run it from a clone of the repository on the Pi: `examples/raspberrypi/setup.sh`. It builds a wheel of the checkout
# (`python3 -m pip wheel --no-deps`), or installs FEDGE_WHEEL=/path/to/fedge-*.whl if you built one elsewhere.
# The device needs no torch: the `edge` extra (onnxruntime, paho-mqtt, tuf) and `litert` (FEDGE_EXTRAS to change).
# On NumPy 1.x images use FEDGE_EXTRAS=edge and install tflite-runtime into /opt/fedge/.venv instead.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CHECKOUT=$(cd "$HERE/../.." && pwd)
EXAMPLE=${FEDGE_EXAMPLE:-$HERE}  # whose fedge.toml and fedge-device.service to install (the Jetson's setup.sh sets it)
if [ -z "${FEDGE_WHEEL:-}" ]; then
  python3 -m pip wheel --no-deps -w "$CHECKOUT/dist" "$CHECKOUT"
  FEDGE_WHEEL=$(ls -t "$CHECKOUT"/dist/fedge-*.whl | head -n 1)
fi
sudo useradd --system --home /var/lib/fedge --create-home fedge 2>/dev/null || true
sudo install -d -o fedge -g fedge /opt/fedge
sudo install -d -m 755 /etc/fedge
sudo install -m 644 "$FEDGE_WHEEL" /opt/fedge/  # where the fedge user can read it
sudo -u fedge python3 -m venv /opt/fedge/.venv
sudo -u fedge /opt/fedge/.venv/bin/pip install "/opt/fedge/$(basename "$FEDGE_WHEEL")[${FEDGE_EXTRAS:-edge,litert}]"
sudo install -m 644 "$EXAMPLE/fedge.toml" /etc/fedge/fedge.toml
[ -e /etc/fedge/secrets.env ] || sudo install -m 600 /dev/null /etc/fedge/secrets.env
sudo install -m 644 "$EXAMPLE/fedge-device.service" /etc/systemd/system/fedge-device.service
echo "installed. Before 'sudo systemctl enable --now fedge-device', provide the files the unit's comments list:"
echo "/etc/fedge/root.json, /etc/fedge/ca.pem, FEDGE_MQTT__PASSWORD=... in /etc/fedge/secrets.env, /var/lib/fedge/sensor.npy"
