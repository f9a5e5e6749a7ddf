"""Top-k predictions for image files from a checkpoint, with class names where known."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from ..data import DataError, build_eval_transform, check_splits
from ..data.embedded import SOURCES, prepare_embedded
from ..data.folder import load_rgb
from ..engine import checkpoint as cu


def class_names(ck: dict, cfg) -> list[str]:
    """From the checkpoint (saved by training), else the data set folder of its cfg, else []."""
    if ck.get("classes"):
        return list(ck["classes"])
    root = cfg.DATA.PATH_TO_DATA_DIR
    try:
        if cfg.TEST.DATASET in SOURCES:
            root = prepare_embedded(cfg.TEST.DATASET, root)
        if root and os.path.isdir(root):
            return check_splits(root)
    except DataError:
        pass
    return []


def _runner(checkpoint: str, opts: Sequence[str]):
    """(logits function, cfg, class names) for a .pyth/.pth/.safetensors checkpoint or an exported
    .onnx / .pt2 artifact (its config and class names are in its metadata)."""
    if checkpoint.lower().endswith((".onnx", ".pt2")):
        from .export import load_artifact

        from .export import DeployError

        run, text, classes, size = load_artifact(checkpoint)
        cfg = cu.cfg_from_checkpoint(checkpoint, opts, ck={"cfg": text})
        crop = cfg.DATA.TEST_CROP_SIZE
        if size is not None and size != (crop, crop):  # an exported graph runs at its export size only
            raise DeployError(
                f"{checkpoint} takes {size[0]}x{size[1]} images (fixed when it was exported), but DATA.TEST_CROP_SIZE "
                f"{crop} would feed it {crop}x{crop}; drop the override, or export again at that size "
                f"(spin export --checkpoint CK ... DATA.TEST_CROP_SIZE {crop})")
        return run, cfg, classes or class_names({}, cfg)
    model, cfg, ck = cu.build_model_from_checkpoint(checkpoint, opts)
    model.eval()
    return model, cfg, class_names(ck, cfg)


@torch.no_grad()
def predict(checkpoint: str, images: Sequence[str], opts: Sequence[str] = (), topk: int = 5,
            failures: Optional[list] = None):
    """Returns [(image, [(class name, probability), ...]), ...]. An image that cannot be read
    raises DataError, or, with a ``failures`` list, is appended there as (image, why) and the
    others are still predicted."""
    model, cfg, names = _runner(checkpoint, opts)
    transform = build_eval_transform(cfg)
    out = []
    for path in images:
        try:
            x = transform(load_rgb(path))[None]
        except Exception as e:  # noqa: BLE001  (a missing, truncated or foreign file: the user's input)
            why = f"cannot read image {path!r}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
            if failures is None:
                raise DataError(why) from None
            failures.append((path, why))
            continue
        logits = model(x)
        if not bool(torch.isfinite(logits).all()):
            raise cu.CheckpointError(
                f"{checkpoint} gives non-finite outputs (NaN/inf) for {path}: its weights or BatchNorm "
                f"statistics are broken; use an earlier checkpoint of the run")
        prob = logits.softmax(-1)[0]
        p, idx = prob.topk(min(topk, prob.numel()))
        out.append((path, [(names[i] if i < len(names) else str(i), float(v))
                           for v, i in zip(p.tolist(), idx.tolist())]))
    return out
