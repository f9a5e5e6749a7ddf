"""ConvMixer (SPIN's block by default, the original block with ``pointwise_residual=False``).

Block i (SPIN semantics, ``pointwise_residual=True``; x is (B, C, H, W)):

    x = x + BN_a(act(DWConv_i(x)))                  # dwise_blk: depthwise KxK, groups=C, act, BN
    x = x + BN_b(act(PWConv_i(x)))                  # pwise: 1x1 conv; bn2

``pointwise_residual=False`` drops the second residual: the original ConvMixer (timm) block.

Every block owns ordinary modules, and sharing is :func:`spin.share`'s like every other family's
(``plan=`` / ``fusion=`` here just apply it). Checkpoints keep the published SPIN layout: the
state-dict hooks at the bottom map this model's keys to upstream's ``pwise_w.{j}`` / ``pwise_b.{j}``
/ ``reduction_w.{i}`` and back (timm's ``checkpoint_filter_fn`` idea, applied by PyTorch's own
hooks so every ``state_dict()`` / ``load_state_dict()`` speaks it: the engine, EMA, DDP, a user's
``torch.save``). Layouts of earlier spin versions load too.

The timm contract is complete: ``forward_features`` / ``forward_head`` (``global_pool`` avg, max,
fast, ... or '' for none), ``forward_intermediates`` / ``prune_intermediate_layers`` /
``feature_info`` (one entry per block), ``set_grad_checkpointing``, ``group_matcher``; vanilla models
script and trace with torch.fx. (No ``from __future__ import annotations``: a torch.fx graph
copies the forward's annotations, and TorchScript cannot resolve them as strings.)
"""
import re
from typing import Optional

import torch
import torch.fx
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath

from ..fusion import parse_fusion
from ..sharing import SharingError, SharingPlan
from ..share_transform import share, shared_sets_of
from .family import Family, register_family
from .registry import build_shared, register_model, timm_cfg, with_cfg
from .timm_api import IsotropicFeatures

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
# SPIN's evaluation: resize 256, centre crop 224, bicubic, ImageNet mean/std.
PRETRAINED_CFG = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.875,
                      interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                      first_conv="patch_embed.conv", classifier="head.fc")
# The original ConvMixers: timm's preprocessing (crop 0.96), this model's layer names.
TIMM_CFG = dict(timm_cfg("convmixer_768_32"), first_conv="patch_embed.conv", classifier="head.fc")


def _act(name: str) -> nn.Module:
    """Activations here always act on a fresh convolution output that nothing saves for
    backward, so ReLU can work in place (one tensor less to allocate and write per use)."""
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed: RELU, GELU")
    return nn.ReLU(inplace=True) if key == "relu" else ACTIVATIONS[key]()


class _NHWCGrad(torch.autograd.Function):
    """Identity whose backward hands the gradient on in NHWC. The pooling head's backward makes
    an NCHW gradient, and the residual stream would carry it unchanged through every block, so
    each BatchNorm backward would mix layouts (NHWC input, NCHW grad): a path ~7x slower on
    the CPU. Converting once at the top keeps the whole backward in NHWC."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last)


def _nhwc_grad(x: torch.Tensor) -> torch.Tensor:
    if torch.jit.is_scripting():  # a CPU backward speed-up only; TorchScript has no autograd.Function
        return x
    else:
        return _NHWCGrad.apply(x) if x.requires_grad else x


torch.fx.wrap("_nhwc_grad")  # a graph node of its own: the requires_grad test runs when the graph does


class PatchEmbed(nn.Module):
    """(B, 3, H, W) -> (B, C, H/P, W/P): conv -> act -> BN."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, padding: int, act: str):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel, stride=stride, padding=padding)
        self.act = _act(act)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x):
        return self.bn(self.act(self.conv(x)))


class MixerBlock(nn.Module):
    """One layer: (B, C, H, W) -> (B, C, H, W). Keys ``dwise_blk.0`` (conv), ``dwise_blk.2`` (BN),
    ``pwise`` (1x1 conv), ``bn2``: upstream's, with the pointwise conv a module of its own."""

    def __init__(self, dim: int, kernel_size: int, act: str, pointwise_residual: bool, drop_path: float = 0.0):
        super().__init__()
        self.dwise_blk = nn.Sequential(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=(kernel_size - 1) // 2),
                                       _act(act), nn.BatchNorm2d(dim))
        self.pwise = nn.Conv2d(dim, dim, 1)
        self.act = _act(act)
        self.bn2 = nn.BatchNorm2d(dim)
        self.pointwise_residual = pointwise_residual
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        # BatchNorm saves its input, not its output, for backward: the residual adds can write
        # into the fresh BN outputs in place.
        x = self.drop_path(self.dwise_blk(x)).add_(x)
        y = self.bn2(self.act(self.pwise(x)))
        return self.drop_path(y).add_(x) if self.pointwise_residual else y


class SpinConvMixer(IsotropicFeatures, nn.Module):
    """ConvMixer; ``plan`` / ``fusion`` / ``relax`` share it with :func:`spin.share` (upstream's
    one class for vanilla, WS and WFWS: WSConvMixer)."""

    def __init__(
        self,
        dim: int = 768,
        depth: int = 32,
        patch_kernel: int = 14,
        patch_stride: Optional[int] = None,
        patch_padding: int = 0,
        kernel_size: int = 3,
        act: str = "relu",
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        plan: Optional[SharingPlan] = None,
        fusion: Optional[str] = None,
        pointwise_residual: bool = True,
        channels_last: bool = True,
        drop_path_rate: float = 0.0,
        relax: Optional[str] = None,
        relax_rank: int = 0,
        global_pool: str = "avg",
        bn_momentum: Optional[float] = None,
        bn_eps: Optional[float] = None,
    ):
        super().__init__()
        self.dim, self.depth, self.num_classes, self.num_features = dim, depth, num_classes, dim
        self.grad_checkpointing = False
        # NHWC activations: oneDNN's depthwise and 1x1 convolutions run 2-10x faster than on NCHW
        # on the CPU (bench/), and cuDNN prefers NHWC for AMP. Only the layout changes, not the math.
        self.channels_last = channels_last
        self.patch_embed = PatchEmbed(in_chans, dim, patch_kernel, patch_stride or patch_kernel,
                                      patch_padding, act)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear
        # Sequential, called whole: a WFWS stack call fuses each group once (spin.share).
        self.blocks = nn.Sequential(*[MixerBlock(dim, kernel_size, act, pointwise_residual, rates[i])
                                      for i in range(depth)])
        self.head = ClassifierHead(dim, num_classes, global_pool, drop_rate)
        self.head_hidden_size = dim * self.head.global_pool.feat_mult()  # the pre-logits width
        stride = patch_stride or patch_kernel
        self.feature_info = [dict(num_chs=dim, reduction=stride, module=f"blocks.{i}") for i in range(depth)]
        side = (224 + 2 * patch_padding - patch_kernel) // stride + 1
        self.pretrained_cfg = self.default_cfg = dict(
            PRETRAINED_CFG, num_classes=num_classes, input_size=(in_chans, 224, 224), pool_size=(side, side))
        self._init_weights()
        for m in self.modules():  # timm's train.py --bn-momentum / --bn-eps
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = m.momentum if bn_momentum is None else bn_momentum
                m.eps = m.eps if bn_eps is None else bn_eps
        self.register_state_dict_post_hook(_to_published)
        self.register_load_state_dict_pre_hook(_from_published)
        if (plan is not None and plan.is_shared) or parse_fusion(fusion):
            share(self, plan=plan or SharingPlan.unshared(depth), fusion=fusion, relax=relax,
                  relax_rank=relax_rank, fit_relax=False, inplace=True)
        elif relax:
            raise SharingError(f"relax={relax!r} adds per-layer deltas to shared sets; this model shares "
                               f"nothing (give a plan with share_rate >= 2, or a fusion)")

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed", blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None)])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/P, W/P)."""
        x = self.run_blocks(self.embed(x))
        if self.channels_last:
            x = _nhwc_grad(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, (list, tuple)):  # SlowFast passes a list of pathways; images have one
            if len(x) != 1:
                raise ValueError(f"expected a tensor or a one-element list, got {len(x)} inputs")
            x = x[0]
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier (``num_classes`` 0: none) and, unless None, global pooling ('' for none)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
        self.head_hidden_size = self.dim * self.head.global_pool.feat_mult()
        if num_classes > 0:
            nn.init.normal_(self.head.fc.weight, 0.0, 0.01)
            nn.init.zeros_(self.head.fc.bias)
        self.head.to(self.patch_embed.conv.weight.device)



# ------------------------------------------------------------------ the published key layout
# model key (block-relative name under blocks.{i}. / shared.sets.{g}. / shared.coeffs.{i}.) <-> file key
_PUBLISHED = {("blocks", "pwise.weight"): "pwise_w", ("blocks", "pwise.bias"): "pwise_b",
              ("sets", "pwise.weight"): "pwise_w", ("sets", "pwise.bias"): "pwise_b",
              ("coeffs", "pwise.weight"): "reduction_w"}
_MODEL_KEY = re.compile(r"^(?:blocks|shared\.(sets|coeffs))\.(\d+)\.(pwise\.(?:weight|bias))$")
# Earlier spin versions stored shared depthwise / norm sets and relax deltas at model level.
_LEGACY = {"dwise_w": "dwise_blk.0.weight", "dwise_b": "dwise_blk.0.bias", "norm_a": "dwise_blk.2",
           "norm_b": "bn2", "pwise_w": "pwise.weight", "pwise_b": "pwise.bias"}
_FILE_KEY = re.compile(r"^(pwise_w|pwise_b|dwise_w|dwise_b|norm_a|norm_b|reduction_w|dwise_reduction_w)"
                       r"\.(\d+)(?:\.(\w+))?$")
_LEGACY_RELAX = re.compile(r"^relax_params\.(\d+)\.(pwise_w|pwise_b|dwise_w|dwise_b)_(\w+)$")
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _rename(state_dict: dict, names: dict) -> None:
    """Rename keys in place, keeping their positions (the dict may hold a parent's keys too)."""
    if names:
        items = list(state_dict.items())
        state_dict.clear()
        for k, v in items:
            for new in names.get(k, [k]):
                state_dict[new] = v


def _to_published(module, state_dict, prefix, local_metadata) -> None:
    """Model keys -> upstream's: blocks.{i}.pwise.* / shared.sets.{g}.pwise.* -> pwise_w|b.{j},
    shared.coeffs.{i}.pwise.weight -> reduction_w.{i}. Every other key is already upstream's or
    a spin extension under spin.share's generic names."""
    names = {}
    for key in state_dict:
        m = _MODEL_KEY.match(key[len(prefix):]) if key.startswith(prefix) else None
        if m:
            names[key] = [f"{prefix}{_PUBLISHED[(m.group(1) or 'blocks', m.group(3))]}.{m.group(2)}"]
    _rename(state_dict, names)


def _from_published(module, state_dict, prefix, *args) -> None:
    """Upstream's keys (and earlier spin layouts) -> this model's, for the sharing it has: an
    entry j of a shared part is set j, of a per-layer part layer j."""
    shared = shared_sets_of(module)
    in_sets = set(shared.names) if shared is not None and shared.fusion is None else set()
    names = {}
    for key in state_dict:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if (m := _LEGACY_RELAX.match(rest)):
            names[key] = [f"{prefix}shared.relax_params.{m.group(1)}.{_LEGACY[m.group(2)]}_{m.group(3)}"]
            continue
        if not (m := _FILE_KEY.match(rest)):
            continue
        part, j, leaf = m.group(1), int(m.group(2)), m.group(3)
        if part.endswith("reduction_w"):
            target = "pwise.weight" if part == "reduction_w" else "dwise_blk.0.weight"
            names[key] = [f"{prefix}shared.coeffs.{j}.{target}"]
            continue
        name = _LEGACY[part] + (f".{leaf}" if leaf else "")
        if leaf in _BN_BUFFERS and f"{_LEGACY[part]}.weight" in in_sets and j < shared.plan.num_sets:
            # a shared norm's one set of statistics (earlier spin): each member layer's own now
            names[key] = [f"{prefix}blocks.{i}.{name}" for i in shared.plan.groups[j]]
        elif name in in_sets:
            names[key] = [f"{prefix}shared.sets.{j}.{name}"]
        else:
            names[key] = [f"{prefix}blocks.{j}.{name}"]
    _rename(state_dict, names)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """A state dict of any ConvMixer layout (upstream's, earlier spin's) in the layout this model's
    ``state_dict()`` has: what a loader compares against before loading."""
    out = dict(state_dict)
    _from_published(model, out, "")
    _to_published(model, out, "", None)
    return out


# --------------------------------------------------------------------------------- builders
def _create(defaults: dict, **kwargs) -> SpinConvMixer:
    return build_shared(SpinConvMixer, **{**defaults, **kwargs})


_SPIN_768 = dict(dim=768, depth=32, patch_kernel=14, kernel_size=3, act="relu")


@register_model
@with_cfg(dict(PRETRAINED_CFG, pool_size=(16, 16)))
def convmixer_768_32_14_3(**kwargs) -> SpinConvMixer:
    """SPIN's vanilla ConvMixer (76.32% top-1 published)."""
    return _create(_SPIN_768, **kwargs)


@register_model
@with_cfg(dict(PRETRAINED_CFG, pool_size=(16, 16)))
def ws_convmixer_768_32_14_3(**kwargs) -> SpinConvMixer:
    """WS-ConvMixer, rate 2, uniform/sequential (74.27% published)."""
    return _create(dict(_SPIN_768, share_rate=2), **kwargs)


@register_model
@with_cfg(dict(PRETRAINED_CFG, pool_size=(16, 16)))
def wfws_convmixer_768_32_14_3(**kwargs) -> SpinConvMixer:
    """WFWS-ConvMixer: all 32 pretrained sets, mean-fused to 16 on every forward (75.21%)."""
    return _create(dict(_SPIN_768, share_rate=2, fusion="mean"), **kwargs)


@register_model
@with_cfg(dict(TIMM_CFG, pool_size=(32, 32)))
def convmixer_768_32(**kwargs) -> SpinConvMixer:
    """The original ConvMixer-768/32 (timm layout: K7 P7, ReLU, no pointwise residual)."""
    return _create(dict(dim=768, depth=32, patch_kernel=7, kernel_size=7, act="relu",
                        pointwise_residual=False), **kwargs)


@register_model
@with_cfg(dict(TIMM_CFG, pool_size=(32, 32)))
def convmixer_1536_20(**kwargs) -> SpinConvMixer:
    """The original ConvMixer-1536/20 (timm layout: K9 P7, GELU, no pointwise residual)."""
    return _create(dict(dim=1536, depth=20, patch_kernel=7, kernel_size=9, act="gelu",
                        pointwise_residual=False), **kwargs)


def convmixer(**kwargs) -> SpinConvMixer:
    """A SpinConvMixer from its keywords (plan keywords share it)."""
    return build_shared(SpinConvMixer, **kwargs)


# ------------------------------------------------------------------------------ the family
def _kwargs(cfg) -> dict:
    c = cfg.CONVMIXER
    return dict(dim=c.CHANNEL, depth=c.DEPTH, patch_kernel=c.PATCH_KERNEL, patch_stride=c.PATCH_STRIDE,
                patch_padding=c.PATCH_PADDING, kernel_size=c.KERNEL, act=c.ACT_FUNC,
                pointwise_residual=c.POINTWISE_RESIDUAL, drop_path_rate=cfg.MODEL.DROP_PATH_RATE)


def _check(cfg) -> list[str]:
    c, out = cfg.CONVMIXER, []
    if c.KERNEL < 1 or c.KERNEL % 2 == 0:
        out.append(f"CONVMIXER.KERNEL must be an odd number >= 1 (the depthwise conv pads (K-1)/2 on each side to "
                   f"keep the size, which only an odd K does), got {c.KERNEL}")
    for key, low in (("PATCH_KERNEL", 1), ("PATCH_STRIDE", 1), ("PATCH_PADDING", 0)):
        if c[key] < low:
            out.append(f"CONVMIXER.{key} must be >= {low}, got {c[key]}")
    crop = min(cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE)
    if crop >= 1 and c.PATCH_KERNEL >= 1 and c.PATCH_PADDING >= 0 and c.PATCH_KERNEL > crop + 2 * c.PATCH_PADDING:
        out.append(f"CONVMIXER.PATCH_KERNEL {c.PATCH_KERNEL} is larger than the crop {crop} (DATA.*_CROP_SIZE, "
                   f"+ 2 x PATCH_PADDING {c.PATCH_PADDING}): the patch embedding has no output; lower it or "
                   f"raise the crop")
    return out


FAMILY = register_family(Family(
    name="convmixer", section="CONVMIXER", model_names=("WSConvMixer", "ConvMixer", "SpinConvMixer"),
    build=convmixer, kwargs=_kwargs, check=_check, classes=(SpinConvMixer,), width_key="CHANNEL",
    checkpoint_filter=checkpoint_filter_fn,
    arch=lambda cfg: ("C/D/P/K", f"{cfg.CONVMIXER.CHANNEL}/{cfg.CONVMIXER.DEPTH}/{cfg.CONVMIXER.PATCH_KERNEL}/"
                                 f"{cfg.CONVMIXER.KERNEL}"),
    parts={"pointwise": ("pwise.*",), "depthwise": ("dwise_blk.0.*",), "norm": ("dwise_blk.2.*", "bn2.*")},
    default_scope="pointwise",
    # The patch's defaults (the published YAMLs set SPIN's 768/32/14/3).
    defaults=dict(CHANNEL=768, DEPTH=32, PATCH_KERNEL=7, PATCH_STRIDE=7, PATCH_PADDING=0, KERNEL=3, ACT_FUNC="RELU",
                  POINTWISE_RESIDUAL=True),  # True: SPIN block (both halves residual); False: timm's block
    choices={"CONVMIXER.ACT_FUNC": ("RELU", "GELU")}))
