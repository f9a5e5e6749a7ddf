"""CIFAR-10/100 through torchvision. Downloads only with DATA.DOWNLOAD True."""
from __future__ import annotations


from .folder import DataError


def cifar(name: str, root: str, train: bool, transform, download: bool, per_class: int = 0):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    try:
        ds = cls(root=root, train=train, transform=transform, download=download)
    except RuntimeError as e:
        raise DataError(
            f"{name} not found under DATA.PATH_TO_DATA_DIR {root!r} ({e}); put the extracted "
            f"python version there or set DATA.DOWNLOAD True to fetch it") from None
    ds.classes = list(ds.classes)
    if per_class:  # the first N images of each class, in file order
        counts: dict = {}
        keep = []
        for i, t in enumerate(ds.targets):
            if counts.get(t, 0) < per_class:
                counts[t] = counts.get(t, 0) + 1
                keep.append(i)
        ds.data, ds.targets = ds.data[keep], [ds.targets[i] for i in keep]
    return ds
