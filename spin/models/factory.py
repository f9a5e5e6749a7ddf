"""Config -> model. This is the one place a CfgNode becomes model keyword arguments.

``MODEL.MODEL_NAME`` picks the family, its section (CONVMIXER, VIT, CONVNEXT, MIXER, SWIN) the
architecture, and WEIGHT_SHARE the plan (every family's; a hierarchical family's applies to each of
its stages, one plan per stage). ``plan_from_cfg``, ``fusion_from_cfg``
and ``relax_from_cfg`` are the one home of the plan keys' rules: the config check reports what they
raise, and the model is built from what they return.
"""
from __future__ import annotations

from typing import Optional

import sys

import torch

from ..config import ConfigError
from ..errors import SpinError
from ..fusion import parse_fusion
from ..relax import parse_relax
from ..sharing import DISTRIBUTIONS, MAPPINGS, SharingError, SharingPlan, StagePlans, build_plan, parse_scope
from . import convmixer, convnext_iso, mixer, swin, vit  # noqa: F401  (each registers its family)
from .family import FAMILIES, MODEL_NAMES, Family
from .registry import get_builder, list_models

SHARED_PREFIXES = ("ws_", "wfws_")


def family_of(cfg) -> Family:
    """The family MODEL.MODEL_NAME names: one of its aliases, or one of its named builders."""
    name = cfg.MODEL.MODEL_NAME
    if name in MODEL_NAMES:
        return FAMILIES[MODEL_NAMES[name]]
    if name in list_models():
        if name.startswith(SHARED_PREFIXES):
            base = name.split("_", 1)[1]
            raise ConfigError(f"MODEL.MODEL_NAME {name} is a shared variant, but the plan comes from WEIGHT_SHARE.*: "
                              f"name its vanilla builder {base} and set WEIGHT_SHARE.ENABLE True (SHARE_RATE 2"
                              f"{', REDUCTION_FN mean' if name.startswith('wfws_') else ''})")
        fam = getattr(sys.modules.get(get_builder(name).__module__), "FAMILY", None)
        if fam is None:
            raise ConfigError(f"MODEL.MODEL_NAME {name} is a registered builder outside a family's module, so "
                              f"no config section describes it; register a Family for it (spin.models.family) "
                              f"or build it with spin.models.create_model")
        return fam
    raise ConfigError(f"unknown MODEL.MODEL_NAME {name!r}; allowed: {', '.join(MODEL_NAMES)}, or a named builder "
                      f"({', '.join(n for n in list_models() if not n.startswith(SHARED_PREFIXES))})")


def family(cfg) -> str:
    return family_of(cfg).name


def names_builder(cfg) -> bool:
    """True when MODEL.MODEL_NAME names a registry builder (its pretrained cfg applies; the
    architecture is the family section's)."""
    return cfg.MODEL.MODEL_NAME not in MODEL_NAMES


def model_stacks(cfg) -> list[tuple[str, int]]:
    """(stack path, depth) of each block stack the model shares within itself: one for an
    isotropic family, one per stage for a hierarchical one."""
    fam = family_of(cfg)
    return fam.stacks(cfg) if fam.stacks else [("blocks", cfg[fam.section].DEPTH)]


def model_depth(cfg) -> int:
    """The number of blocks (over all stages)."""
    return sum(depth for _, depth in model_stacks(cfg))


def _fusion(ws):
    try:
        return parse_fusion(ws.REDUCTION_FN)
    except SharingError as e:
        raise SharingError(f"WEIGHT_SHARE.REDUCTION_FN {ws.REDUCTION_FN!r}: {e}") from None


def fusion_from_cfg(cfg):
    return _fusion(cfg.WEIGHT_SHARE) if cfg.WEIGHT_SHARE.ENABLE else None


def relax_from_cfg(cfg) -> dict:
    """``relax`` and ``relax_rank`` of the model: the one place of the RELAX / RELAX_RANK rules."""
    ws = cfg.WEIGHT_SHARE
    try:
        relax = parse_relax(ws.RELAX)
    except SharingError as e:
        raise SharingError(f"WEIGHT_SHARE.RELAX {ws.RELAX!r}: {e}") from None
    if relax and not ws.ENABLE:
        raise SharingError(f"WEIGHT_SHARE.RELAX is {ws.RELAX!r} but WEIGHT_SHARE.ENABLE is False: relaxed sharing "
                           f"relaxes a shared model; set WEIGHT_SHARE.ENABLE True or RELAX none")
    if relax == "lora" and ws.RELAX_RANK < 1:
        raise SharingError(f"WEIGHT_SHARE.RELAX lora needs a rank: set WEIGHT_SHARE.RELAX_RANK >= 1, "
                           f"got {ws.RELAX_RANK}")
    if relax != "lora" and ws.RELAX_RANK != 0:
        raise SharingError(f"WEIGHT_SHARE.RELAX_RANK {ws.RELAX_RANK} is read only by RELAX lora; set "
                           f"WEIGHT_SHARE.RELAX lora, or drop RELAX_RANK")
    return {"relax": relax, "relax_rank": ws.RELAX_RANK if relax == "lora" else 0}


def plan_from_cfg(cfg):
    """The plan WEIGHT_SHARE.* resolves to against the model's depth; unshared when ENABLE is
    False, its keys' values checked all the same (a bad value is an error whether it is read or not).
    A hierarchical family gets :class:`~spin.sharing.StagePlans`: the keys applied to each stage."""
    ws, stacks = cfg.WEIGHT_SHARE, model_stacks(cfg)
    staged = family_of(cfg).stacks is not None
    dist, mapping = str(ws.SHARING_DISTRIBUTION), str(ws.SHARING_MAPPING)
    if dist.lower() not in DISTRIBUTIONS + ("custom",):
        raise SharingError(f"unknown WEIGHT_SHARE.SHARING_DISTRIBUTION {dist!r}; allowed: {', '.join(DISTRIBUTIONS)}, "
                           f"custom (with GROUP_SIZES)")
    if mapping.lower() not in MAPPINGS + ("custom",):
        raise SharingError(f"unknown WEIGHT_SHARE.SHARING_MAPPING {mapping!r}; allowed: {', '.join(MAPPINGS)}, "
                           f"custom (with LAYER_MAP)")
    if ws.SHARE_RATE < 1:
        raise SharingError(f"WEIGHT_SHARE.SHARE_RATE must be >= 1, got {ws.SHARE_RATE}")
    if ws.NUM_SETS < 0:
        raise SharingError(f"WEIGHT_SHARE.NUM_SETS must be >= 0 (0: DEPTH / SHARE_RATE), got {ws.NUM_SETS}")
    try:
        scope = parse_scope(ws.SCOPE or None)
    except SharingError as e:
        raise SharingError(f"WEIGHT_SHARE.SCOPE: {e}") from None
    if not ws.ENABLE:
        if _fusion(ws):
            raise SharingError(f"WEIGHT_SHARE.REDUCTION_FN is {ws.REDUCTION_FN!r} but WEIGHT_SHARE.ENABLE is False; "
                               f"set WEIGHT_SHARE.ENABLE True for a WFWS model")
        plans = [SharingPlan.unshared(depth) for _, depth in stacks]
        return StagePlans(plans) if staged else plans[0]
    if staged and (ws.GROUP_SIZES or ws.LAYER_MAP):
        raise SharingError(f"WEIGHT_SHARE.GROUP_SIZES / LAYER_MAP describe one stack, but {family_of(cfg).section} "
                           f"shares each stage within itself (depths {[d for _, d in stacks]}); drop them and give "
                           f"SHARE_RATE or NUM_SETS, applied to every stage")
    if (dist.lower() == "custom") != bool(ws.GROUP_SIZES):
        raise SharingError(
            f"WEIGHT_SHARE.SHARING_DISTRIBUTION is {dist!r} and GROUP_SIZES is {list(ws.GROUP_SIZES)}: an "
            f"explicit distribution needs both SHARING_DISTRIBUTION custom and a non-empty GROUP_SIZES list")
    if (mapping.lower() == "custom") != bool(ws.LAYER_MAP):
        raise SharingError(
            f"WEIGHT_SHARE.SHARING_MAPPING is {mapping!r} and LAYER_MAP is {list(ws.LAYER_MAP)}: an explicit "
            f"mapping needs both SHARING_MAPPING custom and a non-empty LAYER_MAP list")
    plans = []
    for k, (_, depth) in enumerate(stacks):
        try:
            plans.append(build_plan(
                depth, share_rate=ws.SHARE_RATE, num_sets=ws.NUM_SETS,
                distribution=list(ws.GROUP_SIZES) if ws.GROUP_SIZES else dist,
                mapping=list(ws.LAYER_MAP) if ws.LAYER_MAP else mapping,
                seed=ws.SEED, scope=scope))
        except SharingError as e:  # build_plan speaks of keywords; say which section (and stage) they came from
            where = f" (stage {k}, {depth} blocks)" if staged else ""
            raise SharingError(f"WEIGHT_SHARE{where}: {e}") from None
    return StagePlans(plans) if staged else plans[0]


def model_kwargs(cfg) -> dict:
    """The keyword arguments of this config's builder: the family's architecture keywords (every
    key of its section, whichever builder MODEL.MODEL_NAME names: what the config says is what the
    model is, for the check, the identity and spin stats alike), the plan, and the pretrained cfg
    entries the data settings define."""
    fam, d = family_of(cfg), cfg.DATA
    in_chans = d.INPUT_CHANNEL_NUM[0]
    return dict(fam.kwargs(cfg), num_classes=cfg.MODEL.NUM_CLASSES, in_chans=in_chans, drop_rate=cfg.MODEL.DROPOUT_RATE,
                plan=plan_from_cfg(cfg), fusion=fusion_from_cfg(cfg), **relax_from_cfg(cfg),
                pretrained_cfg_overlay=dict(
                    input_size=(in_chans, d.TEST_CROP_SIZE, d.TEST_CROP_SIZE),
                    crop_pct=d.VAL_CROP_RATIO, interpolation=cfg.AUG.INTERPOLATION,
                    mean=tuple(d.MEAN), std=tuple(d.STD), num_classes=cfg.MODEL.NUM_CLASSES))


def build_model(cfg):
    """Build the model of MODEL.MODEL_NAME from its config section (on the CPU)."""
    fam = family_of(cfg)  # refuses an unknown or shared-variant name
    builder = get_builder(cfg.MODEL.MODEL_NAME) if names_builder(cfg) else fam.build
    return builder(**model_kwargs(cfg))


_BUILDS_OK: set = set()


def _build_fails(cfg) -> Optional[Exception]:
    """The exception building ``cfg``'s model and running it once at each crop size raises, or
    None. The meta device allocates nothing and computes nothing, but checks every shape, so
    this costs milliseconds even for an 87M-parameter model."""
    try:
        with torch.device("meta"), torch.no_grad():
            model = build_model(cfg).eval()
            for crop in sorted({cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE}):
                model(torch.zeros(2, cfg.DATA.INPUT_CHANNEL_NUM[0], crop, crop))
    except SpinError:
        raise
    except Exception as e:  # noqa: BLE001  (whatever the layers or timm reject)
        return e
    return None


def build_problem(cfg) -> Optional[str]:
    """None if ``cfg``'s model builds and runs at its crop sizes, else one line naming the keys
    that stop it: each changed key whose default makes the model build is named. Plan errors
    (SharingError) come out as they are."""
    from ..config import get_cfg
    from ..config.check import changed_arch_keys

    # A sweep checks every trial: trials that differ only in what the model does not read
    # (learning rate, seed, ...) share one build.
    arch = (cfg.MODEL.dump(), cfg[family_of(cfg).section].dump(), cfg.WEIGHT_SHARE.dump(),
            cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE, tuple(cfg.DATA.INPUT_CHANNEL_NUM), cfg.AUG.INTERPOLATION)
    if arch in _BUILDS_OK:
        return None
    err = _build_fails(cfg)
    if err is None:
        _BUILDS_OK.add(arch)
        return None

    default, sec = get_cfg(), family_of(cfg).section
    keys = changed_arch_keys(cfg, sec, default)
    keys += [k for k in ("DATA.TRAIN_CROP_SIZE", "DATA.TEST_CROP_SIZE", "MODEL.NUM_CLASSES")
             if _get(cfg, k) != _get(default, k)]
    culprits = []
    for key in keys:
        trial = cfg.clone()
        trial.defrost()
        a, b = key.split(".")
        trial[a][b] = default[a][b]
        try:
            if _build_fails(trial) is None:
                culprits.append(key)
        except SpinError:
            pass
    why = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    name = f"MODEL.MODEL_NAME {cfg.MODEL.MODEL_NAME}"
    if culprits:
        shown = ", ".join(f"{k} {_get(cfg, k)!r}" for k in culprits)
        return (f"{name} cannot be built or run with {shown} ({type(err).__name__}: {why}); change "
                f"{'it' if len(culprits) == 1 else 'one of them'} (the default {_get(default, culprits[0])!r} "
                f"of {culprits[0]} works)")
    return (f"{name} cannot be built or run from its {sec}.* values ({type(err).__name__}: {why}); check "
            f"{', '.join(keys) or sec + '.*'}")


def _get(cfg, key: str):
    a, b = key.split(".")
    return cfg[a][b]
