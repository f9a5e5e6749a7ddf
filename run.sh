#!/usr/bin/env bash
# Sets up .venv if missing, then runs the main job. With no arguments: builds the default model
# and prints its summary (training arrives with the engine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash setup.sh
exec .venv/bin/python -c "
from spin.config import load_config
from spin.models import build_model
m = build_model(load_config(['configs/WS-ConvMixer.yaml']))
print(m.plan)
print('parameters', sum(p.numel() for p in m.parameters()))
"
