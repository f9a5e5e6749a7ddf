"""Config -> model. This is the one place a CfgNode becomes model keyword arguments."""
from __future__ import annotations

from ..fusion import parse_fusion
from ..sharing import SharingError, SharingPlan, build_plan
from .convmixer import SpinConvMixer

# MODEL.MODEL_NAME -> model family. WSConvMixer is upstream's single class for all variants.
MODEL_FAMILIES = {"WSConvMixer": SpinConvMixer, "ConvMixer": SpinConvMixer,
                  "SpinConvMixer": SpinConvMixer}


def plan_from_cfg(cfg) -> SharingPlan:
    c, ws = cfg.CONVMIXER, cfg.CONVMIXER.WEIGHT_SHARE
    if not ws.ENABLE:
        if parse_fusion(ws.REDUCTION_FN):
            raise SharingError(
                f"CONVMIXER.WEIGHT_SHARE.REDUCTION_FN is {ws.REDUCTION_FN!r} but WEIGHT_SHARE.ENABLE "
                f"is False; set CONVMIXER.WEIGHT_SHARE.ENABLE True for a WFWS model")
        return SharingPlan.unshared(c.DEPTH)
    dist, mapping = str(ws.SHARING_DISTRIBUTION), str(ws.SHARING_MAPPING)
    if (dist.lower() == "custom") != bool(ws.GROUP_SIZES):
        raise SharingError(
            f"SHARING_DISTRIBUTION is {dist!r} and GROUP_SIZES is {list(ws.GROUP_SIZES)}: an explicit "
            f"distribution needs both SHARING_DISTRIBUTION custom and a non-empty GROUP_SIZES list")
    if (mapping.lower() == "custom") != bool(ws.LAYER_MAP):
        raise SharingError(
            f"SHARING_MAPPING is {mapping!r} and LAYER_MAP is {list(ws.LAYER_MAP)}: an explicit "
            f"mapping needs both SHARING_MAPPING custom and a non-empty LAYER_MAP list")
    return build_plan(
        c.DEPTH, share_rate=ws.SHARE_RATE, num_sets=ws.NUM_SETS,
        distribution=list(ws.GROUP_SIZES) if ws.GROUP_SIZES else dist,
        mapping=list(ws.LAYER_MAP) if ws.LAYER_MAP else mapping,
        seed=ws.SEED, scope=ws.SCOPE)


def model_kwargs(cfg) -> dict:
    c = cfg.CONVMIXER
    return dict(
        dim=c.CHANNEL, depth=c.DEPTH, patch_kernel=c.PATCH_KERNEL, patch_stride=c.PATCH_STRIDE,
        patch_padding=c.PATCH_PADDING, kernel_size=c.KERNEL, act=c.ACT_FUNC,
        num_classes=cfg.MODEL.NUM_CLASSES, in_chans=cfg.DATA.INPUT_CHANNEL_NUM[0],
        drop_rate=cfg.MODEL.DROPOUT_RATE, plan=plan_from_cfg(cfg),
        fusion=c.WEIGHT_SHARE.REDUCTION_FN if c.WEIGHT_SHARE.ENABLE else None,
        pointwise_residual=c.POINTWISE_RESIDUAL,
    )


def build_model(cfg):
    """Build the model named by MODEL.MODEL_NAME from the CONVMIXER section (on the CPU)."""
    name = cfg.MODEL.MODEL_NAME
    if name not in MODEL_FAMILIES:
        raise ValueError(f"unknown MODEL.MODEL_NAME {name!r}; allowed: {', '.join(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[name](**model_kwargs(cfg))
