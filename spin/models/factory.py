"""Config -> model. This is the one place a CfgNode becomes model keyword arguments.

``MODEL.MODEL_NAME`` picks the family, its section (CONVMIXER, VIT, CONVNEXT, MIXER) the
architecture, and WEIGHT_SHARE the plan (every family's). ``plan_from_cfg``, ``fusion_from_cfg``
and ``relax_from_cfg`` are the one home of the plan keys' rules: the config check reports what they
raise, and the model is built from what they return.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..config import FAMILY_SECTIONS, MODEL_FAMILIES, ConfigError
from ..errors import SpinError
from ..fusion import parse_fusion
from ..relax import parse_relax
from ..sharing import DISTRIBUTIONS, MAPPINGS, SharingError, SharingPlan, build_plan, parse_scope
from .convmixer import SpinConvMixer
from .convnext_iso import convnext_isotropic
from .mixer import mlp_mixer
from .registry import overlay_cfg
from .vit import vision_transformer

def family(cfg) -> str:
    name = cfg.MODEL.MODEL_NAME
    if name not in MODEL_FAMILIES:
        raise ConfigError(f"unknown MODEL.MODEL_NAME {name!r}; allowed: {', '.join(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[name]


def model_depth(cfg) -> int:
    return cfg[FAMILY_SECTIONS[family(cfg)]].DEPTH


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


def plan_from_cfg(cfg) -> SharingPlan:
    """The plan WEIGHT_SHARE.* resolves to against the model's depth; unshared when ENABLE is
    False, its keys' values checked all the same (a bad value is an error whether it is read or not)."""
    ws, depth = cfg.WEIGHT_SHARE, model_depth(cfg)
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
        return SharingPlan.unshared(depth)
    if (dist.lower() == "custom") != bool(ws.GROUP_SIZES):
        raise SharingError(
            f"WEIGHT_SHARE.SHARING_DISTRIBUTION is {dist!r} and GROUP_SIZES is {list(ws.GROUP_SIZES)}: an "
            f"explicit distribution needs both SHARING_DISTRIBUTION custom and a non-empty GROUP_SIZES list")
    if (mapping.lower() == "custom") != bool(ws.LAYER_MAP):
        raise SharingError(
            f"WEIGHT_SHARE.SHARING_MAPPING is {mapping!r} and LAYER_MAP is {list(ws.LAYER_MAP)}: an explicit "
            f"mapping needs both SHARING_MAPPING custom and a non-empty LAYER_MAP list")
    try:
        return build_plan(
            depth, share_rate=ws.SHARE_RATE, num_sets=ws.NUM_SETS,
            distribution=list(ws.GROUP_SIZES) if ws.GROUP_SIZES else dist,
            mapping=list(ws.LAYER_MAP) if ws.LAYER_MAP else mapping,
            seed=ws.SEED, scope=scope)
    except SharingError as e:  # build_plan speaks of keywords; say which section they came from
        raise SharingError(f"WEIGHT_SHARE: {e}") from None


def model_kwargs(cfg) -> dict:
    """The keyword arguments of this config's family builder."""
    fam, d = family(cfg), cfg.DATA
    in_chans = d.INPUT_CHANNEL_NUM[0]
    common = dict(num_classes=cfg.MODEL.NUM_CLASSES, in_chans=in_chans, drop_rate=cfg.MODEL.DROPOUT_RATE,
                  plan=plan_from_cfg(cfg), fusion=fusion_from_cfg(cfg), **relax_from_cfg(cfg),
                  pretrained_cfg_overlay=dict(
                      input_size=(in_chans, d.TEST_CROP_SIZE, d.TEST_CROP_SIZE),
                      crop_pct=d.VAL_CROP_RATIO, interpolation=cfg.AUG.INTERPOLATION,
                      mean=tuple(d.MEAN), std=tuple(d.STD), num_classes=cfg.MODEL.NUM_CLASSES))
    drop_path = cfg.MODEL.DROP_PATH_RATE
    if fam == "convmixer":
        c = cfg.CONVMIXER
        return dict(common, dim=c.CHANNEL, depth=c.DEPTH, patch_kernel=c.PATCH_KERNEL,
                    patch_stride=c.PATCH_STRIDE, patch_padding=c.PATCH_PADDING, kernel_size=c.KERNEL,
                    act=c.ACT_FUNC, pointwise_residual=c.POINTWISE_RESIDUAL, drop_path_rate=drop_path)
    if fam == "vit":
        v = cfg.VIT
        return dict(common, img_size=d.TRAIN_CROP_SIZE, patch_size=v.PATCH_SIZE, embed_dim=v.EMBED_DIM,
                    depth=v.DEPTH, num_heads=v.NUM_HEADS, mlp_ratio=v.MLP_RATIO, qkv_bias=v.QKV_BIAS,
                    init_values=v.LAYER_SCALE_INIT_VALUE or None, class_token=v.CLASS_TOKEN,
                    global_pool=v.GLOBAL_POOL, drop_path_rate=drop_path)
    if fam == "convnext":
        c = cfg.CONVNEXT
        return dict(common, dim=c.DIM, depth=c.DEPTH, patch_size=c.PATCH_SIZE, kernel_size=c.KERNEL,
                    layer_scale_init_value=c.LAYER_SCALE_INIT_VALUE, head_init_scale=c.HEAD_INIT_SCALE,
                    drop_path_rate=drop_path)
    m = cfg.MIXER
    return dict(common, img_size=d.TRAIN_CROP_SIZE, patch_size=m.PATCH_SIZE, embed_dim=m.EMBED_DIM,
                num_blocks=m.DEPTH, mlp_ratio=tuple(m.MLP_RATIO), drop_path_rate=drop_path)


def build_model(cfg):
    """Build the model of MODEL.MODEL_NAME from its config section (on the CPU)."""
    kwargs = model_kwargs(cfg)
    fam = family(cfg)
    if fam == "convmixer":
        overlay = kwargs.pop("pretrained_cfg_overlay")
        return overlay_cfg(SpinConvMixer(**kwargs), overlay)
    if fam == "vit":
        return vision_transformer("deit_small_patch16_224", **kwargs)
    if fam == "convnext":
        return convnext_isotropic(**kwargs)
    return mlp_mixer("mixer_s16_224", **kwargs)


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
    arch = (cfg.MODEL.dump(), cfg[FAMILY_SECTIONS[family(cfg)]].dump(), cfg.WEIGHT_SHARE.dump(),
            cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE, tuple(cfg.DATA.INPUT_CHANNEL_NUM), cfg.AUG.INTERPOLATION)
    if arch in _BUILDS_OK:
        return None
    err = _build_fails(cfg)
    if err is None:
        _BUILDS_OK.add(arch)
        return None

    default, sec = get_cfg(), FAMILY_SECTIONS[family(cfg)]
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
