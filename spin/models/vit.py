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

from .family import Family, register_family
from .registry import create_timm, register_shared_variants, timm_cfg, with_cfg


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


# ------------------------------------------------------------------------------ the family
def _kwargs(cfg) -> dict:
    v = cfg.VIT
    return dict(img_size=cfg.DATA.TRAIN_CROP_SIZE, patch_size=v.PATCH_SIZE, embed_dim=v.EMBED_DIM, depth=v.DEPTH,
                num_heads=v.NUM_HEADS, mlp_ratio=v.MLP_RATIO, qkv_bias=v.QKV_BIAS,
                init_values=v.LAYER_SCALE_INIT_VALUE or None, class_token=v.CLASS_TOKEN, global_pool=v.GLOBAL_POOL,
                drop_path_rate=cfg.MODEL.DROP_PATH_RATE)


def fixed_input_problems(cfg, sec: str) -> list[str]:
    """A model with a fixed token grid (ViT, Mixer): one crop size, a multiple of the patch."""
    out, patch, crop = [], cfg[sec].PATCH_SIZE, cfg.DATA.TRAIN_CROP_SIZE
    if crop != cfg.DATA.TEST_CROP_SIZE:
        out.append(f"{cfg.MODEL.MODEL_NAME} has a fixed input size: DATA.TEST_CROP_SIZE {cfg.DATA.TEST_CROP_SIZE} "
                   f"must equal DATA.TRAIN_CROP_SIZE {crop}")
    if patch < 1 or crop % max(patch, 1) != 0:
        out.append(f"DATA.TRAIN_CROP_SIZE {crop} is not a multiple of {sec}.PATCH_SIZE {patch}")
    return out


def _check(cfg) -> list[str]:
    v, out = cfg.VIT, fixed_input_problems(cfg, "VIT")
    if v.NUM_HEADS < 1 or v.EMBED_DIM % max(v.NUM_HEADS, 1) != 0:
        out.append(f"VIT.EMBED_DIM {v.EMBED_DIM} is not divisible by VIT.NUM_HEADS {v.NUM_HEADS}")
    if not v.CLASS_TOKEN and str(v.GLOBAL_POOL) == "token":
        out.append("VIT.CLASS_TOKEN False leaves no class token for VIT.GLOBAL_POOL token to pool; set "
                   "VIT.GLOBAL_POOL avg (or CLASS_TOKEN True)")
    if not v.MLP_RATIO > 0:
        out.append(f"VIT.MLP_RATIO must be > 0, got {v.MLP_RATIO}")
    return out


FAMILY = register_family(Family(
    name="vit", section="VIT", model_names=("VisionTransformer", "DeiT"), classes=(VisionTransformer,),
    build=vision_transformer, kwargs=_kwargs, check=_check, width_key="EMBED_DIM",
    arch=lambda cfg: ("arch", f"dim {cfg.VIT.EMBED_DIM}, depth {cfg.VIT.DEPTH}, heads {cfg.VIT.NUM_HEADS}, "
                              f"patch {cfg.VIT.PATCH_SIZE}"),
    parts={"attn": ("attn.qkv.*", "attn.proj.*"), "mlp": ("mlp.*",), "norm": ("norm1.*", "norm2.*"),
           "ls": ("ls1.*", "ls2.*")},
    default_scope="attn+mlp",
    # image size = DATA.TRAIN_CROP_SIZE; defaults: DeiT-S. LAYER_SCALE_INIT_VALUE: timm's init_values
    # (0 = no layer scale, as DeiT).
    defaults=dict(PATCH_SIZE=16, EMBED_DIM=384, DEPTH=12, NUM_HEADS=6, MLP_RATIO=4.0, QKV_BIAS=True,
                  LAYER_SCALE_INIT_VALUE=0.0, CLASS_TOKEN=True, GLOBAL_POOL="token")))
