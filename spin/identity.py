"""What defines a run: the one place that says which config keys change the model, the data or
the recipe, and which are harmless, and what each action does about a difference.

A checkpoint stores ``identity`` (older files: derived from their stored ``cfg`` and ``classes``),
a sweep trial stores its config in sweep_trial.json, and a run folder is its checkpoints. An
identity has four parts, each a flat ``{name: value}``:

* ``model``   — the family, its architecture keys, MODEL.NUM_CLASSES, the input channels (and the
  crop for ViT/Mixer/Swin, whose position embedding or attention masks it sizes), and the *resolved*
  plan: layer->set map (Swin: one per stage), scope, fusion, relax. Two configs that resolve to the
  same plan are the same model.
* ``data``    — TRAIN/TEST.DATASET, DATA.PATH_TO_DATA_DIR (absolute), DATA.TRAIN_IMAGES_PER_CLASS.
* ``classes`` — the class names, in label order (a checkpoint's; unknown for a config alone).
* ``recipe``  — every other key that is not :data:`HARMLESS` (solver, augmentation, seed, ...).

:data:`RULES` says, per action, which differences are refused; all others are logged.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

from yacs.config import CfgNode

from .errors import SpinError

# Keys that change neither the model nor the numbers a run reports: a rerun, a resume or a test
# may change them freely. A key ending in "." is a whole section.
HARMLESS = ("OUTPUT_DIR", "LOG_PERIOD", "LOG_JSON_TO_CONSOLE", "TENSORBOARD.", "DATA_LOADER.", "DATA.DOWNLOAD",
            "TRAIN.ENABLE", "TEST.ENABLE", "TRAIN.EVAL_PERIOD", "TRAIN.CHECKPOINT_PERIOD", "TRAIN.AUTO_RESUME",
            "TRAIN.CHECKPOINT_NEW_CLASSES", "TRAIN.COMPILE", "TRAIN.CHANNELS_LAST", "TEST.BATCH_SIZE",
            "TEST.CHECKPOINT_FILE_PATH", "NUM_GPUS", "NUM_SHARDS", "SHARD_ID", "DIST_BACKEND")
DATA_KEYS = ("TRAIN.DATASET", "TEST.DATASET", "DATA.PATH_TO_DATA_DIR", "DATA.TRAIN_IMAGES_PER_CLASS")
PATH_KEYS = ("DATA.PATH_TO_DATA_DIR", "TRAIN.CHECKPOINT_FILE_PATH", "DISTILL.TEACHER")
# Raw keys the model part covers in resolved form (a family's section is read only for that family).
MODEL_SECTIONS = ("CONVMIXER.", "VIT.", "CONVNEXT.", "MIXER.", "SWIN.", "WEIGHT_SHARE.")
MODEL_KEYS = ("MODEL.MODEL_NAME", "MODEL.NUM_CLASSES", "DATA.INPUT_CHANNEL_NUM")
PARTS = ("model", "data", "classes", "recipe")

# action -> the (part, key) differences it refuses; key None: the whole part. Resuming on a moved
# data folder is fine (same classes, same data set); a changed recipe on resume is logged.
RULES = {
    "resume": (("model", None), ("classes", None), ("data", "TRAIN.DATASET"), ("data", "TEST.DATASET"),
               ("data", "DATA.TRAIN_IMAGES_PER_CLASS")),
    "sweep": (("model", None), ("data", None), ("classes", None), ("recipe", None)),
    "test": (("model", None), ("classes", None)),
    "start": (("classes", None),),
}


class IdentityError(SpinError, RuntimeError):
    """A request that contradicts what a checkpoint, run folder or sweep trial holds."""


def _flat(node: CfgNode, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, CfgNode):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, (list, tuple)) else v
    return out


def _harmless(key: str) -> bool:
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS)


def _model_part(cfg, flat: dict) -> dict:
    from .models.factory import family_of, fusion_from_cfg, names_builder, plan_from_cfg, relax_from_cfg
    from .sharing import DEFAULT_SCOPES, StagePlans

    desc = family_of(cfg)
    fam, section = desc.name, desc.section + "."
    part = {"family": fam, **{k: flat[k] for k in MODEL_KEYS[1:]}}
    if names_builder(cfg):  # a named variant's defaults are part of its architecture
        part["builder"] = flat["MODEL.MODEL_NAME"]
    part.update({k: v for k, v in flat.items() if k.startswith(section)})
    if fam in ("vit", "mixer", "swin"):
        part["DATA.TRAIN_CROP_SIZE"] = flat["DATA.TRAIN_CROP_SIZE"]
    plan, relax = plan_from_cfg(cfg), relax_from_cfg(cfg)
    # per stage for a hierarchical family: lists all the way down, as a JSON round trip gives them
    part["WEIGHT_SHARE layer->set map"] = [list(p.layer_to_set) for p in plan] if isinstance(plan, StagePlans) \
        else list(plan.layer_to_set)
    part["WEIGHT_SHARE scope"] = ("+".join(plan.scope) or DEFAULT_SCOPES[fam]) if plan.is_shared else "-"
    part["WEIGHT_SHARE fusion"] = fusion_from_cfg(cfg)
    part["WEIGHT_SHARE relax"] = f"{relax['relax']} rank {relax['relax_rank']}" if relax["relax"] == "lora" \
        else relax["relax"]
    return part


def identity(cfg, classes: Optional[Iterable[str]] = None) -> dict:
    """The identity of a run of ``cfg`` on data with ``classes`` (None: not known)."""
    flat = _flat(cfg)
    for key in PATH_KEYS:
        # the data folder is one place whatever the working directory; a starting checkpoint is
        # kept as written: a sweep names its parents' files relative to --out, and a report or
        # rerun from another directory must not see them as changed
        flat[key] = "" if not flat[key] else (os.path.abspath(flat[key]) if key == "DATA.PATH_TO_DATA_DIR"
                                               else os.path.normpath(flat[key]))
    data = {k: flat[k] for k in DATA_KEYS}
    covered = set(data) | set(MODEL_KEYS)
    recipe = {k: v for k, v in flat.items() if k not in covered and not _harmless(k)
              and not k.startswith(MODEL_SECTIONS)}
    return {"model": _model_part(cfg, flat), "data": data,
            "classes": {} if classes is None else {"classes": list(classes)}, "recipe": recipe}


def identity_of_stored(data: Optional[dict], classes=None) -> Optional[dict]:
    """The identity of a stored config (a nested dict: a checkpoint's or a run folder's YAML),
    keys spin does not know skipped; None without a config."""
    from .config import get_cfg, merge_known

    if not data:
        return None
    cfg = get_cfg()
    merge_known(cfg, data)
    return identity(cfg, classes)


def differences(old: dict, new: dict, action: str) -> tuple[list, list]:
    """(refused, logged): ``(name, old value, new value)`` of every entry both sides know that
    differs; refused are those ``RULES[action]`` names. Entries of an identity stored before
    WEIGHT_SHARE was every family's plan section are read under their current names."""
    from .config import plan_key

    refused, logged = [], []
    for part in PARTS:
        a, b = ({plan_key(k): v for k, v in (side.get(part) or {}).items()} for side in (old, new))
        for key in a:
            if key in b and a[key] != b[key]:
                hit = any(p == part and k in (None, key) for p, k in RULES[action])
                (refused if hit else logged).append((key, a[key], b[key]))
    return refused, logged


def _short(value) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(diffs: list, n: int = 4) -> str:
    """'KEY stored -> requested, ...' for the first ``n`` differences (class lists say what differs)."""
    parts = []
    for key, old, new in diffs[:n]:
        if key == "classes":
            only_old = [c for c in old if c not in new]
            only_new = [c for c in new if c not in old]
            parts.append(f"{len(old)} -> {len(new)} classes (only stored: {_short(only_old)}, only requested: "
                         f"{_short(only_new)})" if only_old or only_new else "the same classes in another order")
        else:
            parts.append(f"{key} {_short(old)} -> {_short(new)}")
    return ", ".join(parts) + (f" (+{len(diffs) - n} more)" if len(diffs) > n else "")


def check(old: Optional[dict], new: dict, action: str, lead: str, fix: str) -> list:
    """Raise IdentityError: ``lead``, the refused differences (stored -> requested), ``fix``.
    Returns the differences the action accepts, to be logged."""
    if old is None:
        return []
    refused, logged = differences(old, new, action)
    if refused:
        raise IdentityError(f"{lead}: {describe(refused)}; {fix}")
    return logged
