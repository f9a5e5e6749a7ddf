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


class FusionIndex(torch.nn.Module):
    """The plan as index tensors (non-persistent buffers so they follow ``.to(device)`` but never
    enter a state dict): set of each layer (D,), first layer of each set (N,), set sizes (N,)."""

    def __init__(self, plan: SharingPlan):
        super().__init__()
        self.register_buffer("layer_to_set", torch.tensor(plan.layer_to_set), persistent=False)
        self.register_buffer("first", torch.tensor([g[0] for g in plan.groups]), persistent=False)
        self.register_buffer("sizes", torch.tensor(plan.group_sizes, dtype=torch.float32),
                             persistent=False)
        self.uniform_sequential = all(s == plan.group_sizes[0] for s in plan.group_sizes) and (
            list(plan.layer_to_set) == sorted(plan.layer_to_set))

    @property
    def num_sets(self) -> int:
        return self.first.numel()

    def fuse(self, stacked: torch.Tensor, fusion: str, coeffs: Optional[torch.Tensor] = None,
             is_bias: bool = False) -> torch.Tensor:
        """(D, C_out, ...) per-layer tensors -> (N, C_out, ...) fused sets.

        ``coeffs`` is (D, 1) or (D, C_out), the stacked ``reduction_w``; biases ignore it.
        """
        if fusion == "choose_first":
            return stacked.index_select(0, self.first)
        if coeffs is not None and not is_bias:
            # (D, 1|C_out) -> (D, 1|C_out, 1, ...) so it scales each output channel of W_l.
            stacked = stacked * coeffs.reshape(coeffs.shape + (1,) * (stacked.dim() - 2)).to(stacked.dtype)
        n = self.num_sets
        if self.uniform_sequential:  # the common case: contiguous equal groups, a plain reshape
            return stacked.reshape((n, -1) + stacked.shape[1:]).mean(1)
        summed = stacked.new_zeros((n,) + stacked.shape[1:]).index_add(0, self.layer_to_set, stacked)
        return summed / self.sizes.to(stacked.dtype).reshape((n,) + (1,) * (stacked.dim() - 1))


def fuse(weights: Sequence[torch.Tensor], plan: SharingPlan, fusion: str,
         coeffs: Optional[Sequence[torch.Tensor]] = None, is_bias: bool = False) -> list[torch.Tensor]:
    """List form of :meth:`FusionIndex.fuse`: D per-layer tensors -> N fused tensors."""
    fusion = parse_fusion(fusion)
    if fusion is None:
        raise SharingError("fuse() needs a fusion strategy; allowed: " + ", ".join(FUSIONS))
    if len(weights) != plan.depth:
        raise SharingError(f"fusion needs one tensor per layer ({plan.depth}), got {len(weights)}")
    index = FusionIndex(plan).to(weights[0].device)
    c = torch.stack(list(coeffs)) if coeffs is not None else None
    return list(index.fuse(torch.stack(list(weights)), fusion, c, is_bias).unbind(0))
