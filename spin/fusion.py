"""Weight fusion (WFWS): reduce the D per-layer weights of a group to the group's one shared set.

For set g with member layers L_g (from the plan's mapping, in layer order):

    mean                   W_g = mean_l W_l                           b_g = mean_l b_l
    choose_first           W_g = W_first(L_g)                         b_g = b_first(L_g)
    scalar_weighted_mean   W_g = mean_l (s_l * W_l),     s_l in R     b_g = mean_l b_l
    channel_weighted_mean  W_g = mean_l (c_l[:, None, None, None] * W_l),  c_l in R^C_out

Upstream groups contiguous layers whatever the mapping; here the groups are the plan's, which is
the same for ``sequential`` and correct for every other mapping.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .sharing import SharingError, SharingPlan

FUSIONS = ("mean", "choose_first", "scalar_weighted_mean", "channel_weighted_mean")
NONE_NAMES = ("", "none", "null")  # spellings of "no fusion" / "no relax"


def parse_fusion(name: Optional[str]) -> Optional[str]:
    """Canonical fusion name, or None for no fusion ("None", "", None)."""
    if name is None or str(name).strip().lower() in NONE_NAMES:
        return None
    key = str(name).strip().lower()
    if key not in FUSIONS:
        raise SharingError(
            f"unknown weight fusion (REDUCTION_FN) {name!r}; allowed: None, {', '.join(FUSIONS)}")
    return key


def coefficient_shape(fusion: Optional[str], channels: int) -> Optional[tuple[int, ...]]:
    """Shape of one layer's learnable fusion coefficient (``reduction_w.{i}``), or None."""
    return {"scalar_weighted_mean": (1,), "channel_weighted_mean": (channels,)}.get(fusion)


def _per_channel(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(1,) or (C_out,) coefficient -> broadcastable against a (C_out, ...) weight."""
    return c.reshape(c.shape + (1,) * (like.dim() - 1)).to(like.dtype)


class _GroupMean(torch.autograd.Function):
    """W_g = mean over the group's layers of c_l * W_l (c_l = 1 without coefficients).

    Written out because autograd's version (stack -> reshape -> mean) materialises (D, ...)
    tensors twice in backward; here each layer's gradient c_l * G_g / n_g is written once and
    handed over without a copy (7% -> ~3% WFWS overhead per train step at 768/32, bench/).
    """

    @staticmethod
    def forward(ctx, groups, coeffs, *weights):
        out = []  # N separate tensors, so backward gets N separate gradients (no stack/unbind)
        for members in groups:
            acc = torch.empty_like(weights[members[0]])
            for j, l in enumerate(members):
                w = weights[l] if coeffs is None else weights[l] * _per_channel(coeffs[l], weights[l])
                acc.copy_(w) if j == 0 else acc.add_(w)
            out.append(acc.mul_(1.0 / len(members)))
        ctx.groups = groups
        ctx.save_for_backward(coeffs, *weights)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        coeffs, *weights = ctx.saved_tensors
        grad_w = [None] * len(weights)
        grad_c = torch.zeros_like(coeffs) if coeffs is not None and ctx.needs_input_grad[1] else None
        for members, grad in zip(ctx.groups, grads):
            if grad is None:
                continue
            scale = 1.0 / len(members)
            for l in members:
                if ctx.needs_input_grad[2 + l]:  # a fresh tensor per layer: taken as .grad, no copy
                    grad_w[l] = grad * (scale if coeffs is None else
                                        _per_channel(coeffs[l], grad) * scale)
                if grad_c is not None:
                    prod = (grad * weights[l]).reshape(grad.shape[0], -1).sum(1) * scale
                    grad_c[l] = prod.sum().reshape(1) if grad_c.shape[1] == 1 else prod
        return (None, grad_c, *grad_w)


def fuse_group(weights: Sequence[torch.Tensor], fusion: str,
               coeffs: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """One group's member tensors (C_out, ...) in layer order -> its fused tensor. ``coeffs``:
    one (1,) or (C_out,) coefficient per member, or None (plain mean; biases pass None)."""
    if fusion == "choose_first":
        return weights[0]
    c = torch.stack(list(coeffs)) if coeffs is not None else None
    return _GroupMean.apply((tuple(range(len(weights))),), c, *weights)[0]


def fuse(weights: Sequence[torch.Tensor], plan: SharingPlan, fusion: str,
         coeffs: Optional[Sequence[torch.Tensor]] = None, is_bias: bool = False) -> list[torch.Tensor]:
    """D per-layer tensors (C_out, ...) -> N fused tensors, grouped by ``plan.groups``; ``coeffs``:
    one (1,) or (C_out,) coefficient per layer (biases ignore them)."""
    fusion = parse_fusion(fusion)
    if fusion is None:
        raise SharingError("fuse() needs a fusion strategy; allowed: " + ", ".join(FUSIONS))
    if len(weights) != plan.depth:
        raise SharingError(f"fusion needs one tensor per layer ({plan.depth}), got {len(weights)}")
    c = None if is_bias or coeffs is None else list(coeffs)
    return [fuse_group([weights[l] for l in g], fusion, None if c is None else [c[l] for l in g]) for g in plan.groups]


# Relaxed sharing lived here before spin.relax; its former names resolve there (lazily: spin.relax
# imports this module).
_MOVED = {"RELAXES": "RELAXES", "parse_relax": "parse_relax", "relax_shapes": "relax_shapes",
          "relax_init": "zero_init", "relax_apply": "relax_apply", "lora_from_residual": "lora_from_residual",
          "fit_scale": "fit_scale", "fit_relax": "fit_init"}


def __getattr__(name: str):
    if name in _MOVED:
        from . import relax

        return getattr(relax, _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
