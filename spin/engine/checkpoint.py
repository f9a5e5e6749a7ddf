"""The checkpoint format (SlowFast ``.pyth``), written atomically and read with weights_only=True.

A checkpoint is a dict: ``epoch`` (0-based, the epoch just finished), ``model_state`` (unwrapped
from DDP), ``optimizer_state``, ``cfg`` (the YAML string of the run's config) and, with AMP,
``scaler_state``. Files are OUTPUT_DIR/checkpoints/checkpoint_epoch_{epoch+1:05d}.pyth.
"""
from __future__ import annotations

import glob
import os
import re
import tempfile
from typing import Iterable, Optional

import torch
import torch.nn as nn
import yaml

_NAME = re.compile(r"^checkpoint_epoch_(\d{5})\.pyth$")
# Keys a model may lack in a checkpoint and keep at their init: WFWS fusion coefficients
# (a vanilla or timm checkpoint has none; they start at 1).
OPTIONAL_KEYS = ("reduction_w.", "dwise_reduction_w.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says how to fix it."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def checkpoint_path(output_dir: str, epoch: int) -> str:
    """Path for the checkpoint saved after 0-based ``epoch``."""
    return os.path.join(checkpoint_dir(output_dir), f"checkpoint_epoch_{epoch + 1:05d}.pyth")


def latest_checkpoint(output_dir: str) -> Optional[str]:
    """Newest complete checkpoint in OUTPUT_DIR/checkpoints (temp files are never matched)."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(checkpoint_dir(output_dir), "*"))
             if (m := _NAME.match(os.path.basename(p)))]
    return max(found)[1] if found else None


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a reader (or a run
    killed mid-write) never sees a half-written file under the final name."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pyth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(path: str, model: nn.Module, epoch: int, cfg=None, optimizer=None,
                    scaler=None, extra: Optional[dict] = None) -> str:
    state = {"epoch": int(epoch), "model_state": unwrap(model).state_dict()}
    if optimizer is not None:
        state["optimizer_state"] = optimizer.state_dict()
    if cfg is not None:
        state["cfg"] = cfg if isinstance(cfg, str) else cfg.dump()
    if scaler is not None and scaler.is_enabled():
        state["scaler_state"] = scaler.state_dict()
    state.update(extra or {})
    atomic_save(state, path)
    return path


def load_checkpoint(path: str) -> dict:
    """Read a ``.pyth`` (or a bare state dict) safely on the CPU."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist; check "
                              f"TRAIN.CHECKPOINT_FILE_PATH / TEST.CHECKPOINT_FILE_PATH")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-tensor objects
        raise CheckpointError(
            f"cannot read checkpoint {path!r} with weights_only=True ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupt, truncated or holds "
            f"arbitrary Python objects") from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(ck).__name__}, not a dict")
    if "model_state" not in ck and all(isinstance(v, torch.Tensor) for v in ck.values()):
        ck = {"model_state": ck}  # a bare state dict
    if "model_state" not in ck:
        raise CheckpointError(f"checkpoint {path!r} has no 'model_state' (keys: {sorted(ck)})")
    return ck


def stored_cfg(ck: dict) -> Optional[dict]:
    """The config stored in a checkpoint as a plain nested dict (or None)."""
    text = ck.get("cfg")
    if not text:
        return None
    return yaml.safe_load(text) if isinstance(text, str) else dict(text)


def _summarise(keys: Iterable[str], n: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")


def load_model_weights(model: nn.Module, state_dict: dict, source: str = "checkpoint",
                       allow_missing: tuple = OPTIONAL_KEYS) -> None:
    """Strict load, except keys in ``allow_missing`` may be absent. On any mismatch, raise one
    error listing missing, unexpected and wrongly shaped keys; the model is left untouched."""
    model = unwrap(model)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(allow_missing)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{source} does not match the model architecture:"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): {_summarise(missing)}")
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): {_summarise(unexpected)}")
        if shapes:
            parts.append(f"  shape mismatches ({len(shapes)}): {_summarise(shapes, 4)}")
        parts.append("  fix: build the model with the config the checkpoint was trained with "
                     "(CONVMIXER.* and CONVMIXER.WEIGHT_SHARE.*, MODEL.NUM_CLASSES); a fused WFWS "
                     "export reloads with the WS config (REDUCTION_FN None)")
        raise CheckpointError("\n".join(parts))
    model.load_state_dict(state_dict, strict=False)


def cfg_from_checkpoint(path: str, opts=(), ck: Optional[dict] = None):
    """Defaults, then the config stored in the checkpoint (keys spin does not know, e.g. the rest
    of a SlowFast schema, are skipped), then KEY VALUE ``opts``."""
    from ..config import get_cfg, merge_known, merge_opts

    data = stored_cfg(ck if ck is not None else load_checkpoint(path))
    if data is None:
        raise CheckpointError(f"checkpoint {path!r} stores no config; pass the config it was "
                              f"trained with (--cfg FILE)")
    cfg = get_cfg()
    merge_known(cfg, data)
    merge_opts(cfg, list(opts))
    return cfg


def build_model_from_checkpoint(path: str, opts=()):
    """Rebuild the model a checkpoint was trained with from its stored config (keys spin does not
    know are skipped; ``opts`` are KEY VALUE overrides) and load its weights.
    Returns (model, cfg, checkpoint)."""
    from ..models import build_model

    ck = load_checkpoint(path)
    cfg = cfg_from_checkpoint(path, opts, ck)
    model = build_model(cfg)
    load_model_weights(model, ck["model_state"], source=path)
    return model, cfg, ck
