"""``python -m spin.models SCRIPT.py [ARGS...]``: run one of timm's scripts (train.py, validate.py,
benchmark.py) with spin's models in timm's registry (``--model spin_<name>``)."""
import sys

from .timm_interop import run_timm_script

if len(sys.argv) < 2:
    sys.exit("usage: python -m spin.models SCRIPT.py [ARGS...]  (timm's train.py, validate.py or benchmark.py, "
             "with --model spin_<name>)")
run_timm_script(sys.argv[1], sys.argv[2:])
