"""Interop with timm: convert timm ConvMixer weights, and make spin models creatable by timm.

timm's ``ConvMixer`` keys (one block i): ``blocks.i.0.fn.0`` depthwise conv, ``blocks.i.0.fn.2``
its BN, ``blocks.i.1`` pointwise conv, ``blocks.i.3`` its BN; ``stem.0``/``stem.2``; ``head``.
Its block has no residual around the pointwise half, so the spin model must be built with
``pointwise_residual=False`` (e.g. ``convmixer_768_32``) to reproduce timm's logits. Loading the
result into a WFWS model gives it all D pretrained pointwise sets.
"""
from __future__ import annotations

import re
import sys

import torch
from timm.models.convmixer import ConvMixer

from ..share_transform import register_family
from .registry import get_builder, list_models

# timm's block is Sequential(Residual(Sequential(dwconv, act, BN)), 1x1 conv, act, BN).
register_family(ConvMixer, "convmixer", {"pointwise": ("1.*",), "depthwise": ("0.fn.0.*",),
                                         "norm": ("0.fn.2.*", "3.*")})

_RULES = [
    (r"^stem\.0\.(.*)$", r"patch_embed.conv.\1"),
    (r"^stem\.2\.(.*)$", r"patch_embed.bn.\1"),
    (r"^blocks\.(\d+)\.0\.fn\.0\.(.*)$", r"blocks.\1.dwise_blk.0.\2"),
    (r"^blocks\.(\d+)\.0\.fn\.2\.(.*)$", r"blocks.\1.dwise_blk.2.\2"),
    (r"^blocks\.(\d+)\.1\.weight$", r"pwise_w.\1"),
    (r"^blocks\.(\d+)\.1\.bias$", r"pwise_b.\1"),
    (r"^blocks\.(\d+)\.3\.(.*)$", r"blocks.\1.bn2.\2"),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
]


def convert_timm_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ConvMixer state dict -> spin's (upstream's) keys, per-layer pointwise sets pwise_w.{i}."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise KeyError(f"key {key!r} is not part of a timm ConvMixer state dict; "
                           f"convert only timm.models.convmixer.ConvMixer weights")
    return out


def _timm_entrypoint(builder):
    def entry(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
              cache_dir=None, **kwargs):
        if pretrained:
            raise ValueError(
                f"no hub weights for {entry.__name__}; load a spin checkpoint instead "
                f"(spin.engine.checkpoint.load_model_weights) or timm weights through "
                f"spin.models.convert_timm_state_dict")
        kwargs.pop("device", None), kwargs.pop("dtype", None)
        if "drop_rate" in kwargs and kwargs["drop_rate"] is None:
            kwargs.pop("drop_rate")
        overlay = {**_PRETRAINED_CFGS[entry.__name__], **(pretrained_cfg_overlay or {})}
        if kwargs.get("num_classes") is not None:
            overlay["num_classes"] = kwargs["num_classes"]
        return builder(pretrained_cfg_overlay=overlay, **kwargs)

    entry.__name__ = entry.__qualname__ = "spin_" + builder.__name__
    entry.__module__ = __name__
    entry.__doc__ = builder.__doc__
    return entry


_PRETRAINED_CFGS: dict[str, dict] = {}
default_cfgs: dict = {}  # timm reads the registered entrypoints' cfgs from their module


def register_with_timm() -> list[str]:
    """Register every spin builder in timm's registry as ``spin_<name>``, with the pretrained
    cfg of its family (input size, crop, interpolation, mean/std, first conv, classifier);
    returns the names."""
    from timm.models import generate_default_cfgs, is_model
    from timm.models import register_model as timm_register

    names = []
    for name in list_models():
        timm_name = "spin_" + name
        if not is_model(timm_name):
            builder = get_builder(name)
            cfg = dict(sys.modules[builder.__module__].PRETRAINED_CFG, architecture=timm_name)
            for k in ("url", "hf_hub_id", "tag", "license", "origin_url", "paper_ids", "notes"):
                cfg.pop(k, None)
            _PRETRAINED_CFGS[timm_name] = cfg
            default_cfgs.update(generate_default_cfgs({timm_name: {k: v for k, v in cfg.items()
                                                                   if k != "architecture"}}))
            fn = _timm_entrypoint(builder)
            globals()[timm_name] = fn  # timm records the entrypoint's module and name
            timm_register(fn)
        names.append(timm_name)
    return names
