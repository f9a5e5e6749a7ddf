"""SlowFast/SPIN habit: ``python tools/fuse_weights.py --cfg configs/WFWS-ConvMixer.yaml
TRAIN.CHECKPOINT_FILE_PATH ck.pyth [OUTPUT_DIR d]`` = ``spin fuse``."""
import sys

from spin.cli import main

if __name__ == "__main__":
    sys.exit(main(["fuse", *sys.argv[1:]]))
