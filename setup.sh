#!/usr/bin/env bash
# Creates .venv (if missing) and installs spin editable with its dev extras, and the tfds extra where
# TensorFlow installs. Idempotent: it reinstalls only when pyproject.toml changed since the last
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
  # TensorFlow is large and not built for every platform and Python: without it only the tfds test skips
  .venv/bin/python -m pip install -q -e '.[tfds]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import tensorflow_datasets" 2>/dev/null ||
    echo "setup: the tfds extra (tensorflow, tensorflow-datasets) did not install here; its test will be skipped"
  echo "$want" > "$stamp"
fi
