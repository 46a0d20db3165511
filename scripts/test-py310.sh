#!/usr/bin/env bash
# The edge-side tests once more under Python 3.10, the Python of JetPack 6 (Ubuntu 22.04), in .venv310 with only the
# edge, litert and dev extras. The model files come from our own export pipeline, run by the main venv (torch is not
# installed in .venv310). Skips with a one-line reason where no Python 3.10 exists. Idempotent: .venv310 is made once
# and reinstalled only when pyproject.toml, constraints.txt or this script change; the exported model is cached.
# Usage: scripts/test-py310.sh [pytest options for both runs]   Environment: PYTHON310, VENV (main venv: .venv),
# VENV310 (.venv310)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VENV310=${VENV310:-.venv310}
STAMP=$VENV310/.fedge-installed
HEAVY='torch|flwr|fastapi|sqlalchemy|ray'
# The device side: runtime, backends, integrity, bad input, breaker, fallback through a real broker and real workers,
# wire format and error table, reconnects and the many-clients loop, configuration, the CLI on a model directory,
# and the light-import check.
TESTS=(
  tests/edge
  tests/test_wire.py
  tests/test_outcomes.py
  tests/test_reconnect.py
  tests/test_mqtt_loop.py
  tests/test_config.py
  tests/test_mosquitto.py
  tests/test_cli.py
  tests/test_exported_members.py
)

is_python310() {
  [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1
}

find_python310() {
  if [ -n "${PYTHON310:-}" ]; then
    is_python310 "$PYTHON310" && echo "$PYTHON310"
    return
  fi
  local candidate version
  candidate=$(command -v python3.10 || true)  # a pyenv shim is on PATH even where it cannot run: try it
  if is_python310 "$candidate"; then echo "$candidate"; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.[0-9]+)?$' | sort -t. -k3 -n -r); do
      candidate=$(PYENV_VERSION=$version pyenv which python3.10 2>/dev/null || true)
      if is_python310 "$candidate"; then echo "$candidate"; return; fi
    done
  fi
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
    if is_python310 "$candidate"; then echo "$candidate"; return; fi
  done
}

PY310=$(find_python310 || true)
if [ -z "$PY310" ]; then
  if [ -n "${PYTHON310:-}" ]; then
    echo "PYTHON310=$PYTHON310 is not a working Python 3.10" >&2
    exit 1
  fi
  echo "skipping the Python 3.10 edge tests: no python3.10 found (set PYTHON310=...)"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "the Python 3.10 edge tests need the main venv ($VENV, make install) to export their model" >&2
  exit 1
fi

if ! is_python310 "$VENV310/bin/python"; then
  rm -rf "$VENV310"
  "$PY310" -m venv "$VENV310"
  "$VENV310/bin/python" -m pip install --quiet --upgrade pip
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ constraints.txt -nt "$STAMP" ] || [ scripts/test-py310.sh -nt "$STAMP" ]; then
  echo "installing fedge[edge,litert,dev] into $VENV310 ($("$VENV310/bin/python" --version))"
  "$VENV310/bin/python" -m pip install --quiet -c constraints.txt -e ".[edge,litert,dev]"
  heavy=$("$VENV310/bin/python" -m pip list --format=freeze | cut -d= -f1 | grep -ixE "$HEAVY" || true)
  if [ -n "$heavy" ]; then
    echo "the edge extras pulled in what a device must not need: $(echo "$heavy" | tr '\n' ' ')" >&2
    exit 1
  fi
  touch "$STAMP"
fi

# The reference model, exported by the main venv from this checkout's code; cached under a hash of that code.
key=$(cat pyproject.toml constraints.txt tests/reference_model.py $(find federation sdk -name '*.py' | sort) | sha256sum | cut -c1-16)
MODELS=$(cd "$VENV310" && pwd)/models-$key
if [ ! -f "$MODELS/.done" ]; then
  rm -rf "$VENV310"/models-*
  echo "exporting the reference model with $VENV/bin/python into $MODELS"
  if ! PYTHONPATH="$PWD:$PWD/tests" "$VENV/bin/python" -m reference_model "$MODELS" >"$VENV310/export.log" 2>&1; then
    cat "$VENV310/export.log" >&2
    echo "exporting the reference model failed (log above, and in $VENV310/export.log)" >&2
    exit 1
  fi
  touch "$MODELS/.done"
fi

PY310_ABS=$(cd "$VENV310" && pwd)/bin/python
echo "running the edge tests under $("$PY310_ABS" --version)"
FEDGE_TEST_MODELS=$MODELS "$PY310_ABS" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@"
# OTA and the device program need the cloud (FastAPI, SQLAlchemy, signing), which has no place on a device: the main
# venv runs the cloud side of those tests, and each device program they start runs under Python 3.10.
echo "running the device-subprocess OTA tests: the cloud under $("$VENV/bin/python" --version), the devices under 3.10"
FEDGE_TEST_MODELS=$MODELS FEDGE_TEST_DEVICE_PYTHON=$PY310_ABS \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m device_subprocess tests/ota "$@"
