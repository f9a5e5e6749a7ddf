"""Writing WebDataset shards as timm's reader reads them (``wds/NAME``): tars of <key>.<ext> image
files beside <key>.cls label files, and ``_info.json`` with each split's shard names and sizes, so
the shards carry their size (no DATA.TRAIN_NUM_SAMPLES needed). ``spin bench --data`` and the
tests write their shards with it."""
from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Iterable

from ..engine.runfolder import atomic_write


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: str, split: str, samples: Iterable[tuple[bytes, str, int]], per_shard: int,
                 name: str = "data") -> list[str]:
    """Write ``samples`` (image bytes, extension such as 'png' or 'jpg', integer label) as
    FOLDER/NAME-SPLIT-000000.tar, ... of ``per_shard`` samples each, and record the split in
    FOLDER/_info.json (other splits there are kept). Returns the shard file names."""
    os.makedirs(folder, exist_ok=True)
    files, lengths, tar = [], [], None
    for i, (data, ext, label) in enumerate(samples):
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            files.append(f"{name}-{split}-{len(files):06d}.tar")
            lengths.append(0)
            tar = tarfile.open(os.path.join(folder, files[-1]), "w")
        key = f"{i:08d}"
        _add(tar, f"{key}.{ext}", data)
        _add(tar, f"{key}.cls", str(int(label)).encode())
        lengths[-1] += 1
    if tar is not None:
        tar.close()
    path = os.path.join(folder, "_info.json")
    info = {"name": name, "splits": {}}
    if os.path.isfile(path):
        with open(path) as f:
            info = json.load(f)
    info["splits"][split] = {"name": split, "num_samples": sum(lengths), "filenames": files,
                             "shard_lengths": lengths}
    atomic_write(path, lambda f: f.write(json.dumps(info, indent=1).encode()))
    return files
