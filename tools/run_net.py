"""SlowFast habit: ``python tools/run_net.py --cfg FILE [KEY VALUE ...]`` = ``spin train``."""
import sys

from spin.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
