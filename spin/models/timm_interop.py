"""Interop with timm: convert timm ConvMixer weights, make spin models creatable by timm (with
weights from a local file), and run timm's scripts on them.

timm's ``ConvMixer`` keys (one block i): ``blocks.i.0.fn.0`` depthwise conv, ``blocks.i.0.fn.2``
its BN, ``blocks.i.1`` pointwise conv, ``blocks.i.3`` its BN; ``stem.0``/``stem.2``; ``head``.
Its block has no residual around the pointwise half, so the spin model must be built with
``pointwise_residual=False`` (e.g. ``convmixer_768_32``) to reproduce timm's logits. Loading the
result into a WFWS model gives it all D pretrained pointwise sets.

timm's ``train.py`` / ``validate.py`` / ``benchmark.py`` find spin models once ``spin.models`` is
imported: ``python -m spin.models validate.py --model spin_deit_tiny_patch16_224 ...``
(:func:`run_timm_script`; train.py can also take ``--device-modules spin.models``).
"""
from __future__ import annotations

import re
import runpy
import sys
from typing import Optional

import torch
import torch.nn as nn
from timm.models.convmixer import ConvMixer

from ..config import ConfigError
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


def load_pretrained(model: nn.Module, name: str, overlay: Optional[dict] = None) -> None:
    """Load the local file at ``model.pretrained_cfg["file"]`` (a spin ``.pyth``, a timm ``.pth``
    state dict or checkpoint, an official DeiT / ConvNeXt ``.pth``, a ``.safetensors``; a timm
    ConvMixer's weights into a spin ConvMixer are converted) strictly, adapting as timm's
    ``load_pretrained`` does: the classifier stays at its init when its shape differs, the model has
    none, or ``overlay`` says the file has other classes (timm train.py's ``--pretrained-path`` gives
    ``num_classes=-1``); a first conv with another channel count is adapted (``adapt_input_conv``)."""
    from timm.models import adapt_input_conv

    from ..engine.checkpoint import OPTIONAL_KEYS, load_checkpoint, load_model_weights  # engine imports models
    from .convmixer import SpinConvMixer

    cfg = model.pretrained_cfg
    path = cfg.get("file")
    if not path:
        raise ConfigError(f"{name} has no hub weights; give a local file: pretrained_cfg_overlay=dict(file=PATH) "
                          f"(timm train.py: --pretrained-path PATH), or leave pretrained out")
    state = dict(load_checkpoint(path)["model_state"])
    if isinstance(model, SpinConvMixer) and "stem.0.weight" in state:
        state = convert_timm_state_dict(state)
    own = model.state_dict()
    other_classes = (overlay or {}).get("num_classes", model.num_classes) != model.num_classes
    heads = cfg["classifier"] if isinstance(cfg["classifier"], (list, tuple)) else (cfg["classifier"],)
    dropped = tuple(k for k in state for c in heads if k.startswith(c + ".") and (
        other_classes or k not in own or own[k].shape != state[k].shape))
    for k in dropped:
        del state[k]
    conv = cfg["first_conv"] + ".weight"
    if conv in state and conv in own and state[conv].shape[1] != own[conv].shape[1]:
        state[conv] = adapt_input_conv(own[conv].shape[1], state[conv])
    load_model_weights(model, state, source=path, allow_missing=OPTIONAL_KEYS + dropped,
                       fix=f"fix: create {name} with the keywords the file was saved from (width, depth, "
                           f"sharing plan; a vanilla file starts a WFWS model, not a WS one)")


def _timm_entrypoint(builder):
    def entry(pretrained_cfg_overlay=None, **kwargs):
        return builder(pretrained_cfg_overlay={"architecture": entry.__name__, **(pretrained_cfg_overlay or {})},
                       **kwargs)

    entry.__name__ = entry.__qualname__ = "spin_" + builder.__name__
    entry.__module__ = __name__
    entry.__doc__ = builder.__doc__
    return entry


default_cfgs: dict = {}  # timm reads the registered entrypoints' cfgs from their module


def register_with_timm() -> list[str]:
    """Register every spin builder in timm's registry as ``spin_<name>``, with its builder's
    pretrained cfg (input size, crop, interpolation, mean/std, pool size, first conv, classifier);
    returns the names."""
    from timm.models import generate_default_cfgs, is_model
    from timm.models import register_model as timm_register

    names = []
    for name in list_models():
        timm_name = "spin_" + name
        if not is_model(timm_name):
            builder = get_builder(name)
            default_cfgs.update(generate_default_cfgs({timm_name: dict(builder.pretrained_cfg)}))
            fn = _timm_entrypoint(builder)
            globals()[timm_name] = fn  # timm records the entrypoint's module and name
            timm_register(fn)
        names.append(timm_name)
    return names


def run_timm_script(script: str, argv: list[str]) -> None:
    """Run one of timm's scripts (train.py, validate.py, benchmark.py: they come with timm's source,
    not its wheel) with spin's models registered, as if started as ``python script argv...``."""
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")

