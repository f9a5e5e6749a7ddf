"""Swin Transformer: timm's ``SwinTransformer``, shared per stage by ``spin.share``.

A vanilla spin Swin is timm's model (same class, keys and logits). Swin is hierarchical: its stages
(``layers.{s}``) run a patch merging and then a stack of identical blocks (``layers.{s}.blocks``)
at width ``EMBED_DIM * 2**s``. Blocks of different stages differ in width, so a plan shares within
each stage and never across stages (as MiniViT's Mini-Swin): the model is shared on
``blocks="layers.*.blocks"``, and WEIGHT_SHARE's SHARE_RATE / NUM_SETS apply to every stage
(NUM_SETS 1: one set per stage). The named parts of a block are ``attn`` (attn.qkv, attn.proj),
``rpb`` (attn.relative_position_bias_table), ``mlp`` (mlp.fc1, mlp.fc2) and ``norm`` (norm1,
norm2). The default scope is ``attn+rpb+mlp``: every weight of a block, with the LayerNorms per
layer as in MiniViT's weight multiplexing (``all`` shares them too; they are 4C per block).
Buffers (the relative position index, the shifted windows' attention mask) stay per block.

The input size is fixed (timm builds each block's attention mask for it): DATA.TRAIN_CROP_SIZE,
a multiple of PATCH_SIZE. timm pads a stage's grid to whole windows and clamps the window to a
grid smaller than it, so the crop needs no other divisibility.

Parameters (1000 classes): Swin-T 28,288,354; one set per stage 11,767,645 (default scope) or
11,755,741 (``all``); WS rate 2 (sets [1, 1, 3, 1]) 15,317,557.
"""
from __future__ import annotations

from timm.models.swin_transformer import SwinTransformer

from .family import Family, register_family
from .registry import create_timm, register_shared_variants, timm_cfg, with_cfg
from .vit import fixed_input_problems

STAGE_STACKS = "layers.*.blocks"  # every stage's block stack, in model order
_SWIN_T = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))


def _create(variant: str, defaults: dict, **kwargs) -> SwinTransformer:
    model = create_timm(SwinTransformer, variant, defaults, blocks=STAGE_STACKS, **kwargs)
    # timm's cfg states Swin-T's 7x7 final grid at 224; a model at another size pools its own
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg,
                                                "pool_size": tuple(model.layers[-1].output_resolution)}
    return model


def swin_transformer(variant: str = "swin_tiny_patch4_window7_224", **kwargs) -> SwinTransformer:
    """timm's SwinTransformer as Swin-T (``variant`` names timm's pretrained cfg), its keywords
    overridden by ``kwargs`` (``img_size``, ``patch_size``, ``embed_dim``, ``depths``,
    ``num_heads``, ``window_size``, ``mlp_ratio``, ``drop_path_rate``, ...), shared per stage
    when plan keywords (applied to every stage), a list of per-stage plans or ``fusion`` are given."""
    return _create(variant, _SWIN_T, **kwargs)


@register_shared_variants
@with_cfg(timm_cfg("swin_tiny_patch4_window7_224"))
def swin_tiny_patch4_window7_224(**kwargs) -> SwinTransformer:
    """Swin-T (28.3M parameters, 81.2% published, ImageNet-1k)."""
    return swin_transformer("swin_tiny_patch4_window7_224", **kwargs)


@register_shared_variants
@with_cfg(timm_cfg("swin_small_patch4_window7_224"))
def swin_small_patch4_window7_224(**kwargs) -> SwinTransformer:
    """Swin-S (49.6M parameters, 83.2% published, ImageNet-1k)."""
    return _create("swin_small_patch4_window7_224", dict(_SWIN_T, depths=(2, 2, 18, 2)), **kwargs)


@register_shared_variants
@with_cfg(timm_cfg("swin_base_patch4_window7_224"))
def swin_base_patch4_window7_224(**kwargs) -> SwinTransformer:
    """Swin-B (87.8M parameters, 83.5% published, ImageNet-1k)."""
    return _create("swin_base_patch4_window7_224",
                   dict(_SWIN_T, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)), **kwargs)


# ------------------------------------------------------------------------------ the family
def _kwargs(cfg) -> dict:
    s = cfg.SWIN
    return dict(img_size=cfg.DATA.TRAIN_CROP_SIZE, patch_size=s.PATCH_SIZE, embed_dim=s.EMBED_DIM,
                depths=tuple(s.DEPTHS), num_heads=tuple(s.NUM_HEADS), window_size=s.WINDOW_SIZE,
                mlp_ratio=s.MLP_RATIO, drop_path_rate=cfg.MODEL.DROP_PATH_RATE)


def _stacks(cfg) -> list[tuple[str, int]]:
    return [(f"layers.{i}.blocks", d) for i, d in enumerate(cfg.SWIN.DEPTHS)]


def _positive_ints(values) -> bool:
    return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)


def _check(cfg) -> list[str]:
    s, out = cfg.SWIN, fixed_input_problems(cfg, "SWIN")
    depths, heads = list(s.DEPTHS), list(s.NUM_HEADS)
    if not _positive_ints(depths):
        out.append(f"SWIN.DEPTHS must list each stage's number of blocks, integers >= 1 (Swin-T: [2, 2, 6, 2]), "
                   f"got {depths}")
    if not _positive_ints(heads):
        out.append(f"SWIN.NUM_HEADS must list each stage's attention heads, integers >= 1 (Swin-T: [3, 6, 12, 24]), "
                   f"got {heads}")
    elif len(heads) != len(depths):
        out.append(f"SWIN.NUM_HEADS {heads} has {len(heads)} entries but SWIN.DEPTHS {depths} has {len(depths)} "
                   f"stages; give one head count per stage")
    elif s.EMBED_DIM >= 1:  # stage k is EMBED_DIM * 2**k wide
        bad = [(k, s.EMBED_DIM * 2 ** k, h) for k, h in enumerate(heads) if (s.EMBED_DIM * 2 ** k) % h]
        if bad:
            k, width, h = bad[0]
            out.append(f"SWIN.EMBED_DIM {s.EMBED_DIM} gives stage {k} width {width}, not divisible by its "
                       f"SWIN.NUM_HEADS entry {h}; choose heads that divide EMBED_DIM * 2**stage")
    if not (isinstance(s.WINDOW_SIZE, int) and s.WINDOW_SIZE >= 1):
        out.append(f"SWIN.WINDOW_SIZE must be an integer >= 1 (Swin-T: 7), got {s.WINDOW_SIZE}")
    if not s.MLP_RATIO > 0:
        out.append(f"SWIN.MLP_RATIO must be > 0, got {s.MLP_RATIO}")
    return out


FAMILY = register_family(Family(
    name="swin", section="SWIN", model_names=("SwinTransformer", "Swin"), classes=(SwinTransformer,),
    build=swin_transformer, kwargs=_kwargs, check=_check, width_key="EMBED_DIM", stacks=_stacks,
    arch=lambda cfg: ("arch", f"dim {cfg.SWIN.EMBED_DIM}, depths {list(cfg.SWIN.DEPTHS)}, heads "
                              f"{list(cfg.SWIN.NUM_HEADS)}, window {cfg.SWIN.WINDOW_SIZE}, "
                              f"patch {cfg.SWIN.PATCH_SIZE}"),
    parts={"attn": ("attn.qkv.*", "attn.proj.*"), "rpb": ("attn.relative_position_bias_table",), "mlp": ("mlp.*",),
           "norm": ("norm1.*", "norm2.*")},
    default_scope="attn+rpb+mlp",
    # image size = DATA.TRAIN_CROP_SIZE; defaults: Swin-T.
    defaults=dict(PATCH_SIZE=4, EMBED_DIM=96, DEPTHS=[2, 2, 6, 2], NUM_HEADS=[3, 6, 12, 24], WINDOW_SIZE=7,
                  MLP_RATIO=4.0)))
