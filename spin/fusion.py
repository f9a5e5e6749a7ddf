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
_NONE = ("", "none", "null")


def parse_fusion(name: Optional[str]) -> Optional[str]:
    """Canonical fusion name, or None for no fusion ("None", "", None)."""
    if name is None or str(name).strip().lower() in _NONE:
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


def fuse_sets(plan: SharingPlan, weights: Sequence[torch.Tensor], fusion: str,
              coeffs: Optional[torch.Tensor] = None, is_bias: bool = False) -> tuple:
    """D per-layer tensors (C_out, ...) -> N fused tensors, grouped by ``plan.groups``.

    ``coeffs`` is (D, 1) or (D, C_out), the stacked ``reduction_w``; biases ignore it.
    """
    if fusion == "choose_first":
        return tuple(weights[g[0]] for g in plan.groups)  # the stored tensors themselves
    return _GroupMean.apply(plan.groups, None if is_bias else coeffs, *weights)


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
    """Checked list form of :func:`fuse_sets`: D per-layer tensors -> N fused tensors."""
    fusion = parse_fusion(fusion)
    if fusion is None:
        raise SharingError("fuse() needs a fusion strategy; allowed: " + ", ".join(FUSIONS))
    if len(weights) != plan.depth:
        raise SharingError(f"fusion needs one tensor per layer ({plan.depth}), got {len(weights)}")
    c = torch.stack(list(coeffs)) if coeffs is not None else None
    return list(fuse_sets(plan, list(weights), fusion, c, is_bias))


# ------------------------------------------------------------------------------ relaxed sharing
# Per-layer freedom on top of a shared (or fused) set, kept by the WS export. For layer i with set
# tensor W (C_out, ...):
#   lora   W_i = W + B_i A_i for tensors of 2+ dims, the delta reshaped from (C_out, C_in*k*k);
#          B_i (C_out, r), A_i (r, C_in*k*k).
#   scale  W_i = s_i * W for tensors of 2+ dims (s_i (C_out,), per output channel): the paper's
#          per-layer "dynamic transforms".
#   Both:  b_i = b + t_i for 1-D tensors (biases, norms, layer scales; t_i (C,)), so that a full-rank
#          relaxed model is any per-layer model exactly.
RELAXES = ("lora", "scale")


def parse_relax(name: Optional[str], rank: Optional[int] = None) -> Optional[str]:
    """Canonical relax name (None for none); with ``rank``, lora needs a rank >= 1."""
    if name is None or str(name).strip().lower() in _NONE:
        return None
    key = str(name).strip().lower()
    if key not in RELAXES:
        raise SharingError(f"unknown relaxed sharing (RELAX) {name!r}; allowed: none, {', '.join(RELAXES)}")
    if key == "lora" and rank is not None and rank < 1:
        raise SharingError(f"relaxed sharing 'lora' needs a rank >= 1 (RELAX_RANK), got {rank}")
    return key


def relax_shapes(relax: str, shape: tuple, rank: int) -> dict[str, tuple]:
    """Suffix -> shape of one layer's relax parameters for a set tensor of ``shape``."""
    if len(shape) < 2:
        return {"shift": (shape[0],)}
    if relax == "scale":
        return {"scale": (shape[0],)}
    fan_in = int(torch.Size(shape[1:]).numel())
    r = min(rank, fan_in, shape[0])
    return {"lora_a": (r, fan_in), "lora_b": (shape[0], r)} if r >= 1 else {}


def relax_init(relax: str, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """From scratch: the layer starts exactly at its set (B = 0, scale 1, shift 0). ``shapes`` is
    keyed by parameter names that end in their suffix (``..._lora_a``, ``..._scale``, ...)."""
    out = {}
    for name, shape in shapes.items():
        if name.endswith("lora_a"):  # LoRA's init: A random, B zero, so B A = 0 and B learns
            out[name] = torch.randn(shape) / shape[1] ** 0.5
        else:
            out[name] = torch.ones(shape) if name.endswith("scale") else torch.zeros(shape)
    return out


def relax_apply(relax: str, base: torch.Tensor, p: dict) -> torch.Tensor:
    if "lora_a" in p:
        return base + (p["lora_b"] @ p["lora_a"]).reshape(base.shape).to(base.dtype)
    if "scale" in p:
        return base * p["scale"].reshape((-1,) + (1,) * (base.dim() - 1)).to(base.dtype)
    if "shift" in p:
        return base + p["shift"].to(base.dtype)
    return base


@torch.no_grad()
def lora_from_residual(residual: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B A the best rank-``rank`` approximation of ``residual`` (C_out, ...) seen as a
    (C_out, fan_in) matrix (truncated SVD, singular values split evenly between the factors)."""
    m = residual.reshape(residual.shape[0], -1).float()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return (root[:, None] * vh[:r]).to(residual.dtype), (u[:, :r] * root[None]).to(residual.dtype)


@torch.no_grad()
def fit_scale(target: torch.Tensor, base: torch.Tensor, is_weight: bool) -> torch.Tensor:
    """The scale (least squares, per output channel) or shift that brings ``base`` closest to
    ``target``: a layer's own weights from its set."""
    if not is_weight:
        return (target - base).float()
    t, b = target.reshape(target.shape[0], -1).float(), base.reshape(base.shape[0], -1).float()
    return (t * b).sum(1) / (b * b).sum(1).clamp_min(1e-12)


@torch.no_grad()
def fit_relax(params: dict, target: torch.Tensor, base: torch.Tensor) -> None:
    """Set one layer's relax ``params`` (by suffix) so that relax_apply(base) comes closest to
    ``target``: the truncated SVD of the residual (lora), the least-squares scale, or the shift."""
    if "lora_a" in params:
        a, b = lora_from_residual(target - base, params["lora_a"].shape[0])
        params["lora_a"].copy_(a)
        params["lora_b"].copy_(b)
    elif "scale" in params:
        params["scale"].copy_(fit_scale(target, base, True))
    elif "shift" in params:
        params["shift"].copy_(fit_scale(target, base, False))
