"""DeiT / ViT: timm's ``VisionTransformer``, shared by ``spin.share``.

A vanilla spin DeiT *is* timm's model (same class, keys and logits), so timm and DeiT checkpoints
load strictly. Shared variants keep timm's class and forward; the named parts of a block are
``attn`` (attn.qkv, attn.proj), ``mlp`` (mlp.fc1, mlp.fc2), ``norm`` (norm1, norm2) and ``ls``
(ls1, ls2: layer scale, present with ``init_values``); the default scope is the paper's
``attn+mlp``. Parameters (1000 classes): DeiT-Ti 5,717,416; DeiT-S 22,050,664 (WS rate 2
11,413,096, rate 3 7,867,240); DeiT-B 86,567,656.
"""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from ..share_transform import register_family
from .registry import create_timm, register_shared_variants, timm_cfg, with_cfg

register_family(VisionTransformer, "vit")

_DEIT = dict(patch_size=16, depth=12, mlp_ratio=4.0, qkv_bias=True)


def vision_transformer(variant: str = "deit_small_patch16_224", **kwargs) -> VisionTransformer:
    """timm's VisionTransformer as DeiT-S (``variant`` names timm's pretrained cfg), its keywords
    overridden by ``kwargs`` (``img_size``, ``patch_size``, ``embed_dim``, ``depth``,
    ``num_heads``, ``mlp_ratio``, ``drop_path_rate``, ...), shared when plan keywords or
    ``fusion`` are given."""
    return create_timm(VisionTransformer, variant, dict(_DEIT, embed_dim=384, num_heads=6), **kwargs)


@register_shared_variants
@with_cfg(timm_cfg("deit_tiny_patch16_224"))
def deit_tiny_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT-Ti (5.7M parameters, 72.2% published by DeiT)."""
    return create_timm(VisionTransformer, "deit_tiny_patch16_224", dict(_DEIT, embed_dim=192, num_heads=3),
                       **kwargs)


@register_shared_variants
@with_cfg(timm_cfg("deit_small_patch16_224"))
def deit_small_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT-S (22.05M parameters, 79.8% published by DeiT; SPIN's run 80.52%)."""
    return vision_transformer("deit_small_patch16_224", **kwargs)


@register_shared_variants
@with_cfg(timm_cfg("deit_base_patch16_224"))
def deit_base_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT-B (86.6M parameters, 81.8% published by DeiT)."""
    return create_timm(VisionTransformer, "deit_base_patch16_224", dict(_DEIT, embed_dim=768, num_heads=12),
                       **kwargs)
