"""The image-folder data set (ImageNet layout): ROOT/{train,val}/<class>/<image>.

The split folders are DATA.TRAIN_SPLIT / DATA.VAL_SPLIT (train, val); where that folder is absent,
timm's synonyms stand in for it (training for train; valid, validation, eval, evaluation for val).
Classes are the sorted sub-folder names of ``train``, numbered 0..N-1; ``val`` must have the same
class folders, and every class folder must hold an image. Class folders may be symlinks (shared
storage); inside them symlinked folders are followed only into places no other class owns and
not seen before, so a link loop ends and a link into another class does not relabel its images:
each image file is counted once, under the class folder it really lives in.

An image that cannot be decoded, or is a decompression bomb (more than PIL's MAX_IMAGE_PIXELS), is
skipped with a warning: the sample comes back as None, and :func:`collate_skipping` drops it and
counts it in the batch. 16-bit greyscale images are scaled to 8 bits (not clipped).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import SpinError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(SpinError, ValueError):
    """A data set that cannot be used as given; the message says where and how to fix it."""


def split_name(requested: str, present) -> str:
    """The split to read for ``requested``: itself if ``present`` (the source's split names) has
    it, else the first of its timm synonyms there (a folder's validation/ for val), else itself
    (the reader then names what is missing)."""
    present = list(present)
    if requested in present:
        return requested
    from timm.data.dataset_factory import _EVAL_SYNONYM, _TRAIN_SYNONYM  # timm's own lists, in its order

    for group in (_TRAIN_SYNONYM, _EVAL_SYNONYM):
        if requested in group:
            return next((s for s in group if s in present), requested)
    return requested


def split_dir(root: str, requested: str, suffix: str = "") -> str:
    """The name of ROOT's entry for split ``requested`` (a folder, or a file ending in ``suffix``)."""
    present = [n[:len(n) - len(suffix)] for n in os.listdir(root) if n.endswith(suffix)] if os.path.isdir(root) else []
    return split_name(requested, present) + suffix


def list_classes(split_dir: str) -> list[str]:
    if not os.path.isdir(split_dir):
        raise DataError(f"data folder {split_dir!r} does not exist; DATA.PATH_TO_DATA_DIR must hold "
                        f"train/ and val/ with one sub-folder per class")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise DataError(f"data folder {split_dir!r} has no class sub-folders; expected "
                        f"{split_dir}/<class>/<image>")
    return classes


def check_splits(root: str, splits=("train", "val")) -> list[str]:
    """Class names, after checking that every split has the same class folders. ``splits`` are
    folder names as :func:`split_dir` resolved them."""
    if not root:
        raise DataError("DATA.PATH_TO_DATA_DIR is empty; set it to a folder holding train/ and val/")
    if not os.path.isdir(root):
        raise DataError(f"DATA.PATH_TO_DATA_DIR {root!r} does not exist")
    found = {s: list_classes(os.path.join(root, s)) for s in splits}
    first = found[splits[0]]
    for s in splits[1:]:
        if found[s] != first:
            only_a = sorted(set(first) - set(found[s]))
            only_b = sorted(set(found[s]) - set(first))
            raise DataError(
                f"class folders differ between {root}/{splits[0]} and {root}/{s}: only in "
                f"{splits[0]}: {only_a[:5]}{'...' if len(only_a) > 5 else ''}; only in {s}: "
                f"{only_b[:5]}{'...' if len(only_b) > 5 else ''}; both splits need the same classes")
    return first


def _walk_class(class_dir: str, owned_elsewhere: set, seen: set) -> list[str]:
    """Image files under one class folder, in sorted order, following symlinked folders only
    where they lead to a real folder not yet visited and not owned by another class."""
    out = []
    for dirpath, dirnames, files in os.walk(class_dir, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen or any(real == o or real.startswith(o + os.sep) for o in owned_elsewhere):
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            real = os.path.realpath(path)
            if f.lower().endswith(IMG_EXTENSIONS) and real not in seen and os.path.isfile(real):
                seen.add(real)
                out.append(path)
    return out


def load_rgb(path: str) -> Image.Image:
    """An RGB image; 16-bit greyscale is scaled to 8 bits; a decompression bomb raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit int) greyscale
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
                return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)).convert("RGB")
            return im.convert("RGB")


class ImageFolder(Dataset):
    """``per_class`` > 0 keeps the first ``per_class`` images of each class (sorted order)."""

    def __init__(self, root: str, split: str, transform=None, classes=None, per_class: int = 0):
        split_dir = os.path.join(root, split)
        self.root, self.split = root, split
        self.classes = classes or list_classes(split_dir)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        real = {c: os.path.realpath(os.path.join(split_dir, c)) for c in self.classes}
        self.samples, seen = [], set(real.values())
        for c in self.classes:
            files = _walk_class(os.path.join(split_dir, c), set(real.values()) - {real[c]}, seen)
            if not files:
                raise DataError(f"class folder {os.path.join(split_dir, c)!r} holds no images "
                                f"({', '.join(IMG_EXTENSIONS)}); add images or remove the folder "
                                f"(from every split)")
            self.samples += [(f, self.class_to_idx[c]) for f in (files[:per_class] if per_class else files)]
        self.targets = [t for _, t in self.samples]
        self.transform = transform

    def check_readable(self) -> None:
        """Raise DataError unless some image of the split decodes. Stops at the first that does,
        so a good data set pays one decode; a split where every file is broken (all skipped, a
        run on 0 images) is refused before the run writes anything."""
        first = None
        for path, _ in self.samples:
            try:
                load_rgb(path)
                return
            except Exception as e:  # noqa: BLE001  (what __getitem__ would skip)
                first = first or f"{path}: {type(e).__name__}: {e}"
        raise DataError(f"none of the {len(self.samples)} images of {os.path.join(self.root, self.split)!r} can be "
                        f"read (the first: {first}); replace the files or point DATA.PATH_TO_DATA_DIR at readable "
                        f"images")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, target = self.samples[index]
        try:
            img = load_rgb(path)
        except Exception as e:  # truncated, not an image, unreadable, a decompression bomb
            warnings.warn(f"skipping unreadable image {path}: {type(e).__name__}: {e}")
            return None
        return (self.transform(img) if self.transform else img), target


def collate_skipping(batch):
    """Default collation of the readable samples -> (images, targets, number skipped)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    images = torch.stack([b[0] for b in good])
    targets = torch.tensor([b[1] for b in good])
    return images, targets, skipped
