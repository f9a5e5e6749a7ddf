#!/usr/bin/env bash
# Creates .venv (if missing) and installs spin editable with its dev extras (and the tfds extra with
# SPIN_TFDS=1). Idempotent: it reinstalls only when pyproject.toml changed since the last
# successful install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.spin-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import spin, torch, timm, pytest" 2>/dev/null; then
  echo "setup: installing spin and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import spin, torch, timm, pytest" || { echo "setup: install failed" >&2; exit 1; }
  # TensorFlow (the tfds extra, 1.3 GB) is not installed here: it would double the setup time of every
  # CI run; its test runs where it is installed (SPIN_TFDS=1 bash setup.sh) and skips elsewhere
  if [ "${SPIN_TFDS:-0}" = 1 ]; then
    .venv/bin/python -m pip install -q -e '.[tfds]' 2>&1 | grep -v "^WARNING: Location" || true
  fi
  echo "$want" > "$stamp"
fi
