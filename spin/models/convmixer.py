"""ConvMixer with parameter sharing across layers: vanilla, WS and WFWS in one class.

Block i (SPIN semantics, ``pointwise_residual=True``; x is (B, C, H, W)):

    x = x + BN_a(act(DWConv_i(x)))                       # depthwise KxK, groups=C
    x = x + BN_b(act(conv1x1(x, W[p(i)], b[p(i)])))      # shared pointwise set p(i)

``pointwise_residual=False`` drops the second residual: the original ConvMixer (timm) block.

Pointwise weights always live at model level (``pwise_w.{j}``, ``pwise_b.{j}``, upstream's keys):
N entries for a WS model, D for vanilla (N = D) and for WFWS, which keeps all D per-layer sets and
fuses them into N on every forward. Depthwise weights and BatchNorms live in the blocks unless the
plan's scope shares them; then they move to model level (``dwise_w.{j}``/``dwise_b.{j}``,
``norm_a.{j}``/``norm_b.{j}``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath

from ..fusion import (coefficient_shape, fit_relax, fuse_sets, parse_fusion, parse_relax, relax_apply, relax_init,
                      relax_shapes)
from ..sharing import SCOPES, SharingError, SharingPlan, parse_scope
from ..transform import param_tree
from .registry import overlay_cfg, register_model, resolve_plan, split_plan_kwargs

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
PARTS = tuple(SCOPES["convmixer"])  # pointwise, depthwise, norm
# SPIN's evaluation: resize 256, centre crop 224, bicubic, ImageNet mean/std.
PRETRAINED_CFG = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.875,
                      interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                      first_conv="patch_embed.conv", classifier="head.fc")


def _own_scope(plan: SharingPlan) -> SharingPlan:
    """The plan with its scope in this model's parts (empty -> upstream's pointwise, '*' -> all)."""
    parts = plan.scope or ("pointwise",)
    parts = PARTS if "*" in parts else parts
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SharingError(f"sharing scope {'+'.join(bad)!r} is not a part of the ConvMixer block; "
                           f"its parts are {', '.join(PARTS)} (joined with '+', or 'all'; glob patterns apply "
                           f"to module-based blocks such as DeiT's, not to this class's per-part tensors)")
    return dataclasses.replace(plan, scope=parse_scope(parts))


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
    """One layer. Shared weights are passed in; the ones it owns are used otherwise."""

    def __init__(self, dim: int, kernel_size: int, act: str, own_dwise: bool, own_norm: bool,
                 pointwise_residual: bool, drop_path: float = 0.0):
        super().__init__()
        conv = nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=(kernel_size - 1) // 2)
        # Index 0/2 keep upstream's keys dwise_blk.0 (conv) and dwise_blk.2 (BN).
        self.dwise_blk = nn.Sequential(conv if own_dwise else nn.Identity(), _act(act),
                                       nn.BatchNorm2d(dim) if own_norm else nn.Identity())
        self.bn2 = nn.BatchNorm2d(dim) if own_norm else nn.Identity()
        self.act = _act(act)
        self.padding = (kernel_size - 1) // 2
        self.pointwise_residual = pointwise_residual
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, pw_w, pw_b, dw_w=None, dw_b=None, norm_a=None, norm_b=None):
        conv, act, bn_a = self.dwise_blk
        if dw_w is None:
            y = conv(x)
        else:
            y = F.conv2d(x, dw_w, dw_b, padding=self.padding, groups=x.shape[1])
        # BatchNorm saves its input, not its output, for backward: the residual adds can write
        # into the fresh BN outputs in place.
        x = self.drop_path((bn_a if norm_a is None else norm_a)(act(y))).add_(x)
        y = (self.bn2 if norm_b is None else norm_b)(self.act(F.conv2d(x, pw_w, pw_b)))
        return self.drop_path(y).add_(x) if self.pointwise_residual else y


class ClassifierHead(nn.Module):
    """(B, C, H, W) -> (B, classes): global average pool, dropout, linear (key ``head.fc``)."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x, pre_logits: bool = False):
        x = self.dropout(self.pool(x).flatten(1))
        return x if pre_logits else self.fc(x)


class SpinConvMixer(nn.Module):
    """ConvMixer with an optional sharing plan and weight fusion (upstream name: WSConvMixer)."""

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
    ):
        super().__init__()
        plan = _own_scope(plan or SharingPlan.unshared(depth))
        if plan.depth != depth:
            raise SharingError(f"sharing plan is for depth {plan.depth}, model depth is {depth}")
        fusion, relax = parse_fusion(fusion), parse_relax(relax, relax_rank)
        if fusion and plan.shares("norm"):
            raise SharingError("weight fusion of shared BatchNorm is not supported (running "
                               "statistics cannot be fused exactly); drop 'norm' from the scope")
        # Everything but the plan and fusion, so fuse() can rebuild the same architecture.
        self.arch = dict(dim=dim, depth=depth, patch_kernel=patch_kernel,
                         patch_stride=patch_stride or patch_kernel, patch_padding=patch_padding,
                         kernel_size=kernel_size, act=act, num_classes=num_classes,
                         in_chans=in_chans, drop_rate=drop_rate,
                         pointwise_residual=pointwise_residual, channels_last=channels_last,
                         drop_path_rate=drop_path_rate)
        self.dim, self.depth, self.num_classes, self.num_features = dim, depth, num_classes, dim
        self.plan, self.fusion = plan, fusion
        # NHWC activations: oneDNN's depthwise and 1x1 convolutions run 2-10x faster than on NCHW
        # on the CPU (bench/), and cuDNN prefers NHWC for AMP. Only the layout changes, not the math.
        self.channels_last = channels_last
        self.share_dwise, self.share_norm = plan.shares("depthwise"), plan.shares("norm")
        # A shared part stores N sets (WS) or all D (WFWS: fused to N per forward). Pointwise
        # weights always sit at model level, so vanilla (N = D) has upstream's keys too.
        share_pw = plan.shares("pointwise")
        n_pw = plan.num_sets if share_pw and not fusion else depth
        n_dw = plan.num_sets if not fusion else depth

        self.patch_embed = PatchEmbed(in_chans, dim, patch_kernel, patch_stride or patch_kernel,
                                      patch_padding, act)
        self.pwise_w = nn.ParameterList([nn.Parameter(torch.empty(dim, dim, 1, 1)) for _ in range(n_pw)])
        self.pwise_b = nn.ParameterList([nn.Parameter(torch.empty(dim)) for _ in range(n_pw)])
        cshape = coefficient_shape(fusion, dim)
        if cshape and share_pw:
            self.reduction_w = nn.ParameterList([nn.Parameter(torch.ones(cshape)) for _ in range(depth)])
        if self.share_dwise:
            self.dwise_w = nn.ParameterList(
                [nn.Parameter(torch.empty(dim, 1, kernel_size, kernel_size)) for _ in range(n_dw)])
            self.dwise_b = nn.ParameterList([nn.Parameter(torch.empty(dim)) for _ in range(n_dw)])
            if cshape:
                self.dwise_reduction_w = nn.ParameterList(
                    [nn.Parameter(torch.ones(cshape)) for _ in range(depth)])
        if self.share_norm:
            self.norm_a = nn.ModuleList([nn.BatchNorm2d(dim) for _ in range(plan.num_sets)])
            self.norm_b = nn.ModuleList([nn.BatchNorm2d(dim) for _ in range(plan.num_sets)])
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear
        self.blocks = nn.ModuleList([
            MixerBlock(dim, kernel_size, act, not self.share_dwise, not self.share_norm,
                       pointwise_residual, rates[i]) for i in range(depth)])
        self.head = ClassifierHead(dim, num_classes, drop_rate)
        # Which stored entry layer i reads: its set when the part is shared (after fusion for
        # WFWS), its own entry otherwise.
        self.pw_index = list(plan.layer_to_set) if share_pw else list(range(depth))
        self.fused_pw = bool(fusion) and share_pw
        self._scoped: Optional[dict] = None  # the fusions of an open spin.cached() block
        self._init_weights()
        # Relaxed sharing: per-layer deltas on the shared parts (relax_params.{i}.<part>_<suffix>).
        self.relax, self.relax_rank = relax, relax_rank
        parts = {}
        if relax and share_pw:
            parts.update(pwise_w=(dim, dim, 1, 1), pwise_b=(dim,))
        if relax and self.share_dwise:
            parts.update(dwise_w=(dim, 1, kernel_size, kernel_size), dwise_b=(dim,))
        self._relax_of = {n: v for n, v in ((n, relax_shapes(relax, shp, relax_rank)) for n, shp in parts.items()) if v}
        if self._relax_of:
            flat = {f"{n}_{x}": shape for n, v in self._relax_of.items() for x, shape in v.items()}
            self.relax_params = nn.ModuleList([param_tree(relax_init(relax, flat)) for _ in range(depth)])
        self.pretrained_cfg = self.default_cfg = dict(
            PRETRAINED_CFG, num_classes=num_classes, input_size=(in_chans, 224, 224))

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
        for w in list(self.pwise_w) + list(getattr(self, "dwise_w", [])):
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
        for b in list(self.pwise_b) + list(getattr(self, "dwise_b", [])):
            nn.init.zeros_(b)

    # ----------------------------------------------------------------------- shared weights
    def _fused(self, weights: nn.ParameterList, coeffs: Optional[nn.ParameterList], is_bias: bool):
        """N fused sets (a tuple), computed afresh on every call (one call per forward): only an
        open no-grad ``spin.cached(model)`` block, whose caller promises unchanged weights, reuses
        them. No cache keyed on tensor versions: fused optimizers update weights without a bump."""
        def compute():
            c = torch.stack(list(coeffs)) if coeffs is not None else None  # (D, 1|C)
            # N separate tensors: indexing one (N, ...) result per layer would make each layer's
            # backward write a zero-filled (N, ...) gradient (32 x 38 MB per step at 768/32).
            return fuse_sets(self.plan, list(weights), self.fusion, c, is_bias)

        memo = self._scoped
        if memo is None or torch.is_grad_enabled():
            return compute()
        if id(weights) not in memo:
            memo[id(weights)] = compute()
        return memo[id(weights)]

    _RELAXED = (("pw_w", "pwise_w"), ("pw_b", "pwise_b"), ("dw_w", "dwise_w"), ("dw_b", "dwise_b"))

    def layer_weights(self, relaxed: bool = True) -> list[dict[str, torch.Tensor]]:
        """Per layer, the shared tensors it uses: keys pw_w, pw_b and, when shared, dw_w, dw_b,
        norm_a, norm_b. WFWS fuses here, so the graph runs through all D stored sets; relaxed
        sharing adds each layer's delta (``relaxed=False``: the sets alone)."""
        coeffs = getattr(self, "reduction_w", None)
        if self.fused_pw:
            pw_w, pw_b = self._fused(self.pwise_w, coeffs, False), self._fused(self.pwise_b, None, True)
        else:
            pw_w, pw_b = self.pwise_w, self.pwise_b
        out = [{"pw_w": pw_w[j], "pw_b": pw_b[j]} for j in self.pw_index]
        if self.share_dwise:
            if self.fusion:
                dc = getattr(self, "dwise_reduction_w", None)
                dw_w, dw_b = self._fused(self.dwise_w, dc, False), self._fused(self.dwise_b, None, True)
            else:
                dw_w, dw_b = self.dwise_w, self.dwise_b
            for i, g in enumerate(self.plan.layer_to_set):
                out[i].update(dw_w=dw_w[g], dw_b=dw_b[g])
        if self.share_norm:
            for i, g in enumerate(self.plan.layer_to_set):
                out[i].update(norm_a=self.norm_a[g], norm_b=self.norm_b[g])
        if relaxed and self._relax_of:
            for i, w in enumerate(out):
                for key, part in self._RELAXED:
                    if part in self._relax_of:
                        w[key] = relax_apply(self.relax, w[key], self._relax_params(i, part))
        return out

    def _relax_params(self, i: int, part: str) -> dict:
        return {x: getattr(self.relax_params[i], f"{part}_{x}") for x in self._relax_of[part]}

    @staticmethod
    def _originals(source: "SpinConvMixer"):
        """Layer i's own weight of a part in ``source`` (a vanilla model, or a WFWS model's stored
        per-layer copies): pointwise entries are always per layer at model level in both."""
        def get(i: int, part: str) -> torch.Tensor:
            if part.startswith("pwise") or hasattr(source, part):
                return getattr(source, part)[i]
            conv = source.blocks[i].dwise_blk[0]
            return conv.weight if part == "dwise_w" else conv.bias
        return get

    def per_layer_weights(self, scope=None) -> list[dict[str, torch.Tensor]]:
        """``spin.transform.layer_weights`` for this class: per layer, its own in-scope pointwise /
        depthwise weights (stored copies of a vanilla or WFWS model; the set each layer reads in a
        WS model); ``scope`` for a vanilla model, default the plan's (pointwise)."""
        parts = self.plan.scope if self.plan.is_shared else _own_scope(SharingPlan(
            self.plan.layer_to_set, parse_scope(scope))).scope
        want = {"pwise": "pointwise" in parts, "dwise": "depthwise" in parts}
        chosen = [(key, part) for key, part in self._RELAXED if want[part[:5]]]
        if self.fusion or not self.plan.is_shared:
            own = self._originals(self)
            return [{part: own(i, part) for _, part in chosen} for i in range(self.depth)]
        return [{part: w[key] for key, part in chosen} for w in self.layer_weights()]

    @torch.no_grad()
    def _fit_relax(self, originals) -> None:
        bases = self.layer_weights(relaxed=False)
        for i in range(self.depth):
            for key, part in self._RELAXED:
                if part not in self._relax_of:
                    continue
                fit_relax(self._relax_params(i, part), originals(i, part), bases[i][key])

    def init_relax(self) -> bool:
        """Fit the deltas of a relaxed WFWS model to its stored per-layer weights."""
        if not (self._relax_of and self.fusion):
            return False
        self._fit_relax(self._originals(self))
        return True

    # ------------------------------------------------------------------------ model contract
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/P, W/P)."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(x)
        for block, w in zip(self.blocks, self.layer_weights()):
            x = block(x, **w)
        if self.channels_last and x.requires_grad:
            x = _NHWCGrad.apply(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Union[torch.Tensor, list, tuple]) -> torch.Tensor:
        if isinstance(x, (list, tuple)):  # SlowFast passes a list of pathways; images have one
            if len(x) != 1:
                raise ValueError(f"expected a tensor or a one-element list, got {len(x)} inputs")
            x = x[0]
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int):
        self.num_classes = num_classes
        fc = nn.Linear(self.dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.normal_(fc.weight, 0.0, 0.01)
            nn.init.zeros_(fc.bias)
        self.head.fc = fc.to(self.pwise_w[0].device)

    # ----------------------------------------------------------------------------- export
    def unique_parameters(self) -> int:
        """Parameters of the model a fused export would have (= numel for non-WFWS models)."""
        total = sum(p.numel() for p in self.parameters())
        if not self.fusion:
            return total
        drop = sum(p.numel() for name in ("reduction_w", "dwise_reduction_w")
                   for p in getattr(self, name, []))
        extra = self.depth - self.plan.num_sets
        if self.fused_pw:
            drop += extra * (self.pwise_w[0].numel() + self.pwise_b[0].numel())
        if self.share_dwise:
            drop += extra * (self.dwise_w[0].numel() + self.dwise_b[0].numel())
        return total - drop

    @torch.no_grad()
    def spin_share(self, plan: SharingPlan, fusion: Optional[str] = None, relax: Optional[str] = None,
                   relax_rank: int = 0, fit_relax: bool = True) -> "SpinConvMixer":
        """``spin.share`` for this class: a new model with ``plan`` whose set g starts from its
        first member layer (WS), or which keeps all D layers' weights to fuse (WFWS); relaxed
        deltas are fitted to this model's per-layer weights."""
        if self.plan.is_shared or self.fusion:
            raise SharingError("spin.share needs a vanilla ConvMixer; this one is already shared")
        new = SpinConvMixer(**dict(self.arch, num_classes=self.num_classes), plan=plan, fusion=fusion,
                            relax=relax, relax_rank=relax_rank)
        src, dst = self.state_dict(), {}
        # Which source layer fills stored entry j of each model-level list: the set's first member
        # where the list holds N sets, layer j where it holds all D (vanilla part, or WFWS).
        pw, dw = new.plan.shares("pointwise") and not fusion, not fusion
        per_set = {"pwise_w": pw, "pwise_b": pw, "dwise_w": dw, "dwise_b": dw, "norm_a": True, "norm_b": True}
        source = {"pwise_w": "pwise_w.{l}", "pwise_b": "pwise_b.{l}", "dwise_w": "blocks.{l}.dwise_blk.0.weight",
                  "dwise_b": "blocks.{l}.dwise_blk.0.bias", "norm_a": "blocks.{l}.dwise_blk.2.{t}",
                  "norm_b": "blocks.{l}.bn2.{t}"}
        for key, init in new.state_dict().items():
            head, _, rest = key.partition(".")
            if head in source:
                j, _, tail = rest.partition(".")
                layer = new.plan.groups[int(j)][0] if per_set[head] else int(j)
                dst[key] = src[source[head].format(l=layer, t=tail)]
            else:  # reduction_w and relax_params keep their init; everything else has the same key
                dst[key] = init if head.endswith("reduction_w") or head == "relax_params" else src[key]
        new.load_state_dict(dst, strict=True)
        if new._relax_of and fit_relax:
            new._fit_relax(new._originals(self))
        new.train(self.training)
        return new

    @torch.no_grad()
    def fuse(self) -> "SpinConvMixer":
        """Export a plain WS model with N sets whose logits equal this WFWS model's."""
        if not self.fusion:
            raise SharingError("fuse() needs a WFWS model (a REDUCTION_FN); this model has none")
        arch = dict(self.arch, num_classes=self.num_classes)  # reset_classifier may have run
        ws = SpinConvMixer(**arch, plan=self.plan, fusion=None, relax=self.relax,
                           relax_rank=self.relax_rank).to(self.pwise_w[0].device)
        dropped = ("reduction_w.", "dwise_reduction_w.")
        dropped += ("pwise_",) if self.fused_pw else ()
        dropped += ("dwise_w.", "dwise_b.") if self.share_dwise else ()
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(dropped)}
        per_layer = self.layer_weights(relaxed=False)  # the sets; the deltas are copied as they are
        for g, group in enumerate(self.plan.groups):
            w = per_layer[group[0]]  # every member of the group reads the same fused tensors
            if self.fused_pw:
                state[f"pwise_w.{g}"], state[f"pwise_b.{g}"] = w["pw_w"], w["pw_b"]
            if self.share_dwise:
                state[f"dwise_w.{g}"], state[f"dwise_b.{g}"] = w["dw_w"], w["dw_b"]
        ws.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
        ws.train(self.training)
        return ws


# --------------------------------------------------------------------------------- builders
def _create(defaults: dict, **kwargs) -> SpinConvMixer:
    args = {**defaults, **kwargs}
    overlay = args.pop("pretrained_cfg_overlay", None)
    plan_kwargs = split_plan_kwargs(args)
    plan = resolve_plan(args.get("depth", 32), plan_kwargs)
    return overlay_cfg(SpinConvMixer(**args, plan=plan, fusion=plan_kwargs.get("fusion"),
                                     relax=plan_kwargs.get("relax"), relax_rank=plan_kwargs.get("relax_rank", 0)),
                       overlay)


_SPIN_768 = dict(dim=768, depth=32, patch_kernel=14, kernel_size=3, act="relu")


@register_model
def convmixer_768_32_14_3(**kwargs) -> SpinConvMixer:
    """SPIN's vanilla ConvMixer (76.32% top-1 published)."""
    return _create(_SPIN_768, **kwargs)


@register_model
def ws_convmixer_768_32_14_3(**kwargs) -> SpinConvMixer:
    """WS-ConvMixer, rate 2, uniform/sequential (74.27% published)."""
    return _create(dict(_SPIN_768, share_rate=2), **kwargs)


@register_model
def wfws_convmixer_768_32_14_3(**kwargs) -> SpinConvMixer:
    """WFWS-ConvMixer: all 32 pretrained sets, mean-fused to 16 on every forward (75.21%)."""
    return _create(dict(_SPIN_768, share_rate=2, fusion="mean"), **kwargs)


@register_model
def convmixer_768_32(**kwargs) -> SpinConvMixer:
    """The original ConvMixer-768/32 (timm layout: K7 P7, ReLU, no pointwise residual)."""
    return _create(dict(dim=768, depth=32, patch_kernel=7, kernel_size=7, act="relu",
                        pointwise_residual=False), **kwargs)


@register_model
def convmixer_1536_20(**kwargs) -> SpinConvMixer:
    """The original ConvMixer-1536/20 (timm layout: K9 P7, GELU, no pointwise residual)."""
    return _create(dict(dim=1536, depth=20, patch_kernel=7, kernel_size=9, act="gelu",
                        pointwise_residual=False), **kwargs)
