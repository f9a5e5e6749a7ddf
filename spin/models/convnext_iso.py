"""The isotropic ConvNeXt (ConvNeXt paper §3.3), which SPIN shares as ConvNeXt-18; timm has none.

Keys and constructor keywords are the official ``models/convnext_isotropic.py``'s (``stem``,
``blocks.{i}.dwconv|norm|pwconv1|pwconv2|gamma``, ``norm``, ``head``; ``depth``, ``dim``,
``drop_path_rate``, ``layer_scale_init_value``, ``head_init_scale``), so its checkpoints (the
``"model"`` entry of the official ``.pth``) load strictly with equal logits. Block i, x (B, C, H, W):

    y = DWConv7x7(x) -> (B, H, W, C) -> LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C) [* gamma]
    x = x + DropPath(y -> (B, C, H, W))

The timm contract splits the official ``forward_features``: ``forward_features`` returns the block
output (B, C, H/16, W/16), ``forward_head`` pools, normalises and classifies. Named parts for
sharing: ``dwconv``, ``pwconv`` (pwconv1, pwconv2), ``norm``, ``gamma``; the paper's scope is
``dwconv+pwconv``. Parameters (1000 classes): ConvNeXt-iso-S (18, 384) 22,308,712, WS rate 2
11,501,800; ConvNeXt-iso-B (18, 768) 87,083,752.

Beyond the official model, the timm contract: ``global_pool`` (avg, max, fast, ... or '' for none:
the norm then acts per position), ``forward_intermediates`` / ``prune_intermediate_layers`` /
``feature_info`` (one entry per block), ``set_grad_checkpointing``, ``group_matcher``. (No
``from __future__ import annotations``: a torch.fx graph copies the forward's annotations, and
TorchScript cannot resolve them as strings.)
"""
from typing import Optional

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d, trunc_normal_

from .family import Family, register_family
from .registry import build_shared, register_shared_variants, with_cfg
from .timm_api import IsotropicFeatures

# The official recipe's evaluation: resize 256, centre crop 224, bicubic, ImageNet mean/std.
PRETRAINED_CFG = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.875,
                      interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                      first_conv="stem", classifier="head")


class Block(nn.Module):
    def __init__(self, dim: int, kernel_size: int = 7, drop_path: float = 0.0,
                 layer_scale_init_value: float = 0.0):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
                      if layer_scale_init_value > 0 else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C): the Linears mix channels
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtIsotropic(IsotropicFeatures, nn.Module):
    """Patchify stem (16x16, stride 16), ``depth`` blocks at width ``dim``, pool, norm, head."""

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, depth: int = 18, dim: int = 384,
                 drop_path_rate: float = 0.0, layer_scale_init_value: float = 0.0,
                 head_init_scale: float = 1.0, patch_size: int = 16, kernel_size: int = 7,
                 drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        self.num_classes, self.num_features, self.depth = num_classes, dim, depth
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.stem = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear
        self.blocks = nn.Sequential(*[Block(dim, kernel_size, rates[i], layer_scale_init_value)
                                      for i in range(depth)])
        self.head_hidden_size = dim
        self._set_pool(global_pool, num_classes)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if num_classes > 0:
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)
        side = 224 // patch_size
        self.pretrained_cfg = self.default_cfg = dict(
            PRETRAINED_CFG, num_classes=num_classes, input_size=(in_chans, 224, 224), pool_size=(side, side))

    def _set_pool(self, global_pool: str, num_classes: int) -> None:
        if not global_pool and num_classes > 0:
            raise ValueError(f"global_pool='' keeps the (B, C, H, W) map, which a {num_classes}-class head cannot "
                             f"take; give num_classes=0 with it, or a pooling (avg, max, avgmax, fast)")
        pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        if pool.feat_mult() != 1:
            raise ValueError(f"global_pool {global_pool!r} doubles the pooled width, which the final LayerNorm "
                             f"(dim {self.num_features}) cannot take; use avg, max, avgmax, fast or ''")
        self.global_pool, self.pool = global_pool, pool

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None),
                                                                            (r"^norm", (99999,))])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/16, W/16)."""
        return self.run_blocks(self.embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool != "":
            x = self.norm(self.pool(x))
        else:  # no pooling: the norm at every position, (B, C, H, W) out
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier (``num_classes`` 0: none) and, unless None, global pooling ('' for none)."""
        self._set_pool(self.global_pool if global_pool is None else global_pool, num_classes)
        self.num_classes = num_classes
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(head)
        self.head = head.to(self.stem.weight.device)




def convnext_isotropic(**kwargs) -> ConvNeXtIsotropic:
    """A ConvNeXtIsotropic from its keywords, shared when plan keywords or ``fusion`` are given."""
    return build_shared(ConvNeXtIsotropic, **kwargs)


_CFG = dict(PRETRAINED_CFG, pool_size=(14, 14))


@register_shared_variants
@with_cfg(_CFG)
def convnext_iso_small(**kwargs) -> ConvNeXtIsotropic:
    """ConvNeXt-S (iso.): depth 18, dim 384 (22.3M parameters; 79.7% published, SPIN's run 78.70%)."""
    return convnext_isotropic(**{"depth": 18, "dim": 384, **kwargs})


@register_shared_variants
@with_cfg(_CFG)
def convnext_iso_base(**kwargs) -> ConvNeXtIsotropic:
    """ConvNeXt-B (iso.): depth 18, dim 768 (87.1M parameters; 82.0% published)."""
    return convnext_isotropic(**{"depth": 18, "dim": 768, **kwargs})


# ------------------------------------------------------------------------------ the family
def _kwargs(cfg) -> dict:
    c = cfg.CONVNEXT
    return dict(dim=c.DIM, depth=c.DEPTH, patch_size=c.PATCH_SIZE, kernel_size=c.KERNEL,
                layer_scale_init_value=c.LAYER_SCALE_INIT_VALUE, head_init_scale=c.HEAD_INIT_SCALE,
                drop_path_rate=cfg.MODEL.DROP_PATH_RATE)


def _check(cfg) -> list[str]:
    c, out = cfg.CONVNEXT, []
    crop = min(cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE)
    if c.KERNEL < 1 or c.KERNEL % 2 == 0:
        out.append(f"CONVNEXT.KERNEL must be an odd number >= 1 (the depthwise conv pads K//2 on each side to "
                   f"keep the size, which only an odd K does), got {c.KERNEL}")
    if c.PATCH_SIZE < 1 or c.PATCH_SIZE > max(crop, 1):
        out.append(f"CONVNEXT.PATCH_SIZE must be in 1..the crop {crop} (DATA.*_CROP_SIZE), got {c.PATCH_SIZE}")
    return out


FAMILY = register_family(Family(
    name="convnext", section="CONVNEXT", model_names=("ConvNeXtIsotropic",), classes=(ConvNeXtIsotropic,),
    build=convnext_isotropic, kwargs=_kwargs, check=_check, width_key="DIM",
    arch=lambda cfg: ("arch", f"dim {cfg.CONVNEXT.DIM}, depth {cfg.CONVNEXT.DEPTH}, patch {cfg.CONVNEXT.PATCH_SIZE}, "
                              f"kernel {cfg.CONVNEXT.KERNEL}"),
    parts={"dwconv": ("dwconv.*",), "pwconv": ("pwconv1.*", "pwconv2.*"), "norm": ("norm.*",), "gamma": ("gamma",)},
    default_scope="dwconv+pwconv",
    # the official convnext_isotropic.py; defaults: ConvNeXt-S (iso.)
    defaults=dict(DIM=384, DEPTH=18, PATCH_SIZE=16, KERNEL=7, LAYER_SCALE_INIT_VALUE=0.0, HEAD_INIT_SCALE=1.0)))
