"""The data formats timm reads (tar, hfds/, hfids/, wds/, tfds/, torch/), on files the tests write:
the digits job trains from WebDataset shards and from a Hugging Face dataset on disk, classes are
stable, iterable sets shard by rank and worker, evaluate exactly, resume exactly, and a missing
or broken source is one clear error before the run writes anything."""
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from spin.cli import main
from spin.config import ConfigError, check_cfg, load_config
from spin.data import DataError, ImageFolder, build_dataset, build_loader, prepare_digits, set_epoch
from spin.data.shards import write_shards
from spin.engine import checkpoint as cu
from spin.engine.loop import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "configs", "digits", "WS-ConvMixer-digits.yaml")
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _samples(root, split):
    """(PNG bytes, 'png', label) of spin's digits folder split."""
    for path, label in ImageFolder(root, split).samples:
        with open(path, "rb") as f:
            yield f.read(), "png", label


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return prepare_digits(str(tmp_path_factory.mktemp("digits") / "digits"))


@pytest.fixture(scope="module")
def digits_wds(digits, tmp_path_factory):
    """The digits as shards: 4 train shards of <= 400 images, 2 validation shards (timm's names)."""
    out = str(tmp_path_factory.mktemp("wds"))
    write_shards(out, "train", _samples(digits, "train"), 400, "digits")
    write_shards(out, "validation", _samples(digits, "val"), 200, "digits")
    return out


@pytest.fixture(scope="module")
def digits_hf(digits, tmp_path_factory):
    """The digits as a Hugging Face DatasetDict written by save_to_disk (train, validation),
    labels a ClassLabel with names."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})

    def split(name):
        rows = list(_samples(digits, name))
        return datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b, _, _ in rows],
                                           "label": [y for _, _, y in rows]}, features=features)

    out = str(tmp_path_factory.mktemp("hf") / "digits")
    datasets.DatasetDict(train=split("train"), validation=split("val")).save_to_disk(out)
    return out


def _train(out, *opts):
    """spin train of the digits job, a few iterations; the run's json_stats lines."""
    rc = main(["train", "--cfg", DIGITS, "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "1",
               "TRAIN.MAX_ITERS_PER_EPOCH", "12", "TENSORBOARD.ENABLE", "False", "LOG_PERIOD", "1",
               "LOG_JSON_TO_CONSOLE", "False", *opts])
    assert rc == 0
    with open(os.path.join(out, "stdout.log")) as f:
        return [json.loads(line.split("json_stats: ", 1)[1]) for line in f if "json_stats: " in line]


def _learned(stats, n_val):
    losses = [s["loss"] for s in stats if s["_type"] == "train_iter"]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    ck = next(s for s in stats if s["_type"] == "checkpoint_eval")
    val = next(s for s in stats if s["_type"] == "val_epoch")
    assert ck["agree"] and ck["samples"] == val["samples"] == n_val and ck["top1_err"] == val["top1_err"]
    return ck


# ------------------------------------------------------------------ the digits job from each format
def test_digits_train_from_webdataset_shards_and_test_the_checkpoint(digits_wds, tmp_path, capsys):
    out = tmp_path / "run"
    data = ["TRAIN.DATASET", "wds/digits", "TEST.DATASET", "wds/digits", "DATA.PATH_TO_DATA_DIR", digits_wds]
    ck = _learned(_train(out, *data), 360)
    log = (out / "stdout.log").read_text()
    assert "wds/digits has integer labels only: its classes are recorded as '0'..'9'" in log
    assert "TRAIN.DATASET wds/digits is iterable: an epoch is 1472 images per process" in log  # 1437 -> 23 x 64
    stored = cu.load_checkpoint(ck["checkpoint"])
    assert stored["classes"] == [str(i) for i in range(10)]
    capsys.readouterr()
    assert main(["test", "--cfg", DIGITS, "OUTPUT_DIR", str(out), "TEST.CHECKPOINT_FILE_PATH", ck["checkpoint"],
                 "LOG_JSON_TO_CONSOLE", "False", *data]) == 0
    assert "on 360 images of wds/digits" in capsys.readouterr().out


def test_digits_train_from_a_hugging_face_dataset_on_disk(digits_hf, tmp_path, capsys):
    out = tmp_path / "run"
    # DATA.VAL_SPLIT val (the default) reads the dataset's "validation" split: timm's synonyms
    data = ["TRAIN.DATASET", f"hfds/{digits_hf}", "TEST.DATASET", f"hfds/{digits_hf}",
            "DATA.PATH_TO_DATA_DIR", str(tmp_path / "hf-cache")]
    ck = _learned(_train(out, *data), 360)
    assert cu.load_checkpoint(ck["checkpoint"])["classes"] == NAMES  # the ClassLabel names, in label order
    assert "train 1437 / val 360 images, 10 classes" in (out / "stdout.log").read_text()
    assert main(["test", "--cfg", DIGITS, "OUTPUT_DIR", str(out), "TEST.CHECKPOINT_FILE_PATH", ck["checkpoint"],
                 *data]) == 0


def test_streamed_hugging_face_parquet_needs_and_takes_its_size(digits_hf, tmp_path):
    import datasets

    folder = tmp_path / "pq"
    folder.mkdir()
    dd = datasets.load_from_disk(digits_hf)
    for split in ("train", "validation"):
        dd[split].shuffle(seed=0).select(range(40)).to_parquet(str(folder / f"{split}.parquet"))  # all classes
    opts = ["TRAIN.DATASET", f"hfids/{folder}", "TEST.DATASET", f"hfids/{folder}", "DATA.PATH_TO_DATA_DIR",
            str(tmp_path / "cache"), "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32"]
    with pytest.raises(DataError, match=r"split 'train'\) cannot be read by timm \(ValueError: Dataset length is "
                                        r"unknown.*needs DATA.TRAIN_NUM_SAMPLES"):
        build_dataset(load_config([DIGITS], opts), "train")  # local files: the builder records no split sizes
    cfg = load_config([DIGITS], opts + ["DATA.TRAIN_NUM_SAMPLES", "40", "DATA.VAL_NUM_SAMPLES", "40"])
    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    # ... nor features before reading: integer labels, said so
    assert train_set.classes == [str(i) for i in range(10)] == val_set.classes and train_set.integer_labels
    loader = build_loader(cfg, train_set, True, 16)
    orders = []
    for epoch, seed in ((0, 7), (1, 8), (0, 7)):  # each epoch its own order, the same again on a resume
        set_epoch(loader, epoch, seed)
        orders.append([int(t) for _, ts, _ in loader for t in ts])
    assert len(loader) == 3 and len(orders[0]) == 48  # 40 -> 48: whole batches
    assert orders[0] == orders[2] != orders[1]
    labels = [int(t) for _, ts, _ in build_loader(cfg, val_set, False, 16) for t in ts]
    assert len(labels) == 40


def test_image_folder_tars_with_timm_split_synonyms(tmp_path):
    folder = make_image_folder(tmp_path / "f", classes=("cat", "dog", "owl"), n_train=4, n_val=2)
    data = tmp_path / "tars"
    data.mkdir()
    for split, name in (("train", "train.tar"), ("val", "validation.tar")):
        with tarfile.open(data / name, "w") as tf:
            tf.add(os.path.join(folder, split), arcname=split)
    cfg = load_config([DIGITS], ["TRAIN.DATASET", "tar", "TEST.DATASET", "tar", "DATA.PATH_TO_DATA_DIR", str(data),
                                 "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32"])
    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert train_set.classes == val_set.classes == ["cat", "dog", "owl"] and (len(train_set), len(val_set)) == (12, 6)
    img, label = val_set[5]
    assert img.shape == (3, 32, 32) and label == 2
    # a val tar with other classes: refused before training (its labels would not line up)
    with tarfile.open(data / "validation.tar", "w") as tf:
        tf.add(os.path.join(folder, "val", "cat"), arcname="val/cat")
        tf.add(os.path.join(folder, "val", "owl"), arcname="val/owl")
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    from spin.engine.trainer import train

    with pytest.raises(DataError, match=r"the train and val splits name different classes .*only in train: \['dog'\]"):
        train(cfg)
    assert not os.path.exists(tmp_path / "out")


def test_torchvision_image_folder_and_spin_folder_synonyms(tmp_path):
    folder = make_image_folder(tmp_path / "f", classes=("a", "b"), n_train=3, n_val=2)
    os.rename(os.path.join(folder, "val"), os.path.join(folder, "validation"))
    for name in ("torch/image_folder", "folder"):
        cfg = load_config([DIGITS], ["TRAIN.DATASET", name, "TEST.DATASET", name, "DATA.PATH_TO_DATA_DIR", folder,
                                     "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32"])
        val = build_dataset(cfg, "val")
        assert val.classes == ["a", "b"] and len(val) == 4 and val[0][0].shape == (3, 32, 32), name


def _tfds_builder():
    import tensorflow_datasets as tfds

    class SpinTestDigits(tfds.core.GeneratorBasedBuilder):
        """Eight-by-eight images, three named classes; offline."""
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(names=["red", "green", "blue"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(24), "validation": self._generate_examples(9)}

        def _generate_examples(self, n):
            for i in range(n):
                img = np.zeros((8, 8, 3), np.uint8)
                img[..., i % 3] = 255
                yield i, {"image": img, "label": i % 3}

    return SpinTestDigits


def test_tensorflow_datasets_through_timm(tmp_path):
    pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed (SPIN_TFDS=1 bash setup.sh installs it)")
    _tfds_builder()(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    cfg = load_config([DIGITS], ["TRAIN.DATASET", "tfds/spin_test_digits", "TEST.DATASET", "tfds/spin_test_digits",
                                 "DATA.PATH_TO_DATA_DIR", str(tmp_path / "tfds"), "DATA.TRAIN_CROP_SIZE", "16",
                                 "DATA.TEST_CROP_SIZE", "16", "DATA.VAL_CROP_RATIO", "1.0"])
    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")  # val -> validation
    assert train_set.classes == val_set.classes == ["red", "green", "blue"]
    loader = build_loader(cfg, train_set, True, 8)
    orders = []
    for epoch, seed in ((0, 7), (1, 8), (0, 7)):  # each epoch its own order, the same again on a resume
        set_epoch(loader, epoch, seed)
        orders.append([int(t) for _, ts, _ in loader for t in ts])
    assert len(loader) == 3 and len(orders[0]) == 24 and orders[0] == orders[2] != orders[1]
    images, labels = zip(*[(x, int(t)) for xs, ts, _ in build_loader(cfg, val_set, False, 4) for x, t in zip(xs, ts)])
    assert sorted(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for x, t in zip(images, labels):  # the colour is the label
        assert int(x.mean((1, 2)).argmax()) == t


def test_a_missing_optional_package_is_one_clear_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith(("tensorflow", "webdataset")) else real(name, *a))
    for name, needle in (("tfds/imagenet2012", r"tensorflow, tensorflow_datasets package\(s\).*pip install "
                                               r"'spin\[tfds\]' \(or pip install tensorflow-cpu tensorflow-datasets\)"),
                         ("wds/imagenet", r"webdataset package\(s\).*pip install 'spin\[data\]'")):
        cfg = load_config([DIGITS], ["TRAIN.DATASET", name, "DATA.PATH_TO_DATA_DIR", str(tmp_path)])
        with pytest.raises(DataError, match=needle):
            build_dataset(cfg, "train")


# ------------------------------------------------------------------ iterable sets: shards, epochs, resume
def _index_shards(folder, n_shards, per_shard):
    """Shards whose image i is a flat grey of value i (recoverable after the eval transform)."""
    def gen():
        for i in range(n_shards * per_shard):
            b = io.BytesIO()
            Image.new("L", (8, 8), i).save(b, format="PNG")
            yield b.getvalue(), "png", i % 2
    write_shards(str(folder), "train", gen(), per_shard, "idx")
    write_shards(str(folder), "validation", gen(), per_shard, "idx")
    return ["TRAIN.DATASET", "wds/idx", "TEST.DATASET", "wds/idx", "DATA.PATH_TO_DATA_DIR", str(folder),
            "MODEL.NUM_CLASSES", "2", "DATA.TRAIN_CROP_SIZE", "8", "DATA.TEST_CROP_SIZE", "8",
            "DATA.VAL_CROP_RATIO", "1.0", "DATA.TRAIN_JITTER_SCALES_RELATIVE", "[1.0, 1.0]",
            "DATA.TRAIN_JITTER_ASPECT_RELATIVE", "[1.0, 1.0]", "DATA.MEAN", "[0.0, 0.0, 0.0]",
            "DATA.STD", "[1.0, 1.0, 1.0]"]


def _indices(loader):
    return [round(float(x[0, 0, 0]) * 255) for xs, _, _ in loader for x in xs]


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_read_disjoint_shares_of_the_shards(tmp_path, workers):
    opts = _index_shards(tmp_path, 4, 6)
    cfg = load_config([DIGITS], opts + ["DATA_LOADER.NUM_WORKERS", str(workers)])
    seen = []
    for rank in (0, 1):  # no process group: the loader tells the reader its rank
        ds = build_dataset(cfg, "train")
        loader = build_loader(cfg, ds, True, 3, rank=rank, world=2)
        set_epoch(loader, 0, 7)
        got = _indices(loader)
        assert len(got) == len(loader) * 3 == 12
        seen.append(set(got))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(24))
    # every epoch its own order, the same one again for the same (epoch, seed): resumable
    ds = build_dataset(cfg, "train")
    loader = build_loader(cfg, ds, True, 3, rank=0, world=2)
    orders = []
    for epoch, seed in ((0, 7), (1, 8), (0, 7)):
        set_epoch(loader, epoch, seed)
        orders.append(_indices(loader))
    assert orders[0] == orders[2] != orders[1]


def test_iterable_evaluation_counts_every_image_once(tmp_path):
    opts = _index_shards(tmp_path, 3, 5)  # 15 images, 3 shards over 2 workers: ragged last batches
    cfg = load_config([DIGITS], opts + ["DATA_LOADER.NUM_WORKERS", "2"])
    val_set = build_dataset(cfg, "val")
    assert sorted(_indices(build_loader(cfg, val_set, False, 4))) == list(range(15))
    assert len(build_loader(cfg, val_set, False, 4, rank=1, world=2)) == 0  # rank 0 evaluates all of it
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    assert evaluate(model, build_loader(cfg, val_set, False, 4), torch.device("cpu"))["samples"] == 15


def test_too_few_shards_for_the_readers_is_refused(tmp_path):
    opts = _index_shards(tmp_path, 2, 4)
    cfg = load_config([DIGITS], opts + ["DATA_LOADER.NUM_WORKERS", "2"])
    with pytest.raises(DataError, match=r"has 2 shard\(s\) but is read by 2 process\(es\) x 2 loader worker\(s\) = "
                                        r"4 readers.*lower DATA_LOADER.NUM_WORKERS"):
        build_loader(cfg, build_dataset(cfg, "train"), True, 2, rank=0, world=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_an_epoch_checkpoint_equals_the_uninterrupted_run(digits_wds, tmp_path, monkeypatch, workers):
    from spin.engine import trainer

    opts = ["TRAIN.DATASET", "wds/digits", "TEST.DATASET", "wds/digits", "DATA.PATH_TO_DATA_DIR", digits_wds,
            "TRAIN.MAX_ITERS_PER_EPOCH", "4", "TENSORBOARD.ENABLE", "False", "TRAIN.EVAL_PERIOD", "10",
            "DATA_LOADER.NUM_WORKERS", str(workers), "LOG_JSON_TO_CONSOLE", "False", "SOLVER.MAX_EPOCH", "2",
            "TRAIN.CHECKPOINT_PERIOD", "1"]
    trainer.train(load_config([DIGITS], opts + ["OUTPUT_DIR", str(tmp_path / "full")]))
    resumed = load_config([DIGITS], opts + ["OUTPUT_DIR", str(tmp_path / "resumed")])
    real = trainer.cu.save_checkpoint

    def save_then_stop(*a, **k):  # Ctrl-C right after the checkpoint of epoch 1
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.cu, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(resumed)
    monkeypatch.setattr(trainer.cu, "save_checkpoint", real)
    assert trainer.train(resumed)["start_epoch"] == 1
    a = cu.load_checkpoint(str(tmp_path / "full" / "checkpoints" / "checkpoint_epoch_00002.pyth"))
    b = cu.load_checkpoint(str(tmp_path / "resumed" / "checkpoints" / "checkpoint_epoch_00002.pyth"))
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k


def test_two_process_ddp_on_webdataset_through_torchrun(tmp_path):
    opts = _index_shards(tmp_path / "shards", 4, 6)
    out = tmp_path / "out"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "spin.cli", "train", "--cfg", DIGITS, *opts,
           "OUTPUT_DIR", str(out), "NUM_GPUS", "2", "SOLVER.MAX_EPOCH", "2", "TRAIN.BATCH_SIZE", "6",
           "TEST.BATCH_SIZE", "4", "TENSORBOARD.ENABLE", "False", "TRAIN.EVAL_PERIOD", "1", "LOG_PERIOD", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = (out / "stdout.log").read_text() if (out / "stdout.log").exists() else ""
    assert p.returncode == 0, f"{p.stderr[-3000:]}\n--- stdout.log\n{log[-2000:]}"
    stats = [json.loads(line.split("json_stats: ", 1)[1]) for line in log.splitlines() if "json_stats: " in line]
    iters = [s for s in stats if s["_type"] == "train_iter" and s["epoch"] == "1/2"]
    assert iters[-1]["iter"] == "4/4"  # 24 images: 12 per rank, 3 per step
    assert [s["samples"] for s in stats if s["_type"] in ("val_epoch", "checkpoint_eval")] == [24, 24, 24]
    assert "rank 0 evaluates all of it" in log


# ------------------------------------------------------------------ a missing or broken source
def _cfg(tmp_path, *opts):
    return load_config([DIGITS], ["OUTPUT_DIR", str(tmp_path / "out"), *opts])


def test_webdataset_problems_are_one_clear_line_before_any_write(digits_wds, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    for f in os.listdir(digits_wds):
        os.symlink(os.path.join(digits_wds, f), shards / f)
    os.unlink(shards / "digits-train-000002.tar")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken-train-000000.tar").write_bytes(b"not a tar at all" * 100)
    nocls = tmp_path / "nocls"
    nocls.mkdir()
    with tarfile.open(nocls / "n-train-000000.tar", "w") as tf:
        for i in range(3):
            b = io.BytesIO()
            Image.new("RGB", (8, 8)).save(b, format="PNG")
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = len(b.getvalue())
            tf.addfile(info, io.BytesIO(b.getvalue()))
    wds = ["TRAIN.DATASET", "wds/digits"]
    cases = [
        (wds + ["DATA.PATH_TO_DATA_DIR", str(shards)], r"1 of its 4 shard\(s\) are missing \(the first: .*digits-train-000002.tar\)"),
        (wds + ["DATA.PATH_TO_DATA_DIR", str(tmp_path / "nowhere")], "DATA.PATH_TO_DATA_DIR '.*nowhere' does not exist"),
        (wds + ["DATA.PATH_TO_DATA_DIR", ""], "DATA.PATH_TO_DATA_DIR is empty; TRAIN.DATASET wds/digits reads"),
        (wds + ["DATA.PATH_TO_DATA_DIR", digits_wds, "DATA.TRAIN_SPLIT", "digits-train-{000000..000003}.tar"],
         r"cannot be read by timm \(RuntimeError: Invalid split definition, num_samples not specified.*set "
         r"DATA.TRAIN_SPLIT to the shard pattern .* and DATA.TRAIN_NUM_SAMPLES"),
        (wds + ["DATA.PATH_TO_DATA_DIR", digits_wds, "DATA.TRAIN_SPLIT", "trian"],
         r"split 'trian'\) cannot be read by timm \(RuntimeError: split trian not found in info"),
        (["TRAIN.DATASET", "wds/broken", "DATA.PATH_TO_DATA_DIR", str(bad), "DATA.TRAIN_SPLIT",
          "broken-train-000000.tar", "DATA.TRAIN_NUM_SAMPLES", "10"], r"no sample can be read \(Handling webdataset error"),
        (["TRAIN.DATASET", "wds/n", "DATA.PATH_TO_DATA_DIR", str(nocls), "DATA.TRAIN_SPLIT", "n-train-000000.tar",
          "DATA.TRAIN_NUM_SAMPLES", "3"], r"no sample can be read \(.*KeyError\('cls'\)"),
        (["TRAIN.DATASET", f"hfds/{tmp_path / 'no-such-dataset'}"], r"cannot be read by timm \(.*Error: .*no-such-dataset"),
        (["TRAIN.DATASET", "tar", "DATA.PATH_TO_DATA_DIR", str(tmp_path)], r"train.tar' does not exist; TRAIN.DATASET tar"),
        (["TRAIN.DATASET", "torch/nosuch", "DATA.PATH_TO_DATA_DIR", str(tmp_path)], "Unknown torchvision dataset nosuch"),
        (wds + ["DATA.PATH_TO_DATA_DIR", digits_wds, "DATA.TRAIN_IMAGES_PER_CLASS", "5"],
         "DATA.TRAIN_IMAGES_PER_CLASS 5 subsets spin's folder data sets"),
    ]
    for opts, needle in cases:
        cfg = _cfg(tmp_path, *opts)
        with pytest.raises(DataError, match=needle):
            build_dataset(cfg, "train")
    # through the CLI: exit 2, one spin: error line, nothing written
    capsys.readouterr()
    rc = main(["train", "--cfg", DIGITS, "OUTPUT_DIR", str(tmp_path / "out"), *cases[0][0]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("spin: error: TRAIN.DATASET wds/digits (split 'train'): 1 of")
    assert not os.path.exists(tmp_path / "out")


def test_config_check_knows_the_timm_names():
    for name in ("wds/imagenet", "HFDS/org/Name", "tfds/imagenet2012", "torch/cifar10", "tar", "hfids/x"):
        check_cfg(load_config([DIGITS], ["TRAIN.DATASET", name]), "stats")
    for name in ("foo/bar", "wds/", "webdataset"):
        with pytest.raises(ConfigError, match=f"unknown TRAIN.DATASET '{name}'; allowed: .*wds/NAME"):
            check_cfg(load_config([DIGITS], ["TRAIN.DATASET", name]), "stats")
    with pytest.raises(ConfigError, match="DATA.TRAIN_NUM_SAMPLES must be >= 0"):
        check_cfg(load_config([DIGITS], ["DATA.TRAIN_NUM_SAMPLES", "-1"]), "stats")
