"""Top-k predictions for image files from a checkpoint, with class names where known."""
from __future__ import annotations

import os
from typing import Sequence

import torch
from PIL import Image

from .data import DataError, build_eval_transform, check_splits
from .data.embedded import SOURCES, prepare_embedded
from .data.folder import load_rgb
from .engine import checkpoint as cu


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
        from .deploy import load_artifact

        run, text, classes = load_artifact(checkpoint)
        cfg = cu.cfg_from_checkpoint(checkpoint, opts, ck={"cfg": text})
        return run, cfg, classes or class_names({}, cfg)
    model, cfg, ck = cu.build_model_from_checkpoint(checkpoint, opts)
    model.eval()
    return model, cfg, class_names(ck, cfg)


@torch.no_grad()
def predict(checkpoint: str, images: Sequence[str], opts: Sequence[str] = (), topk: int = 5):
    """Returns [(image, [(class name, probability), ...]), ...]."""
    model, cfg, names = _runner(checkpoint, opts)
    transform = build_eval_transform(cfg)
    out = []
    for path in images:
        try:
            x = transform(load_rgb(path))[None]
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {path!r}: {e}") from None
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
