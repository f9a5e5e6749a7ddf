"""MLP-Mixer: timm's ``MlpMixer``, shared by ``spin.share``.

A vanilla spin Mixer is timm's model (same class, keys and logits). The named parts of a block are
``token`` (mlp_tokens), ``channel`` (mlp_channels) and ``norm`` (norm1, norm2); the default scope
is ``token+channel``, the analogue of the paper's DeiT choice (everything but the norms).
"""
from __future__ import annotations

from timm.models.mlp_mixer import MlpMixer

from .family import Family, register_family
from .registry import create_timm, register_shared_variants, timm_cfg, with_cfg
from .vit import fixed_input_problems



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


# ------------------------------------------------------------------------------ the family
def _kwargs(cfg) -> dict:
    m = cfg.MIXER
    return dict(img_size=cfg.DATA.TRAIN_CROP_SIZE, patch_size=m.PATCH_SIZE, embed_dim=m.EMBED_DIM,
                num_blocks=m.DEPTH, mlp_ratio=tuple(m.MLP_RATIO), drop_path_rate=cfg.MODEL.DROP_PATH_RATE)


def _check(cfg) -> list[str]:
    out, r = fixed_input_problems(cfg, "MIXER"), list(cfg.MIXER.MLP_RATIO)
    if len(r) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in r):
        out.append(f"MIXER.MLP_RATIO must be [token, channel]: two expansion ratios > 0, like its default "
                   f"[0.5, 4.0], got {r}")
    return out


FAMILY = register_family(Family(
    name="mixer", section="MIXER", model_names=("MlpMixer",), classes=(MlpMixer,),
    build=mlp_mixer, kwargs=_kwargs, check=_check, width_key="EMBED_DIM",
    arch=lambda cfg: ("arch", f"dim {cfg.MIXER.EMBED_DIM}, depth {cfg.MIXER.DEPTH}, patch {cfg.MIXER.PATCH_SIZE}"),
    parts={"token": ("mlp_tokens.*",), "channel": ("mlp_channels.*",), "norm": ("norm1.*", "norm2.*")},
    default_scope="token+channel",
    # image size = DATA.TRAIN_CROP_SIZE; defaults: Mixer-S/16.
    defaults=dict(PATCH_SIZE=16, EMBED_DIM=512, DEPTH=8, MLP_RATIO=[0.5, 4.0])))
