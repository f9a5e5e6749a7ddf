"""Named model builders (timm style): ``create_model("ws_deit_small_patch16_224", num_classes=10)``.

Every builder takes the plan keywords (``share_rate``, ``num_sets``, ``distribution``, ``mapping``,
``seed``, ``scope``, or a ready ``plan``), ``fusion`` and ``relax`` / ``relax_rank`` beside its model
keywords, and
``pretrained_cfg_overlay`` (entries replacing the model's ``pretrained_cfg``, as in timm).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch.nn as nn

from ..config import ConfigError
from ..fusion import parse_fusion
from ..share_transform import share
from ..sharing import SharingError, SharingPlan, build_plan, parse_scope, refuse_beside_plan

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


def resolve_plan(depth: int, plan_kwargs: dict) -> Optional[SharingPlan]:
    """The plan the keywords ask for, or None when they ask for nothing."""
    plan = plan_kwargs.get("plan")
    rest = {k: v for k, v in plan_kwargs.items() if k in PLAN_KEYS}
    refuse_beside_plan(plan, **rest)
    if plan is None and rest:
        plan = build_plan(depth, **rest)
    elif plan is not None and rest.get("scope") is not None:  # the scope of a plan that has none
        plan = SharingPlan(plan.layer_to_set, parse_scope(rest["scope"]))
    return plan


def apply_sharing(model: nn.Module, plan_kwargs: dict) -> nn.Module:
    """``spin.share`` a freshly built model (in place) when its builder was asked for a shared
    plan or a fusion; a vanilla model keeps its own keys."""
    depth = len(model.blocks)
    plan = resolve_plan(depth, plan_kwargs) or SharingPlan.unshared(depth)
    fusion = plan_kwargs.get("fusion")
    if not plan.is_shared and not parse_fusion(fusion):
        if plan_kwargs.get("relax") not in (None, "none", "None", ""):
            raise SharingError(f"relax={plan_kwargs['relax']!r} adds per-layer deltas to shared sets; this model "
                               f"shares nothing (give share_rate >= 2, num_sets, a plan, or a fusion)")
        return model
    # A model built from its keywords starts from scratch: its deltas at their init (plain WS).
    return share(model, plan=plan, fusion=fusion, relax=plan_kwargs.get("relax"),
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


def create_timm(model_cls: type, variant: str, defaults: dict, **kwargs) -> nn.Module:
    """timm's ``model_cls`` built as its ``variant`` (``defaults`` are that variant's keywords,
    ``kwargs`` override them; never pretrained: nothing downloads), with timm's pretrained cfg
    for the variant, shared when plan keywords or ``fusion`` are given."""
    from timm.models import build_model_with_cfg

    plan_kwargs = split_plan_kwargs(kwargs)
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    features, out_indices = kwargs.pop("features_only", False), kwargs.pop("out_indices", 3)
    for k in ("pretrained", "pretrained_cfg", "cache_dir"):
        kwargs.pop(k, None)
    model = build_model_with_cfg(model_cls, variant, False, **{**defaults, **kwargs})
    model = overlay_cfg(apply_sharing(model, plan_kwargs), overlay)
    if features:  # timm's intermediate-feature getter, over the shared blocks as they are
        from timm.models._features import FeatureGetterNet

        cfg = model.pretrained_cfg
        model = FeatureGetterNet(model, out_indices=out_indices, prune=False)
        model.pretrained_cfg = model.default_cfg = cfg
    return model
