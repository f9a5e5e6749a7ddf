"""Named model builders (timm style): ``create_model("ws_deit_small_patch16_224", num_classes=10)``.

Every builder takes the plan keywords (``share_rate``, ``num_sets``, ``distribution``, ``mapping``,
``seed``, ``scope``, or a ready ``plan``), ``fusion`` and ``relax`` / ``relax_rank`` beside its model
keywords, and timm's builder keywords (:func:`with_cfg`): ``pretrained`` (a local file),
``pretrained_cfg_overlay`` (entries replacing the model's ``pretrained_cfg``), ``features_only``.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..config import ConfigError
from ..fusion import parse_fusion
from ..share_transform import share, shared_stacks_of, stack_plans
from ..sharing import SharingError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
PLAN_KEYS = ("share_rate", "num_sets", "distribution", "mapping", "seed", "scope")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def register_shared_variants(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` and its ``ws_`` (rate 2) and ``wfws_`` (rate 2, mean fusion) variants."""
    register_model(fn)
    for prefix, extra, what in (("ws_", dict(share_rate=2), "WS, rate 2, uniform/sequential, "
                                 "the family's default scope"),
                                ("wfws_", dict(share_rate=2, fusion="mean"), "WFWS: all D layers' "
                                 "weights mean-fused to D/2 sets on every forward")):
        def variant(_fn=fn, _extra=extra, **kwargs):
            # The variant's rate 2 is a default: a plan the caller states (plan=, a rate, a set
            # count, an explicit list) replaces it instead of conflicting with it.
            if any(k in kwargs for k in ("plan", "share_rate", "num_sets")) or any(
                    not isinstance(kwargs.get(k, ""), str) for k in ("mapping", "distribution")):
                _extra = {k: v for k, v in _extra.items() if k != "share_rate"}
            return _fn(**{**_extra, **kwargs})
        variant.__name__ = variant.__qualname__ = prefix + fn.__name__
        variant.__doc__ = f"{what} ({fn.__name__})."
        variant.__module__ = fn.__module__
        if hasattr(fn, "pretrained_cfg"):
            variant.pretrained_cfg = fn.pretrained_cfg
        register_model(variant)
    return fn


def get_builder(name: str) -> Callable[..., nn.Module]:
    return _MODELS[name]


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


def split_plan_kwargs(kwargs: dict) -> dict:
    """Pop the plan keywords (and ``plan``, ``fusion``, ``relax``, ``relax_rank``) out of a
    builder's keywords."""
    return {k: kwargs.pop(k) for k in (*PLAN_KEYS, "plan", "fusion", "relax", "relax_rank") if k in kwargs}


def apply_sharing(model: nn.Module, plan_kwargs: dict, blocks: str = "blocks") -> nn.Module:
    """``spin.share`` a freshly built model (in place) on its stack(s) ``blocks`` when its builder
    was asked for a shared plan or a fusion; a vanilla model keeps its own keys."""
    plans = stack_plans(model, blocks, **{k: v for k, v in plan_kwargs.items() if k in (*PLAN_KEYS, "plan")})
    fusion = plan_kwargs.get("fusion")
    if not any(p.is_shared for p in plans) and not parse_fusion(fusion):
        if plan_kwargs.get("relax") not in (None, "none", "None", ""):
            raise SharingError(f"relax={plan_kwargs['relax']!r} adds per-layer deltas to shared sets; this model "
                               f"shares nothing (give share_rate >= 2, num_sets, a plan, or a fusion)")
        return model
    # A model built from its keywords starts from scratch: its deltas at their init (plain WS).
    return share(model, plan=plans, fusion=fusion, relax=plan_kwargs.get("relax"), blocks=blocks,
                 relax_rank=plan_kwargs.get("relax_rank", 0), fit_relax=False, inplace=True)


def build_shared(model_cls: type, **kwargs) -> nn.Module:
    """``model_cls(**kwargs)`` with the plan keywords and ``pretrained_cfg_overlay`` taken out:
    shared when they ask for it, its pretrained cfg overlaid. The builder of a family whose model
    takes its architecture as keywords."""
    plan_kwargs = split_plan_kwargs(kwargs)
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    return overlay_cfg(apply_sharing(model_cls(**kwargs), plan_kwargs), overlay)


def overlay_cfg(model: nn.Module, overlay: Optional[dict]) -> nn.Module:
    if overlay:
        model.pretrained_cfg = model.default_cfg = {**getattr(model, "pretrained_cfg", {}), **overlay}
    return model


# What names timm's model and its weights on the hub: not a spin model's.
HUB_KEYS = ("architecture", "url", "hf_hub_id", "hf_hub_filename", "tag", "license", "origin_url", "paper_ids",
            "notes")


def timm_cfg(variant: str) -> dict:
    """timm's pretrained cfg of ``variant`` (preprocessing, classifier, first conv), without the
    entries naming timm's model and weights."""
    from timm.models import get_pretrained_cfg

    return {k: v for k, v in get_pretrained_cfg(variant).to_dict().items() if k not in HUB_KEYS}


def set_cfg(model: nn.Module, cfg: dict, overlay: Optional[dict] = None) -> nn.Module:
    """Give ``model`` the pretrained cfg ``cfg`` with this instance's input channels, input size
    (a fixed one: the ``img_size`` of timm's patch embedding) and pool size (the model's own, when it
    computes one), then ``overlay``; ``num_classes`` is always the model's."""
    own = getattr(model, "pretrained_cfg", None) or {}
    embed, _, conv = cfg["first_conv"].rpartition(".")
    embed = model.get_submodule(embed)
    size = tuple(getattr(embed, "img_size", None) or cfg["input_size"][1:])
    model.pretrained_cfg = model.default_cfg = {
        **cfg, "input_size": (embed.get_submodule(conv).weight.shape[1], *size),
        "pool_size": own.get("pool_size", cfg.get("pool_size")), **(overlay or {}), "num_classes": model.num_classes}
    return model


def split_feature_kwargs(kwargs: dict) -> Optional[dict]:
    """Pop timm's feature-extraction keywords out of a builder's; the feature cfg when
    ``features_only``, else None (``out_indices`` and ``feature_cls`` are read only with it, as timm does)."""
    cfg = dict(kwargs.pop("feature_cfg", None) or {})
    if not kwargs.pop("features_only", False):
        return None
    cfg.update({k: kwargs.pop(k) for k in ("out_indices", "feature_cls") if k in kwargs})
    return cfg


def feature_net(model: nn.Module, cfg: dict) -> nn.Module:
    """timm's ``features_only`` wrapper of ``model``, as timm's ``build_model_with_cfg`` makes it:
    ``feature_cls`` getter (the default: forward_intermediates; ``out_indices`` 3 = the last three
    blocks), hook, list, dict or fx. A shared model takes the getter only (the others rebuild or
    trace the model from its modules, without the shared sets its blocks read), and a WFWS model is
    not pruned: its fused sets read every layer."""
    from timm.models._builder import pretrained_cfg_for_features
    from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet, FeatureListNet
    from timm.models._features_fx import FeatureGraphNet

    classes = dict(getter=FeatureGetterNet, hook=FeatureHookNet, list=FeatureListNet, dict=FeatureDictNet,
                   fx=FeatureGraphNet)
    cfg = {"out_indices": 3, **cfg}
    kind = cfg.pop("feature_cls", "getter")
    if kind not in classes:
        raise ConfigError(f"feature_cls {kind!r} is not one of timm's; allowed: {', '.join(classes)}")
    stacks = shared_stacks_of(model)
    if stacks and kind != "getter":
        raise SharingError(f"features_only with feature_cls={kind!r} rebuilds or traces the model from its modules, "
                           f"without the shared sets its blocks read; use feature_cls='getter' (the default)")
    if kind == "getter":
        cfg.setdefault("prune", not any(s.fusion is not None for s in stacks))
    else:
        if getattr(model, "output_fmt", None) is not None:
            cfg.setdefault("output_fmt", model.output_fmt)
        if kind != "fx":  # the block stack is an nn.Sequential: its blocks are the feature modules
            cfg.setdefault("flatten_sequential", True)
    pretrained_cfg = model.pretrained_cfg
    net = classes[kind](model, **cfg)
    net.pretrained_cfg = net.default_cfg = pretrained_cfg_for_features(pretrained_cfg)
    return net


def with_cfg(cfg: dict) -> Callable:
    """Decorator of a named builder: its models carry the pretrained cfg ``cfg`` (:func:`set_cfg`;
    timm's registry lists it for ``spin_<name>``), and it takes timm's builder keywords beside its
    own: ``pretrained`` (weights from a local file, ``pretrained_cfg_overlay=dict(file=PATH)``; see
    :func:`spin.models.timm_interop.load_pretrained`), ``pretrained_cfg``, ``pretrained_cfg_overlay``,
    ``device``, ``dtype``, ``features_only`` (with ``out_indices``, ``feature_cls``, ``feature_cfg``:
    :func:`feature_net`) and ``cache_dir`` (unused: nothing downloads)."""
    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        @functools.wraps(fn)
        def build(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay: Optional[dict] = None,
                  cache_dir=None, device=None, dtype=None, **kwargs) -> nn.Module:
            features = split_feature_kwargs(kwargs)
            if pretrained_cfg is not None and not isinstance(pretrained_cfg, dict):
                if not hasattr(pretrained_cfg, "to_dict"):
                    raise ConfigError(f"spin models have no pretrained tags (got {pretrained_cfg!r}); give "
                                      f"pretrained_cfg as a dict or timm PretrainedCfg, or leave it out")
                pretrained_cfg = pretrained_cfg.to_dict()
            with torch.device(device) if device is not None else contextlib.nullcontext():
                model = fn(**kwargs)
            if dtype is not None:
                model.to(dtype)
            set_cfg(model, {**cfg, **(pretrained_cfg or {})}, pretrained_cfg_overlay)
            if pretrained:
                from .timm_interop import load_pretrained  # imports this module

                load_pretrained(model, model.pretrained_cfg.get("architecture", build.__name__),
                                pretrained_cfg_overlay)
            return model if features is None else feature_net(model, features)

        build.pretrained_cfg = cfg
        return build
    return decorate


def create_timm(model_cls: type, variant: str, defaults: dict, *, blocks: str = "blocks", **kwargs) -> nn.Module:
    """timm's ``model_cls`` built as its ``variant`` (``defaults`` are that variant's keywords,
    ``kwargs`` override them), with timm's pretrained cfg for the variant (:func:`timm_cfg`),
    shared on its stack(s) ``blocks`` when plan keywords or ``fusion`` are given."""
    plan_kwargs = split_plan_kwargs(kwargs)
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    model = apply_sharing(model_cls(**{**defaults, **kwargs}), plan_kwargs, blocks)
    return set_cfg(model, timm_cfg(variant), overlay)
