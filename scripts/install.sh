#!/usr/bin/env bash
# Set up everything Fedge needs on a fresh machine: .venv with every extra, and the Mosquitto broker.
# Idempotent: re-running it only installs what is missing. Usage: scripts/install.sh [venv-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "fedge needs Python >= 3.10; $("$PYTHON" --version 2>&1) found (set PYTHON=...)" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# One resolve for all extras (see constraints.txt for why it must be one).
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[all,dev]"

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing the Mosquitto broker with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    # The package may start a system broker on 1883; tests run their own private brokers.
  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  else
    echo "warning: Mosquitto is not installed and apt-get is not usable here;" \
      "install it (brew install mosquitto, dnf install mosquitto) before running the broker tests and demo" >&2
  fi
fi
touch "$VENV/.fedge-installed"
echo "fedge is installed in $VENV"
