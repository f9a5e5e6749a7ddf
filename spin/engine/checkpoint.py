"""The checkpoint format (SlowFast ``.pyth``), written atomically and read with weights_only=True,
and the rules for starting a training run from one (:func:`load_train_checkpoint`).

A checkpoint is a dict: ``epoch`` (0-based, the epoch just finished), ``model_state`` (unwrapped
from DDP), ``optimizer_state``, ``cfg`` (the YAML string of the run's config), ``classes``, with
``identity`` (what defines the run: :mod:`spin.identity`), with AMP ``scaler_state`` and with
MODEL_EMA ``model_ema_state``. Files are
OUTPUT_DIR/checkpoints/checkpoint_epoch_{epoch+1:05d}.pyth. Every checkpoint holds finite values
only: a run whose weights or BatchNorm statistics went non-finite stops before saving them.

Readable as weights (TRAIN/TEST.CHECKPOINT_FILE_PATH): a spin ``.pyth``, a spin or timm
``.safetensors`` (a spin export's config is in its metadata), a timm ``.pth`` state dict, or an
official DeiT / ConvNeXt ``.pth`` (its ``"model"`` entry).
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import yaml

from .. import identity as idn
from ..errors import SpinError
from ..share_transform import fit_relax_deltas, single_stack_key
from .loop import NonFiniteLossError
from .runfolder import atomic_write

_NAME = re.compile(r"^checkpoint_epoch_(\d{5})\.pyth$")
# Keys a model may lack in a checkpoint and keep at their init: WFWS fusion coefficients
# (a vanilla or timm checkpoint has none; they start at 1).
RELAX_KEYS = ("relax_params.", "shared.relax_params.")
OPTIONAL_KEYS = ("reduction_w.", "dwise_reduction_w.", "shared.coeffs.") + RELAX_KEYS


class CheckpointError(SpinError, RuntimeError):
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


def epochs_done(path: str) -> int:
    """The number of finished epochs a checkpoint file's name says (checkpoint_epoch_00005 -> 5)."""
    m = _NAME.match(os.path.basename(path))
    if m is None:
        raise CheckpointError(f"{path!r} is not named checkpoint_epoch_NNNNN.pyth")
    return int(m.group(1))


def atomic_save(obj, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def non_finite(model: nn.Module) -> list[str]:
    """Names of parameters and buffers (BatchNorm statistics) holding NaN or inf."""
    bad = [n for n, t in unwrap(model).state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    return bad


def save_checkpoint(path: str, model: nn.Module, epoch: int, cfg=None, optimizer=None,
                    scaler=None, extra: Optional[dict] = None, ema: Optional[nn.Module] = None) -> str:
    for m, what in ((model, "the model"), (ema, "the EMA model")):
        bad = non_finite(m) if m is not None else []
        if bad:
            raise NonFiniteLossError(
                f"{what} holds non-finite values after epoch {epoch + 1} ({', '.join(bad[:4])}"
                f"{' ...' if len(bad) > 4 else ''}); nothing was saved. Lower SOLVER.BASE_LR, set "
                f"SOLVER.CLIP_GRAD_L2NORM, or check the data; the last checkpoint on disk is untouched")
    state = {"epoch": int(epoch), "model_state": unwrap(model).state_dict()}
    if optimizer is not None:
        state["optimizer_state"] = optimizer.state_dict()
        state["optimizer_params"] = optimizer_params(optimizer, model)
    if cfg is not None:
        state["cfg"] = cfg if isinstance(cfg, str) else cfg.dump()
    if cfg is not None and not isinstance(cfg, str):
        state["identity"] = idn.identity(cfg, (extra or {}).get("classes"))
    if scaler is not None and scaler.is_enabled():
        state["scaler_state"] = scaler.state_dict()
    if ema is not None:
        state["model_ema_state"] = ema.state_dict()
    state.update(extra or {})
    atomic_save(state, path)
    return path


def _load_safetensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        entries = {"cfg": meta.get("cfg"), "identity": json.loads(meta["identity"]) if meta.get("identity") else None}
        return {"model_state": load_file(path), **{k: v for k, v in entries.items() if v}}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path!r} as safetensors ({e}); it is corrupt or "
                              f"truncated") from None


def load_checkpoint(path: str, mmap: bool = False) -> dict:
    """Read a checkpoint safely on the CPU as ``{"model_state": ..., ...}`` (see module doc);
    ``mmap``: tensors are mapped, not read (for a look at its entries)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist; check "
                              f"TRAIN.CHECKPOINT_FILE_PATH / TEST.CHECKPOINT_FILE_PATH")
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    if path.lower().endswith((".onnx", ".pt2")):
        raise CheckpointError(f"{path!r} is an exported artifact (spin export), not a checkpoint; give the "
                              f".pyth it was exported from (spin predict reads .onnx / .pt2 files)")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..); files of torch < 1.6 are a pickle (protocol 2: \x80\x02).
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):
        raise CheckpointError(f"{path!r} is not a PyTorch checkpoint (neither a torch.save zip nor a pickle); "
                              f"give a .pyth/.pth written by spin train or torch.save, or a .safetensors file")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and head.startswith(b"PK"))
    except Exception as e:  # pickle errors, truncated files, non-tensor objects
        msg = str(e)
        if "Unsupported global" in msg:
            what = re.search(r"GLOBAL ([\w.]+)", msg)
            raise CheckpointError(
                f"checkpoint {path!r} holds pickled Python objects"
                f"{' (' + what.group(1) + ')' if what else ''}, which spin does not load: unpickling "
                f"can run arbitrary code. Re-save only its tensors (the state dict) in an environment "
                f"where you trust the file, or export it as .safetensors") from None
        if msg.startswith("Weights only load failed"):  # torch's advice (weights_only=False) is not ours
            msg = "it holds objects that are not tensors"
        raise CheckpointError(
            f"cannot read checkpoint {path!r} ({type(e).__name__}: {msg.splitlines()[0] if msg else ''}); "
            f"it is corrupt, truncated or not a PyTorch file") from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(ck).__name__}, not a dict")
    if "model_state" in ck:
        return ck
    for key in ("model", "state_dict"):  # official DeiT / ConvNeXt files; Lightning-style files
        if isinstance(ck.get(key), dict) and all(torch.is_tensor(v) for v in ck[key].values()):
            return {"model_state": ck[key]}
    if ck and all(torch.is_tensor(v) for v in ck.values()):
        return {"model_state": ck}  # a bare state dict (timm)
    raise CheckpointError(f"checkpoint {path!r} has no model weights ('model_state', 'model' or a "
                          f"state dict; keys: {sorted(ck)[:8]})")


def stored_cfg(ck: dict) -> Optional[dict]:
    """The config stored in a checkpoint as a plain nested dict (or None)."""
    text = ck.get("cfg")
    if not text:
        return None
    try:
        data = yaml.safe_load(text) if isinstance(text, str) else dict(text)
    except (yaml.YAMLError, TypeError, ValueError):
        raise CheckpointError("the config stored in the checkpoint is not valid YAML; pass the config "
                              "it was trained with (--cfg FILE)") from None
    return data if isinstance(data, dict) else None


def checkpoint_identity(ck: dict) -> Optional[dict]:
    """What the checkpoint's run was: its ``identity``; a file of an earlier spin (it stores
    ``classes``): derived from its ``cfg`` and ``classes``; None for a file spin did not write
    (timm, official, upstream SPIN), whose stored cfg need not describe its weights — upstream's
    fuse step keeps the WFWS config beside fused WS weights — so only keys and shapes are checked."""
    if isinstance(ck.get("identity"), dict):
        return ck["identity"]
    return idn.identity_of_stored(stored_cfg(ck), ck["classes"]) if "classes" in ck else None


def check_eval_classes(ck: dict, classes, path: str) -> None:
    """An evaluation must use the checkpoint's labels: class k of the data is output k."""
    stored = (checkpoint_identity(ck) or {}).get("classes")
    idn.check({"classes": stored}, {"classes": {"classes": list(classes)}} if classes else {}, "test",
              f"checkpoint {path} was trained on other classes than the data's",
              "its outputs would be scored against other labels; evaluate on data with the checkpoint's "
              "class folders (DATA.PATH_TO_DATA_DIR, TEST.DATASET)")


def _summarise(keys: Iterable[str], n: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")


def load_model_weights(model: nn.Module, state_dict: dict, source: str = "checkpoint",
                       allow_missing: tuple = OPTIONAL_KEYS, fix: Optional[str] = None) -> None:
    """Strict load, except keys in ``allow_missing`` may be absent. On any mismatch, raise one
    error listing missing, unexpected and wrongly shaped keys; the model is left untouched."""
    from ..models.family import family_of_model

    model = unwrap(model)
    own = model.state_dict()
    family = family_of_model(model)
    if family is not None and family.checkpoint_filter is not None:  # e.g. earlier ConvMixer layouts
        state_dict = family.checkpoint_filter(state_dict, model)
    missing = [k for k in own if k not in state_dict and not single_stack_key(k).startswith(allow_missing)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_summarise(missing, 4)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_summarise(unexpected, 4)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_summarise(shapes, 2)}")
        parts.append(fix or "fix: build the model with the config the checkpoint was trained with "
                     "(MODEL.MODEL_NAME, its architecture section, the WEIGHT_SHARE plan keys, "
                     "MODEL.NUM_CLASSES); a fused WFWS export reloads with the WS config "
                     "(REDUCTION_FN None); a vanilla checkpoint starts a WFWS model, not a WS one")
        raise CheckpointError(f"{source} does not match the model architecture: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=False)


def fit_relax_to_file(model: nn.Module, ck: dict) -> bool:
    """A relaxed WFWS model loaded from a file without deltas (a vanilla one): fit the deltas to the
    file's per-layer weights, as ``spin.share`` does for a pretrained model. True if it fitted."""
    return not any(single_stack_key(k).startswith(RELAX_KEYS) for k in ck["model_state"]) \
        and fit_relax_deltas(unwrap(model))


def _param_keys(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its state-dict key (a key a checkpoint's model_state has)."""
    return {id(v): k for k, v in unwrap(model).state_dict(keep_vars=True).items() if isinstance(v, nn.Parameter)}


def optimizer_params(optimizer, model: nn.Module) -> list[str]:
    """The state-dict key of each parameter in the optimizer's order: its state is stored by
    position, so a resume must see the same list."""
    keys = _param_keys(model)
    return [keys.get(id(p), "?") for group in optimizer.param_groups for p in group["params"]]


def _load_optimizer(optimizer, model: nn.Module, ck: dict, path: str) -> None:
    want = optimizer_params(optimizer, model)
    if "optimizer_params" in ck:
        same = list(ck["optimizer_params"]) == want
    else:  # a file of an earlier spin or of upstream: its parameters must come in this model's order
        keys = set(_param_keys(model).values())
        same = [k for k in ck["model_state"] if k in keys] == [k for k in unwrap(model).state_dict() if k in keys]
    if not same:
        raise CheckpointError(
            f"the optimizer state in {path} is stored for its parameters in another order than this model's "
            f"(a file of upstream SPIN or of an earlier spin, whose model had another module layout): resuming "
            f"it would give each parameter another one's moments. Start a new schedule from its weights: "
            f"TRAIN.CHECKPOINT_FILE_PATH {path} TRAIN.CHECKPOINT_EPOCH_RESET True with a new OUTPUT_DIR (or "
            f"TRAIN.AUTO_RESUME False)")
    try:
        optimizer.load_state_dict(ck["optimizer_state"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(
            f"the optimizer state in {path} does not fit this model's parameters ({e}); set "
            f"TRAIN.CHECKPOINT_EPOCH_RESET True to start a new schedule from its weights") from None


def _check_resume(cfg, ck: dict, path: str, classes, say) -> None:
    """A resumed run must be the run the folder holds (same model, data and classes)."""
    logged = idn.check(checkpoint_identity(ck), idn.identity(cfg, classes or None), "resume",
                       f"{path} is OUTPUT_DIR's earlier run (resumed automatically: TRAIN.AUTO_RESUME) and was "
                       f"trained with other settings",
                       "to train this config choose a new OUTPUT_DIR; to resume that run, rerun with its "
                       "config (OUTPUT_DIR/config.yaml)")
    if logged:
        say(f"resuming with settings that differ from {os.path.basename(path)}'s: {idn.describe(logged, 8)}")


def _check_start(cfg, ck: dict, path: str, classes) -> None:
    """Fine-tuning onto other class names re-labels the head's outputs: only when asked for."""
    if cfg.TRAIN.CHECKPOINT_NEW_CLASSES or not classes:
        return
    stored = (checkpoint_identity(ck) or {}).get("classes")
    idn.check({"classes": stored}, {"classes": {"classes": list(classes)}}, "start",
              f"TRAIN.CHECKPOINT_FILE_PATH {path} was trained on other classes than the data's",
              "its head's outputs would keep the file's labels; train on data with the file's class "
              "folders, or set TRAIN.CHECKPOINT_NEW_CLASSES True to fine-tune it onto these classes")


def _check_teacher(ck: dict, teacher: Optional[dict], path: str) -> None:
    """A resumed distillation must learn from the teacher it started with (same bytes)."""
    stored = ck.get("distill_teacher")
    if not isinstance(stored, dict) or teacher is None or stored.get("sha256") == teacher["sha256"]:
        return
    moved = "" if stored.get("path") == teacher["path"] else f" (it was {stored.get('path')})"
    raise CheckpointError(
        f"{path} was distilled from another teacher than {teacher['path']}{moved}: the file's bytes differ "
        f"(SHA-256 {stored.get('sha256', '?')[:12]}... then, {teacher['sha256'][:12]}... now), so the resumed "
        f"epochs would learn other targets; restore that teacher file (DISTILL.TEACHER), or train the new "
        f"teacher's student in a new OUTPUT_DIR")


def load_train_checkpoint(cfg, model: nn.Module, optimizer=None, scaler=None, ema=None,
                          say: Optional[Callable[[str], None]] = None, classes=None,
                          teacher: Optional[dict] = None) -> int:
    """SlowFast's rules; returns the 0-based epoch to start at.

    1. TRAIN.AUTO_RESUME and a checkpoint in OUTPUT_DIR/checkpoints: continue after the newest one
       (model, optimizer, scaler, EMA).
    2. Else TRAIN.CHECKPOINT_FILE_PATH: its weights (a vanilla file starts a WFWS model: the fusion
       coefficients keep their init). With TRAIN.CHECKPOINT_EPOCH_RESET, or a file without an
       epoch (a timm / official file), start at epoch 0; else continue its schedule.
    3. Else epoch 0.
    An EMA model without state in the checkpoint starts as a copy of the loaded weights.
    The request is checked against the file's identity (``classes``: the data's): a resume must
    be the folder's run (:data:`spin.identity.RULES` "resume"); a start from a file whose class
    names differ needs TRAIN.CHECKPOINT_NEW_CLASSES True. ``teacher``: the run's teacher record
    (:func:`spin.engine.distill.teacher_record`); a resume refuses a teacher whose bytes changed.
    """
    say = say or (lambda msg: None)
    latest = latest_checkpoint(cfg.OUTPUT_DIR) if cfg.TRAIN.AUTO_RESUME else None
    path = latest or cfg.TRAIN.CHECKPOINT_FILE_PATH
    if not path:
        return 0
    ck = load_checkpoint(path)
    bad = [k for k, t in ck["model_state"].items()
           if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights ({_summarise(bad, 4)}); start from an "
                              f"earlier checkpoint")
    load_model_weights(model, ck["model_state"], source=path, allow_missing=() if latest else OPTIONAL_KEYS,
                       fix=None if not latest else "it is OUTPUT_DIR's earlier run, resumed automatically (TRAIN."
                       "AUTO_RESUME): to train a changed model choose a new OUTPUT_DIR; to resume that run, rerun "
                       "with its config (OUTPUT_DIR/config.yaml)")
    if latest:
        _check_resume(cfg, ck, path, classes, say)
        _check_teacher(ck, teacher, path)
    else:
        _check_start(cfg, ck, path, classes)
    resume = latest is not None or not (cfg.TRAIN.CHECKPOINT_EPOCH_RESET or "epoch" not in ck)
    if not resume and fit_relax_to_file(model, ck):
        say("fitted the relaxed-sharing deltas to the per-layer weights of the file")
    if ema is not None:
        if resume and "model_ema_state" in ck:
            ema.load_state_dict(ck["model_ema_state"])
        else:
            ema.load_state_dict(unwrap(model).state_dict())
    if not resume:
        say(f"initialised weights from {path}; starting at epoch 1")
        return 0
    if "optimizer_state" in ck and optimizer is not None:
        _load_optimizer(optimizer, model, ck, path)
    if "scaler_state" in ck and scaler is not None and scaler.is_enabled():
        scaler.load_state_dict(ck["scaler_state"])
    say(f"resumed from {path} (epoch {ck['epoch'] + 1} done)" if latest else
        f"continuing {path} after its epoch {ck['epoch'] + 1}")
    return int(ck["epoch"]) + 1


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


def build_model_from_checkpoint(path: str, opts=(), cfg=None):
    """Rebuild the model a checkpoint was trained with from its stored config (keys spin does not
    know are skipped; ``opts`` are KEY VALUE overrides), or from ``cfg`` when given, and load its
    weights. Returns (model, cfg, checkpoint)."""
    from ..config import check_cfg
    from ..models import build_model

    ck = load_checkpoint(path)
    cfg = cfg if cfg is not None else cfg_from_checkpoint(path, opts, ck)
    check_cfg(cfg, "stats")
    model = build_model(cfg)
    load_model_weights(model, ck["model_state"], source=path)
    idn.check(checkpoint_identity(ck), idn.identity(cfg), "test", f"checkpoint {path} holds another model than requested",
              "drop the overrides (or --cfg) that change the model: the checkpoint's stored config "
              "builds its model")
    fit_relax_to_file(model, ck)
    return model, cfg, ck
