#!/usr/bin/env bash
# bash run.sh                 set up .venv if missing, train the WS-ConvMixer on the embedded digits
# bash run.sh --cfg F K V ... the same job on your config; NUM_GPUS > 1 on a CUDA machine launches
#                             one process per GPU through torchrun
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash setup.sh
if [ $# -eq 0 ]; then
  set -- --cfg configs/digits/WS-ConvMixer-digits.yaml
fi
exec .venv/bin/spin launch "$@"
