"""Named architectures. Plan keywords (share_rate, num_sets, distribution, mapping, seed, scope)
are turned into a SharingPlan; everything else goes to SpinConvMixer."""
from __future__ import annotations

from ..sharing import build_plan
from .convmixer import SpinConvMixer
from .registry import register_model

_PLAN_KEYS = ("share_rate", "num_sets", "distribution", "mapping", "seed", "scope")


def _create(defaults: dict, **kwargs) -> SpinConvMixer:
    args = {**defaults, **kwargs}
    plan_args = {k: args.pop(k) for k in _PLAN_KEYS if k in args}
    if plan_args and "plan" not in args:
        args["plan"] = build_plan(args.get("depth", 32), **plan_args)
    return SpinConvMixer(**args)


_SPIN_768 = dict(dim=768, depth=32, patch_kernel=14, kernel_size=3, act="relu")


@register_model
def convmixer_768_32_14_3(**kwargs) -> SpinConvMixer:
    """SPIN's vanilla ConvMixer (76.32% top-1 published)."""
    return _create(_SPIN_768, **kwargs)


@register_model
def ws_convmixer_768_32_14_3(**kwargs) -> SpinConvMixer:
    """WS-ConvMixer, rate 2, uniform/sequential (74.27% published)."""
    return _create(dict(_SPIN_768, share_rate=2), **kwargs)


@register_model
def wfws_convmixer_768_32_14_3(**kwargs) -> SpinConvMixer:
    """WFWS-ConvMixer: all 32 pretrained sets, mean-fused to 16 on every forward (75.21%)."""
    return _create(dict(_SPIN_768, share_rate=2, fusion="mean"), **kwargs)


@register_model
def convmixer_768_32(**kwargs) -> SpinConvMixer:
    """The original ConvMixer-768/32 (timm layout: K7 P7, ReLU, no pointwise residual)."""
    return _create(dict(dim=768, depth=32, patch_kernel=7, kernel_size=7, act="relu",
                        pointwise_residual=False), **kwargs)


@register_model
def convmixer_1536_20(**kwargs) -> SpinConvMixer:
    """The original ConvMixer-1536/20 (timm layout: K9 P7, GELU, no pointwise residual)."""
    return _create(dict(dim=1536, depth=20, patch_kernel=7, kernel_size=9, act="gelu",
                        pointwise_residual=False), **kwargs)
