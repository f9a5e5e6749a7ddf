"""timm's feature API for spin's own isotropic models (ConvMixer, the isotropic ConvNeXt): a trunk
``embed(x)`` -> ``blocks`` (an nn.Sequential of NCHW blocks at one resolution) before the head.

A class mixes :class:`IsotropicFeatures` in and defines ``embed``; ``feature_info`` (one entry per
block) and ``grad_checkpointing`` are set by its constructor. (No ``from __future__ import
annotations``: a torch.fx graph copies the annotations, and TorchScript cannot resolve strings.)
"""
from typing import List, Optional, Tuple, Union

import torch
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, checkpoint_seq

from ..share_transform import refuse_wfws_prune


class IsotropicFeatures:
    # No class-level annotations of blocks / grad_checkpointing: TorchScript would read them as types.

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The whole stack (a WFWS call fuses each group once), or block by block when checkpointing."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's contract: the outputs of the blocks in ``indices`` (n: the last n; default all)
        and the final features. ``norm`` is accepted and does nothing: these models have no norm
        between their blocks and their head."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r}: {type(self).__name__} features are NCHW only")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self.embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the last of ``indices`` (and the classifier and pooling with
        ``prune_head``); returns the kept indices. A WFWS model refuses (spin.fuse it first)."""
        refuse_wfws_prune(self)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices
