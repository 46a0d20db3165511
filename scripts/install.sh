#!/usr/bin/env bash
# Set up everything Fedge needs on a fresh machine: .venv with every extra, the Mosquitto broker, and Chromium.
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

# Debian packages go in with apt-get, as root or through sudo; elsewhere we say what to install.
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
apt_usable() { command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; }; }
apt_install() { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if apt_usable; then
    echo "installing the Mosquitto broker with apt-get" >&2
    apt_install mosquitto
    # The package may start a system broker on 1883; tests run their own private brokers.
  else
    echo "warning: Mosquitto is not installed and apt-get is not usable here;" \
      "install it (brew install mosquitto, dnf install mosquitto) before running the broker tests and demo" >&2
  fi
fi
# Chromium serves only the dashboard's browser test, which skips without it: best effort, never fatal.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Chromium (the dashboard's browser test) with apt-get" >&2
  { apt_usable && apt_install chromium; } ||
    echo "warning: Chromium is not installed; tests/ota/test_dashboard.py skips its browser test" >&2
fi
touch "$VENV/.fedge-installed"
echo "fedge is installed in $VENV"
