"""scikit-learn's digits (1,797 8x8 images, 10 classes; shipped inside scikit-learn) written once
as an image folder, so it goes through the same pipeline as ImageNet.

The split is stratified and fixed (20% val, random_state 0); pixels 0..16 scale to 0..255 grey
PNGs. The folder is written into a temp folder and renamed into place, so concurrent ranks and
interrupted runs never see a half-written data set.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
from PIL import Image

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "spin", "digits")
_MARKER = "SPIN_DIGITS_V1"


def default_digits_dir() -> str:
    return os.environ.get("SPIN_DIGITS_DIR", DEFAULT_DIR)


def prepare_digits(root: str = "") -> str:
    """Ensure ROOT/{train,val}/<digit>/<index>.png exists; returns ROOT."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = root or default_digits_dir()
    if os.path.isfile(os.path.join(root, _MARKER)):
        return root
    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(idx, test_size=0.2, random_state=0, stratify=digits.target)
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".digits_tmp_", dir=parent)
    try:
        for split, ids in (("train", train_idx), ("val", val_idx)):
            for i in sorted(ids):
                label = int(digits.target[i])
                folder = os.path.join(tmp, split, str(label))
                os.makedirs(folder, exist_ok=True)
                pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(os.path.join(folder, f"{i:04d}.png"))
        open(os.path.join(tmp, _MARKER), "w").close()
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first, or root holds something else
            if not os.path.isfile(os.path.join(root, _MARKER)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
