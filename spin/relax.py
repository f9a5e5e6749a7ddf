"""Relaxed sharing: per-layer freedom on top of a shared (or fused) set, kept by the WS export.

For layer i with set tensor W (C_out, ...):

    lora   W_i = W + B_i A_i for tensors of 2+ dims, the delta reshaped from (C_out, C_in*k*k);
           B_i (C_out, r), A_i (r, C_in*k*k).
    scale  W_i = s_i * W for tensors of 2+ dims (s_i (C_out,), per output channel): the paper's
           per-layer "dynamic transforms".
    Both:  b_i = b + t_i for 1-D tensors (biases, norms, layer scales; t_i (C,)), so that a full-rank
           relaxed model is any per-layer model exactly.

Two inits: *zero* (:func:`zero_init`: the layer starts exactly at its set, B = 0 / scale 1 /
shift 0: plain WS, for training from scratch) and *fit* (:func:`fit_init`: the deltas that bring
each layer's set back to a given model's own weights as far as the rank allows).
"""
from __future__ import annotations

from typing import Optional

import torch

from .fusion import NONE_NAMES
from .sharing import SharingError

RELAXES = ("lora", "scale")


def parse_relax(name: Optional[str], rank: Optional[int] = None) -> Optional[str]:
    """Canonical relax name (None for none); with ``rank``, lora needs a rank >= 1."""
    if name is None or str(name).strip().lower() in NONE_NAMES:
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


def zero_init(relax: str, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
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
def fit_init(params: dict, target: torch.Tensor, base: torch.Tensor) -> None:
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
