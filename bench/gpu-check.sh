#!/usr/bin/env bash
# The GPU check: everything spin claims about CUDA, measured in one run on one GPU (< 8 minutes on
# an H100-class GPU). Writes every result under OUT (default bench/results/gpu-check-<date>/) and a
# summary.md with the README's table.
#
#   bash bench/gpu-check.sh                 # on a CUDA machine
#   bash bench/gpu-check.sh --dry-run       # print the steps, run nothing
#   bash bench/gpu-check.sh --cpu           # the same steps at toy sizes on the CPU (what the tests run)
#   bash bench/gpu-check.sh --out DIR       # results elsewhere
#
# Steps: (1) spin bench --device cuda (bf16 autocast, channels_last) for the ConvMixer presets and
# DeiT-S; (2) the same for the CIFAR preset under torch.compile (compile on vs off); (3) a 200-step
# AMP training run of the WS-ConvMixer 768/32/14/3 through the real trainer (digits upscaled to 224
# px), img/s and peak memory from its json_stats; (4) the same run with TRAIN.COMPILE True; (5) a
# 2-process DDP smoke run (NCCL; with one GPU both ranks share it, and if NCCL refuses that, gloo).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE=cuda DRY=0 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --cpu) MODE=cpu ;;
    --out) OUT="$2"; shift ;;
    *) echo "gpu-check: unknown argument $1 (use --dry-run, --cpu, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-bench/results/gpu-check-$(date +%Y%m%d)}
SPIN=${SPIN:-.venv/bin/spin}
PY=${PY:-.venv/bin/python}
if [ "$MODE" = cuda ]; then
  PRESETS="imagenet,cifar,deit" COMPILE_PRESET=cifar STEPS=200 BATCH=64 CROP=224 CFG=configs/WS-ConvMixer.yaml
  GPUS=1 BACKEND=nccl DEVICE=cuda REPEATS=5 WORKERS=8
  DDP_CFG=configs/digits/WS-ConvMixer-digits.yaml
else
  PRESETS="tiny,deit_tiny" COMPILE_PRESET="" STEPS=5 BATCH=8 CROP=32 CFG=configs/tests/tiny-ws.yaml
  GPUS=0 BACKEND=gloo DEVICE=cpu REPEATS=1 WORKERS=0
  DDP_CFG=configs/tests/tiny-ws.yaml
fi

step() {  # step NAME COMMAND...: run (or print) one step, its output in OUT/NAME.log, status kept
  local name=$1; shift
  echo "== $name: $*"
  [ "$DRY" = 1 ] && return 0
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name $rc $((SECONDS - t0))" >> "$OUT/steps.txt"
  [ $rc -eq 0 ] || echo "   failed (exit $rc): see $OUT/$name.log" >&2
  return 0
}

if [ "$DRY" = 0 ]; then
  if [ "$MODE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: CUDA is not available here; run with --cpu for the toy-size CPU path" >&2
    exit 2
  fi
  mkdir -p "$OUT" && : > "$OUT/steps.txt"
  "$PY" -c "import torch, platform; print(torch.__version__, platform.python_version(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" > "$OUT/machine.txt"
fi
TRAIN_OPTS=(TRAIN.DATASET digits TEST.DATASET digits MODEL.NUM_CLASSES 10 DATA.TRAIN_CROP_SIZE "$CROP"
  DATA.TEST_CROP_SIZE "$CROP" TRAIN.BATCH_SIZE "$BATCH" TRAIN.MAX_ITERS_PER_EPOCH "$STEPS" SOLVER.MAX_EPOCH 1
  TRAIN.MIXED_PRECISION True TRAIN.CHANNELS_LAST True NUM_GPUS "$GPUS" DATA_LOADER.NUM_WORKERS "$WORKERS"
  AUG.ENABLE False MIXUP.ENABLE False MODEL.LOSS_FUNC cross_entropy LOG_JSON_TO_CONSOLE True
  TEST.ENABLE False TRAIN.EVAL_PERIOD 1 TEST.BATCH_SIZE "$BATCH" LOG_PERIOD 50 TRAIN.CHECKPOINT_FILE_PATH ""
  TRAIN.AUTO_RESUME False DATA.PATH_TO_DATA_DIR "" DATA.INPUT_CHANNEL_NUM "[3]")

step bench "$SPIN" bench --preset "$PRESETS" --device "$DEVICE" --repeats "$REPEATS" --out "$OUT/bench"
if [ -n "$COMPILE_PRESET" ]; then
  step bench_compile "$SPIN" bench --preset "$COMPILE_PRESET" --device "$DEVICE" --compile --out "$OUT/bench"
fi
step train_amp "$SPIN" train --cfg "$CFG" "${TRAIN_OPTS[@]}" OUTPUT_DIR "$OUT/train_amp"
step train_amp_compile "$SPIN" train --cfg "$CFG" "${TRAIN_OPTS[@]}" TRAIN.COMPILE True OUTPUT_DIR "$OUT/train_amp_compile"
DDP=(torchrun --standalone --nproc_per_node 2 -m spin.cli train --cfg "$DDP_CFG" NUM_GPUS 2 SOLVER.MAX_EPOCH 1
  TRAIN.MAX_ITERS_PER_EPOCH 10 TRAIN.BATCH_SIZE 16 TEST.BATCH_SIZE 16 TEST.ENABLE False)
if [ "$MODE" = cpu ]; then
  DDP+=(TRAIN.DATASET digits TEST.DATASET digits MODEL.NUM_CLASSES 10 DATA.PATH_TO_DATA_DIR "" NUM_GPUS 0)
fi
step ddp_"$BACKEND" "$(dirname "$PY")/${DDP[0]}" "${DDP[@]:1}" DIST_BACKEND "$BACKEND" OUTPUT_DIR "$OUT/ddp_$BACKEND"
if [ "$DRY" = 0 ] && [ "$BACKEND" = nccl ] && ! grep -q "^ddp_nccl 0 " "$OUT/steps.txt"; then
  step ddp_gloo "$(dirname "$PY")/${DDP[0]}" "${DDP[@]:1}" DIST_BACKEND gloo OUTPUT_DIR "$OUT/ddp_gloo"
fi
[ "$DRY" = 1 ] && exit 0
"$PY" -c "import sys; from spin.tools.bench import gpu_check_report; print(gpu_check_report(sys.argv[1]))" "$OUT" \
  | tee "$OUT/summary.md"
# exit 1 if a step failed (a refused NCCL run on one GPU counts as passed when gloo then ran)
awk '$2 != 0 && !($1 == "ddp_nccl") {bad=1} $1 ~ /^ddp_/ && $2 == 0 {ddp=1} END {exit (bad || !ddp)}' "$OUT/steps.txt"
