"""The image-folder data set (ImageNet layout): ROOT/{train,val}/<class>/<image>.

Classes are the sorted sub-folder names of ``train``, numbered 0..N-1; ``val`` must have the same
class folders. An image that cannot be decoded is skipped with a warning: the sample comes back as
None, and :func:`collate_skipping` drops it and counts it in the batch.
"""
from __future__ import annotations

import os
import warnings

import torch
from PIL import Image
from torch.utils.data import Dataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data set that cannot be used as given; the message says where and how to fix it."""


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
    """Class names, after checking that every split has the same class folders."""
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


class ImageFolder(Dataset):
    def __init__(self, root: str, split: str, transform=None, classes=None):
        split_dir = os.path.join(root, split)
        self.classes = classes or list_classes(split_dir)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        for c in self.classes:
            cdir = os.path.join(split_dir, c)
            for dirpath, _, files in sorted(os.walk(cdir, followlinks=True)):
                for f in sorted(files):
                    if f.lower().endswith(IMG_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, f), self.class_to_idx[c]))
        if not self.samples:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {split_dir!r}")
        self.targets = [t for _, t in self.samples]
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, target = self.samples[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # truncated, not an image, unreadable
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
