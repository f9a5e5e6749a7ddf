"""The data sets timm reads, built by timm's ``create_dataset`` (spin has no reader of its own for
them); TRAIN.DATASET / TEST.DATASET name them as timm's ``--dataset`` does, DATA.PATH_TO_DATA_DIR
is timm's ``--data-dir``:

* ``tar``: DATA.PATH_TO_DATA_DIR holds one tar of images per split (``train.tar``, ``val.tar``),
  <class>/<image> inside (timm's ReaderImageInTar). Map-style.
* ``hfds/NAME``: a Hugging Face dataset: a Hub id, or a local folder of parquet / arrow files or
  one written by ``save_to_disk``; DATA.PATH_TO_DATA_DIR is its cache folder. Map-style.
* ``hfids/NAME``: the same, streamed. Iterable.
* ``wds/NAME``: WebDataset shards (<key>.jpg|png|webp + <key>.cls) in DATA.PATH_TO_DATA_DIR, with
  timm's ``_info.json`` naming each split's shards and size; or a split given as a shard pattern
  (``name-train-{000000..000009}.tar``) and its size in DATA.TRAIN_NUM_SAMPLES. Iterable.
* ``tfds/NAME``: a TensorFlow Datasets data set prepared in DATA.PATH_TO_DATA_DIR. Iterable.
* ``torch/NAME``: a torchvision data set of timm's list (cifar10, mnist, image_folder, ...).

Splits are DATA.TRAIN_SPLIT / DATA.VAL_SPLIT, resolved against the splits the source has with
timm's synonyms (val reads ``validation`` where there is no ``val``). Classes are the source's
class names in label order; a source with integer labels only gets "0".."N-1" (N =
MODEL.NUM_CLASSES), and the run says so.

Iterable sets need their size up front (epoch length, the learning-rate schedule): timm's readers
take it from the source's metadata, else from DATA.TRAIN_NUM_SAMPLES / DATA.VAL_NUM_SAMPLES (timm's
``--train-num-samples`` / ``--val-num-samples``). Each process reads its own share of the shards,
each loader worker a share of that (timm's readers split by rank and worker); an epoch is the size
divided over the readers, rounded up to whole batches per worker (timm's rule, so some images
repeat). Evaluation of an iterable set is not split over ranks: rank 0 reads all of it once, so
its counts are exact.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from typing import Optional

from torchvision import transforms as T

from .folder import DataError, split_dir, split_name

PREFIXES = ("hfds", "hfids", "wds", "tfds", "torch")
ITERABLE = ("hfids", "wds", "tfds")
# what each prefix imports, and the extra of spin's pyproject that installs it
PACKAGES = {"hfds": (("datasets",), "data"), "hfids": (("datasets",), "data"), "wds": (("webdataset",), "data"),
            "tfds": (("tensorflow", "tensorflow_datasets"), "tfds")}
# what to check when timm cannot build the data set
FIXES = {
    "": "DATA.PATH_TO_DATA_DIR must hold one tar of <class>/<image> files per split",
    "hfds": "NAME is a Hub id (cached in DATA.PATH_TO_DATA_DIR) or a folder of parquet/arrow files or save_to_disk "
            "output; {split_key} must be one of its splits",
    "wds": "DATA.PATH_TO_DATA_DIR must hold the shards and timm's _info.json naming each split's shards, or set "
           "{split_key} to the shard pattern (name-{{000000..000009}}.tar) and {count_key} to its number of images",
    "tfds": "NAME must be a TFDS data set prepared in DATA.PATH_TO_DATA_DIR (tfds build, or DATA.DOWNLOAD True); "
            "{split_key} must be one of its splits",
    "torch": "NAME is one of timm's torchvision data sets (cifar10, cifar100, mnist, kmnist, fashion_mnist, qmnist, "
             "places365, inaturalist, imagenet, image_folder) in DATA.PATH_TO_DATA_DIR; DATA.DOWNLOAD True fetches "
             "the ones torchvision can download",
}
FIXES["hfids"] = FIXES["hfds"] + "; a source without split sizes needs {count_key}"


def parse(name: str) -> tuple[str, str]:
    """('wds', 'imagenet') for 'wds/imagenet': like timm, the prefix in any case, the rest as written."""
    prefix, sep, rest = name.partition("/")
    return (prefix.lower(), rest) if sep else ("", name)


def is_timm_name(name: str) -> bool:
    return name.lower() == "tar" or parse(name)[0] in PREFIXES


def is_iterable(ds) -> bool:
    from timm.data import IterableImageDataset

    return isinstance(ds, IterableImageDataset)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _require(prefix: str, key: str, name: str) -> None:
    if prefix not in PACKAGES:
        return
    modules, extra = PACKAGES[prefix]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pip = {"tensorflow": "tensorflow-cpu", "tensorflow_datasets": "tensorflow-datasets"}
        raise DataError(f"{key} {name} is read by timm through the {', '.join(missing)} package(s), which are not "
                        f"installed; pip install 'spin[{extra}]' (or pip install "
                        f"{' '.join(pip.get(m, m) for m in missing)})")


def _split_names(prefix: str, name: str, root: str) -> list[str]:
    """The split names the source declares, for resolving synonyms; [] where it does not say (the
    reader then reports a missing split itself)."""
    try:
        if prefix == "wds":
            for info in ("_info.json", "info.json"):
                if os.path.isfile(os.path.join(root, info)):
                    with open(os.path.join(root, info)) as f:
                        return list(json.load(f).get("splits", {}))
        elif prefix in ("hfds", "hfids"):
            import datasets

            return list(datasets.get_dataset_split_names(name, cache_dir=root or None))
        elif prefix == "tfds":
            import tensorflow_datasets as tfds

            return list(tfds.builder(name, data_dir=root or None).info.splits)
    except Exception:  # noqa: BLE001  (no list: the split goes to the reader as written)
        pass
    return []


def _rgb(img):
    return img.convert("RGB")


def build(cfg, name: str, train: bool, transform):
    """The train (``train``) or val data set ``name`` (TRAIN.DATASET / TEST.DATASET); it carries
    ``classes``, ``integer_labels`` and ``timm_name``."""
    d = cfg.DATA
    key = "TRAIN.DATASET" if train else "TEST.DATASET"
    split_key, count_key = ("DATA.TRAIN_SPLIT", "DATA.TRAIN_NUM_SAMPLES") if train else \
        ("DATA.VAL_SPLIT", "DATA.VAL_NUM_SAMPLES")
    split, count = (d.TRAIN_SPLIT, d.TRAIN_NUM_SAMPLES) if train else (d.VAL_SPLIT, d.VAL_NUM_SAMPLES)
    if train and d.TRAIN_IMAGES_PER_CLASS:
        raise DataError(f"DATA.TRAIN_IMAGES_PER_CLASS {d.TRAIN_IMAGES_PER_CLASS} subsets spin's folder data sets "
                        f"(imagenet, folder, digits, mnist, cifar10/100), not {key} {name}; set it to 0")
    prefix, rest = parse(name)
    _require(prefix, key, name)
    root = d.PATH_TO_DATA_DIR
    if not root and prefix in ("", "wds", "torch"):
        raise DataError(f"DATA.PATH_TO_DATA_DIR is empty; {key} {name} reads its files from there")
    if root and prefix in ("", "wds") and not os.path.isdir(root):
        raise DataError(f"DATA.PATH_TO_DATA_DIR {root!r} does not exist")
    fix = FIXES[prefix].format(split_key=split_key, count_key=count_key)
    if prefix == "torch":  # timm's other readers give RGB; torchvision's MNIST family gives greyscale
        transform = T.Compose([T.Lambda(_rgb), transform])
    args = dict(name=name, root=root or None, is_training=train, download=d.DOWNLOAD, seed=cfg.RNG_SEED,
                num_samples=count or None, transform=transform)
    if prefix == "":  # a tar of images: timm picks its tar reader for a root that is a .tar file
        path = os.path.join(root, split_dir(root, split, ".tar"))
        if not os.path.isfile(path):
            raise DataError(f"{path!r} does not exist; {key} tar reads DATA.PATH_TO_DATA_DIR/<split>.tar, the split "
                            f"being {split_key} {split!r} or a timm synonym of it")
        args.update(name="", root=path, search_split=False)
    else:
        split = split_name(split, _split_names(prefix, rest, root))
        args.update(split=split)
    what = f"{key} {name} ({'file ' + args['root'] if prefix == '' else 'split ' + repr(split)})"
    try:
        from timm.data import create_dataset

        ds = create_dataset(**args)
    except Exception as e:  # noqa: BLE001  (timm and the libraries under it raise every kind)
        raise DataError(f"{what} cannot be read by timm ({_first_line(e)}); {fix}") from None
    ds.timm_name = name
    ds.classes, ds.integer_labels = _classes(ds, cfg.MODEL.NUM_CLASSES)
    if prefix == "" and "" in ds.classes:
        raise DataError(f"{args['root']!r} holds images outside class folders; put each image under <class>/")
    if is_iterable(ds):
        _check_shards(ds, prefix, root, what)
        _peek(args, ds, what, fix)
    else:
        _check_first(ds, what)
    return ds


def _classes(ds, num_classes: int) -> tuple[list[str], bool]:
    """(class names in label order, True when the source has integer labels only)."""
    reader = getattr(ds, "reader", None)
    mapping = getattr(reader, "class_to_idx", None) or getattr(reader, "class_name_to_idx", None)  # tar reader
    if mapping:
        return [str(c) for c, _ in sorted(mapping.items(), key=lambda kv: kv[1])], False
    names = getattr(ds, "classes", None)  # torchvision's data sets (ImageNet's are tuples of synonyms)
    if names:
        return [c if isinstance(c, str) else ", ".join(c) for c in names], False
    return [str(i) for i in range(num_classes)], True


def _check_first(ds, what: str) -> None:
    """A map-style set must hold an image that decodes (timm's ImageDataset tries up to 10)."""
    if len(ds) == 0:
        raise DataError(f"{what} holds no images")
    try:
        ds[0]
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{what}: its first images cannot be read ({_first_line(e)}); replace the broken files") from None


def _check_shards(ds, prefix: str, root: str, what: str) -> None:
    if prefix != "wds" or "://" in (root or "") or (root or "").startswith("pipe:"):
        return
    files = [os.path.join(root, f) for f in ds.reader.split_info.filenames]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing or not files:
        raise DataError(f"{what}: {len(missing)} of its {len(files)} shard(s) are missing (the first: "
                        f"{missing[0] if missing else '-'}); write them or fix the split")


class _FirstWarning(logging.Handler):
    """Keeps the first warning of timm's readers (a skipped sample says why it was skipped)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.first: Optional[str] = None

    def emit(self, record):
        self.first = self.first or record.getMessage()


def _peek(args: dict, ds, what: str, fix: str) -> None:
    """One sample of the source, read by a second, evaluation-mode instance of the reader (no
    shuffle buffer to fill; for WebDataset only the first shard), so a source nothing can be read
    from is refused before the run writes anything. The data set itself is not touched: timm
    builds its pipeline lazily, in the loader workers."""
    from timm.data import create_dataset

    peek_args = dict(args, is_training=False, transform=None)
    if parse(args["name"])[0] == "wds":
        peek_args["split"] = ds.reader.split_info.filenames[0]
    caught = _FirstWarning()  # of the reading only: timm also warns while it builds (no _info.json)
    timm_log = logging.getLogger("timm")
    try:
        peek = create_dataset(**peek_args)
        place(peek, batch_size=1, rank=0, world=1, workers=0)
        timm_log.addHandler(caught)
        next(iter(peek))
    except StopIteration:
        raise DataError(f"{what}: no sample can be read ({caught.first or 'it is empty'}); {fix}") from None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{what}: its first sample cannot be read ({_first_line(e)}); {fix}") from None
    finally:
        timm_log.removeHandler(caught)


def place(ds, batch_size: int, rank: int, world: int, workers: int) -> None:
    """Tell an iterable set who reads it, before its first pass. timm's readers take the rank and
    world size from torch.distributed when they are built, and the batch and worker count from
    the loader; spin sets them all from the loader it builds, so the sharding is the same with or
    without a process group (spin bench, tests) and for evaluation on rank 0 alone."""
    r = ds.reader
    r.batch_size, r.dist_rank, r.dist_num_replicas = batch_size, rank, world
    ds.set_loader_cfg(num_workers=workers)


def check_readers(ds, world: int, workers: int) -> None:
    """Training on WebDataset: each of the world x workers readers reads whole shards of its own;
    a reader without one ends its epoch early (one process: a short epoch; DDP: ranks that stop
    at different steps)."""
    if parse(ds.timm_name)[0] != "wds":
        return
    shards, readers = len(ds.reader.split_info.filenames), world * max(1, workers)
    if shards < readers:
        raise DataError(f"TRAIN.DATASET {ds.timm_name} has {shards} shard(s) but is read by {world} process(es) x "
                        f"{max(1, workers)} loader worker(s) = {readers} readers, each needing a shard of its own; "
                        f"write at least {readers} shards or lower DATA_LOADER.NUM_WORKERS")


def set_epoch(loader, epoch: int, seed: int) -> None:
    """Epoch ``epoch`` of an iterable set: timm shuffles its shards by (seed, epoch) and its
    samples by the loader workers' seeds (drawn from the loader's generator, which the trainer
    seeds per epoch). Without workers the pipeline lives in this process and timm keeps it, and
    its shuffle state, from one epoch to the next; rebuilt here from ``seed``, every epoch is a
    function of its seed alone, as in a worker, and a resumed run repeats it."""
    ds = loader.dataset
    ds.set_epoch(epoch)
    if loader.num_workers == 0:
        ds.reader.ds = None
        if hasattr(ds.reader, "worker_seed"):
            ds.reader.worker_seed = seed


def num_images(ds) -> Optional[int]:
    """The images of one pass: the source's count for an iterable set (None: not recorded)."""
    return (ds.reader.num_samples or None) if is_iterable(ds) else len(ds)


def notes(train_set, val_set, world: int, workers: int) -> list[str]:
    """What the run should say about its data: integer-only labels, what an epoch of an iterable
    set is and what resuming it means, how an iterable val set is evaluated."""
    out = []
    for key, ds in (("TRAIN.DATASET", train_set), ("TEST.DATASET", val_set)):
        if ds is not None and getattr(ds, "integer_labels", False):
            line = (f"{ds.timm_name} has integer labels only: its classes are recorded as '0'..'{len(ds.classes) - 1}' "
                    f"(MODEL.NUM_CLASSES)")
            if not any(o.endswith(line) for o in out):
                out.append(f"{key} {line}")
    if train_set is not None and is_iterable(train_set):
        out.append(f"TRAIN.DATASET {train_set.timm_name} is iterable: an epoch is {len(train_set)} images per process "
                   f"({num_images(train_set)} over {world} process(es) x {max(1, workers)} reader(s) each, rounded up "
                   f"to whole batches per reader), each reader on its own shards; an epoch's order is a function of "
                   f"RNG_SEED and the epoch, so a resume (from an epoch's checkpoint) repeats the epochs exactly with "
                   f"the same process count and DATA_LOADER.NUM_WORKERS, and in another order with other counts")
    if val_set is not None and is_iterable(val_set) and world > 1:
        out.append(f"TEST.DATASET {val_set.timm_name} is iterable: rank 0 evaluates all of it (exact counts; split "
                   f"over ranks it would be padded or cut)")
    return out
