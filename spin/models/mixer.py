"""MLP-Mixer: timm's ``MlpMixer``, shared by ``spin.share``.

A vanilla spin Mixer is timm's model (same class, keys and logits). The named parts of a block are
``token`` (mlp_tokens), ``channel`` (mlp_channels) and ``norm`` (norm1, norm2); the default scope
is ``token+channel``, the analogue of the paper's DeiT choice (everything but the norms).
"""
from __future__ import annotations

from timm.models.mlp_mixer import MlpMixer

from ..share_transform import register_family
from .registry import create_timm, register_shared_variants, timm_cfg, with_cfg

register_family(MlpMixer, "mixer")


def mlp_mixer(variant: str = "mixer_s16_224", **kwargs) -> MlpMixer:
    """timm's MlpMixer as Mixer-S/16 (``variant`` names timm's pretrained cfg), its keywords
    overridden by ``kwargs`` (``img_size``, ``patch_size``, ``embed_dim``, ``num_blocks``,
    ``mlp_ratio``, ``drop_path_rate``, ...), shared when plan keywords or ``fusion`` are given."""
    return create_timm(MlpMixer, variant, dict(patch_size=16, num_blocks=8, embed_dim=512), **kwargs)


@register_shared_variants
@with_cfg(timm_cfg("mixer_s16_224"))
def mixer_s16_224(**kwargs) -> MlpMixer:
    """Mixer-S/16 (18.5M parameters)."""
    return mlp_mixer("mixer_s16_224", **kwargs)


@register_shared_variants
@with_cfg(timm_cfg("mixer_b16_224"))
def mixer_b16_224(**kwargs) -> MlpMixer:
    """Mixer-B/16 (59.9M parameters; 76.4% published, ImageNet-1k)."""
    return create_timm(MlpMixer, "mixer_b16_224", dict(patch_size=16, num_blocks=12, embed_dim=768), **kwargs)
