"""spin.share on every isotropic family: published parameter counts, logits against independent
references (ALBERT-style tying, a functional ConvNeXt, timm's own models), fuse() equality,
official-layout loading, and the errors of bad requests."""
import copy
import os

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import randomize_bn
from spin import SharingError, build_plan
from spin.engine import checkpoint as cu
from spin.fusion import FUSIONS
from spin.models import ConvNeXtIsotropic, create_model
from spin.share_transform import shared_sets_of, fuse, share, unique_parameters
from spin.sharing import SCOPES

TINY = {
    "vit": ("deit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)),
    "convnext": ("convnext_iso_small", dict(dim=16, depth=4, patch_size=8, kernel_size=3)),
    "mixer": ("mixer_s16_224", dict(img_size=32, patch_size=8, embed_dim=32, num_blocks=4)),
}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def vanilla(family, seed=0, **kw):
    """A tiny vanilla model with every parameter random (so equal logits mean equal math)."""
    torch.manual_seed(seed)
    if family == "timm_convmixer":
        from timm.models.convmixer import ConvMixer

        m = randomize_bn(ConvMixer(dim=16, depth=4, kernel_size=3, patch_size=4, num_classes=5))
    else:
        name, args = TINY[family]
        m = create_model(name, num_classes=5, **args, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return m.eval()


FAMILIES = ["vit", "convnext", "mixer", "timm_convmixer"]


# ---------------------------------------------------------------- published parameter counts
def test_deit_counts_against_published_and_hand_count():
    with torch.device("meta"):
        s = create_model("deit_small_patch16_224")
        assert n_params(s) == 22_050_664
        assert n_params(create_model("deit_tiny_patch16_224")) == 5_717_416
        assert n_params(create_model("deit_base_patch16_224")) == 86_567_656
        # one DeiT-S block's attn + mlp: qkv 384x1152+1152, proj 384x384+384, fc1 384x1536+1536,
        # fc2 1536x384+384
        block = (384 * 1152 + 1152) + (384 * 384 + 384) + (384 * 1536 + 1536) + (1536 * 384 + 384)
        assert block == 1_772_928
        for rate, expected in [(2, 11_413_096), (3, 7_867_240), (4, 6_094_312)]:
            ws = create_model("deit_small_patch16_224", share_rate=rate)
            assert n_params(ws) == unique_parameters(ws) == expected == 22_050_664 - (12 - 12 // rate) * block
        assert n_params(create_model("ws_deit_tiny_patch16_224")) == 3_052_840
        wfws = create_model("wfws_deit_small_patch16_224")
        assert n_params(wfws) == 22_050_664 and unique_parameters(wfws) == 11_413_096


def test_convnext_iso_counts_against_published_and_hand_count():
    with torch.device("meta"):
        assert n_params(create_model("convnext_iso_small")) == 22_308_712
        assert n_params(create_model("convnext_iso_base")) == 87_083_752
        ws = create_model("ws_convnext_iso_small")
    # stem 3*384*256+384, head 384*1000+1000, final norm 768; block dwconv 384*49+384, norm 768,
    # pwconv1 384*1536+1536, pwconv2 1536*384+384
    shared = (384 * 49 + 384) + (384 * 1536 + 1536) + (1536 * 384 + 384)
    block = shared + 768
    assert 295_296 + 18 * block + 768 + 385_000 == 22_308_712
    assert n_params(ws) == 22_308_712 - 9 * shared == 11_501_800


# ---------------------------------------------------------------- WS against references
def make_groups_equal(model, plan, names):
    """Copy the first member layer's in-scope parameters into every other member."""
    with torch.no_grad():
        for members in plan.groups:
            for layer in members[1:]:
                for n in names:
                    model.blocks[layer].get_parameter(n).copy_(model.blocks[members[0]].get_parameter(n))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mapping", ["sequential", "strided", "random"])
def test_share_keeps_logits_of_a_model_whose_groups_are_equal(family, mapping):
    model = vanilla(family)
    plan = build_plan(4, share_rate=2, mapping=mapping, seed=3)
    names = share(model, plan=plan).shared.names
    make_groups_equal(model, plan, names)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    ws = share(model, plan=plan).eval()
    assert torch.equal(ws(x), ref)
    assert torch.equal(model(x), ref)  # share() returned a copy: the input model is untouched
    assert n_params(ws) == n_params(model) - 2 * sum(model.blocks[0].get_parameter(n).numel() for n in names)


@pytest.mark.parametrize("family", FAMILIES)
def test_ws_equals_albert_style_tying(family):
    """Reference: the same nn.Parameter object placed in several blocks (ALBERT); its gradient
    accumulates over its layers, as a set's must."""
    model = vanilla(family, seed=1)
    plan = build_plan(4, share_rate=2, mapping="pyramid")  # groups (0, 3), (1, 2)
    names = share(model, plan=plan).shared.names
    make_groups_equal(model, plan, names)
    ws = share(model, plan=plan)
    tied = copy.deepcopy(model)
    for members in plan.groups:
        for layer in members[1:]:
            for n in names:
                mod_name, _, leaf = n.rpartition(".")
                src = tied.blocks[members[0]].get_submodule(mod_name)
                setattr(tied.blocks[layer].get_submodule(mod_name), leaf, getattr(src, leaf))
    x = torch.randn(3, 3, 32, 32)
    ws.train(), tied.train()
    torch.manual_seed(5)
    a = ws(x)
    torch.manual_seed(5)
    b = tied(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    a.square().sum().backward()
    b.square().sum().backward()
    for g, members in enumerate(plan.groups):
        for n in names:
            torch.testing.assert_close(ws.shared.sets[g].get_parameter(n).grad,
                                       tied.blocks[members[0]].get_parameter(n).grad)


def test_default_scopes_are_the_papers():
    assert shared_sets_of(create_model("ws_deit_tiny_patch16_224", **TINY["vit"][1])).names == (
        "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")
    assert set(shared_sets_of(create_model("ws_convnext_iso_small", **TINY["convnext"][1])).names) == {
        "dwconv.weight", "dwconv.bias", "pwconv1.weight", "pwconv1.bias", "pwconv2.weight", "pwconv2.bias"}
    m = create_model("deit_tiny_patch16_224", share_rate=2, scope="norm+attn.qkv", **TINY["vit"][1])
    assert set(m.shared.names) == {"norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                                   "attn.qkv.weight", "attn.qkv.bias"}
    ls = create_model("deit_tiny_patch16_224", share_rate=2, scope="ls", init_values=0.1, **TINY["vit"][1])
    assert ls.shared.names == ("ls1.gamma", "ls2.gamma")
    assert set(SCOPES["convnext"]) == {"dwconv", "pwconv", "norm", "gamma"}


# ---------------------------------------------------------------- WFWS and fuse()
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("mapping", ["sequential", "strided", "random"])
def test_fuse_equals_wfws(family, fusion, mapping):
    model = vanilla(family, seed=2)
    wfws = share(model, share_rate=2, fusion=fusion, mapping=mapping, seed=7)
    # vanilla keys stay: the model's own state dict loads into the WFWS model
    cu.load_model_weights(wfws, model.state_dict())
    with torch.no_grad():
        for p in (wfws.shared.coeffs.parameters() if hasattr(wfws.shared, "coeffs") else []):
            p.copy_(torch.rand_like(p) + 0.5)
    wfws.eval()
    ws = fuse(wfws).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ws(x), wfws(x), rtol=1e-5, atol=1e-5)
    assert n_params(ws) == unique_parameters(wfws) < n_params(wfws)
    assert shared_sets_of(ws).fusion is None and not any("coeffs" in k for k in ws.state_dict())


def test_fusion_groups_follow_the_mapping_by_hand():
    model = vanilla("vit", seed=3)
    wfws = share(model, share_rate=2, fusion="mean", mapping="strided")  # groups (0, 2), (1, 3)
    ws = fuse(wfws)
    w = [model.blocks[i].attn.qkv.weight for i in range(4)]
    torch.testing.assert_close(ws.shared.sets[0].attn.qkv.weight, (w[0] + w[2]) / 2)
    torch.testing.assert_close(ws.shared.sets[1].attn.qkv.weight, (w[1] + w[3]) / 2)
    # between forwards the blocks show their stored per-layer weights, not the fused ones
    wfws(torch.randn(1, 3, 32, 32))
    assert wfws.blocks[0].attn.qkv.weight is wfws.blocks[0].attn.qkv._parameters["weight"]


def test_wfws_trains_every_stored_copy_and_coefficient():
    wfws = share(vanilla("convnext", seed=4), share_rate=2, fusion="channel_weighted_mean").train()
    wfws(torch.randn(2, 3, 32, 32)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wfws.parameters())


def test_spin_convmixer_shares_through_spin_share_in_upstream_keys():
    m = randomize_bn(create_model("convmixer_768_32_14_3", dim=16, depth=4, patch_kernel=4, num_classes=5)).eval()
    ws = share(m, share_rate=2, mapping="strided", scope="both")
    sd, own = ws.state_dict(), m.state_dict()
    assert sorted(k for k in sd if k.startswith("pwise_w") or k.startswith("shared.sets") and k.endswith("weight")) == \
        ["pwise_w.0", "pwise_w.1", "shared.sets.0.dwise_blk.0.weight", "shared.sets.1.dwise_blk.0.weight"]
    assert torch.equal(sd["pwise_w.1"], own["pwise_w.1"])  # set 1 = layers (1, 3): from layer 1
    assert torch.equal(sd["shared.sets.0.dwise_blk.0.weight"], own["blocks.0.dwise_blk.0.weight"])
    wfws = share(m, share_rate=2, fusion="mean").eval()
    torch.testing.assert_close(fuse(wfws).state_dict()["pwise_w.0"], (own["pwise_w.0"] + own["pwise_w.1"]) / 2)
    norm = share(m, share_rate=2, scope="norm")  # affine from layer 0 for layers 0 and 1; statistics per layer
    assert torch.equal(norm.state_dict()["shared.sets.1.bn2.weight"], own["blocks.2.bn2.weight"])
    assert torch.equal(norm.blocks[1].dwise_blk[2].running_var, m.blocks[1].dwise_blk[2].running_var)


# ---------------------------------------------------------------- official layouts on disk
def test_timm_deit_checkpoint_loads_strictly_with_equal_logits(tmp_path):
    from safetensors.torch import save_file

    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    ref = timm.create_model("deit_tiny_patch16_224", pretrained=False, **args).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    torch.save(ref.state_dict(), tmp_path / "deit.pth")
    save_file(ref.state_dict(), str(tmp_path / "deit.safetensors"))
    x = torch.randn(2, 3, 32, 32)
    for f in ("deit.pth", "deit.safetensors"):
        ours = create_model("deit_tiny_patch16_224", **args)
        cu.load_model_weights(ours, cu.load_checkpoint(str(tmp_path / f))["model_state"], source=f)
        assert isinstance(ours, type(ref)) and set(ours.state_dict()) == set(ref.state_dict())
        torch.testing.assert_close(ours.eval()(x), ref(x), rtol=0, atol=0)
    wfws = create_model("wfws_deit_tiny_patch16_224", **args)
    cu.load_model_weights(wfws, cu.load_checkpoint(str(tmp_path / "deit.pth"))["model_state"])
    same = create_model("deit_tiny_patch16_224", share_rate=1, fusion="mean", **args)  # groups of one
    cu.load_model_weights(same, ref.state_dict())
    torch.testing.assert_close(same.eval()(x), ref(x), rtol=1e-6, atol=1e-6)


def convnext_iso_reference(sd, x, depth, k=3, patch=8):
    """The official isotropic ConvNeXt written from its key layout, functionally."""
    x = F.conv2d(x, sd["stem.weight"], sd["stem.bias"], stride=patch)
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.conv2d(x, sd[p + "dwconv.weight"], sd[p + "dwconv.bias"], padding=k // 2, groups=x.shape[1])
        y = y.permute(0, 2, 3, 1)
        y = F.layer_norm(y, y.shape[-1:], sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[p + "pwconv1.weight"], sd[p + "pwconv1.bias"])),
                     sd[p + "pwconv2.weight"], sd[p + "pwconv2.bias"])
        if p + "gamma" in sd:
            y = sd[p + "gamma"] * y
        x = x + y.permute(0, 3, 1, 2)
    x = F.layer_norm(x.mean((-2, -1)), x.shape[1:2], sd["norm.weight"], sd["norm.bias"], 1e-6)
    return F.linear(x, sd["head.weight"], sd["head.bias"])


@pytest.mark.parametrize("layer_scale", [0.0, 0.5])
def test_official_convnext_iso_checkpoint_loads_strictly_with_equal_logits(tmp_path, layer_scale):
    dim, depth, classes = 16, 3, 5
    g = torch.Generator().manual_seed(0)
    shapes = {"stem.weight": (dim, 3, 8, 8), "stem.bias": (dim,), "norm.weight": (dim,), "norm.bias": (dim,),
              "head.weight": (classes, dim), "head.bias": (classes,)}
    for i in range(depth):
        p = f"blocks.{i}."
        shapes.update({p + "dwconv.weight": (dim, 1, 3, 3), p + "dwconv.bias": (dim,), p + "norm.weight": (dim,),
                       p + "norm.bias": (dim,), p + "pwconv1.weight": (4 * dim, dim), p + "pwconv1.bias": (4 * dim,),
                       p + "pwconv2.weight": (dim, 4 * dim), p + "pwconv2.bias": (dim,)})
        if layer_scale:
            shapes[p + "gamma"] = (dim,)
    sd = {k: torch.randn(s, generator=g) * 0.3 for k, s in shapes.items()}
    torch.save({"model": sd}, tmp_path / "convnext_iso.pth")  # the official file layout
    model = ConvNeXtIsotropic(num_classes=classes, depth=depth, dim=dim, patch_size=8, kernel_size=3,
                              layer_scale_init_value=layer_scale)
    cu.load_model_weights(model, cu.load_checkpoint(str(tmp_path / "convnext_iso.pth"))["model_state"])
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), convnext_iso_reference(sd, x, depth), rtol=1e-5, atol=1e-5)


def test_ws_checkpoint_holds_each_shared_tensor_once(tmp_path):
    ws = create_model("deit_tiny_patch16_224", share_rate=2, img_size=32, patch_size=8, depth=4)
    path = tmp_path / "ws.pth"
    torch.save(ws.state_dict(), path)
    tensor_bytes = sum(t.numel() * t.element_size() for t in ws.state_dict().values())
    assert tensor_bytes == 4 * unique_parameters(ws)  # no buffers in a ViT
    assert abs(os.path.getsize(path) - tensor_bytes) <= 0.01 * tensor_bytes
    vanilla_bytes = 4 * n_params(create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=4))
    assert tensor_bytes < 0.62 * vanilla_bytes
    again = create_model("deit_tiny_patch16_224", share_rate=2, img_size=32, patch_size=8, depth=4)
    again.load_state_dict(cu.load_checkpoint(str(path))["model_state"], strict=True)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(again.eval()(x), ws.eval()(x))


def test_an_exception_mid_forward_leaves_no_stale_state():
    wfws = share(vanilla("vit"), share_rate=2, fusion="mean")
    with pytest.raises(Exception):
        wfws(torch.randn(2, 3, 40, 40))  # the wrong image size: the patch embedding raises inside
    assert wfws.shared._pass is None
    with pytest.raises(Exception):
        wfws.blocks(torch.randn(2, 17, 7))  # a block raises mid-stack, after its pre-hook ran
    assert wfws.shared._pass is None and "weight" not in wfws.blocks[0].attn.qkv.__dict__
    assert copy.deepcopy(wfws).blocks[0].attn.qkv.weight is not None  # no non-leaf tensors left behind


def test_shared_batchnorm_keeps_bn_weight_decay():
    from spin.config import load_config as cfg_of
    from spin.engine.optim import construct_optimizer

    ws = share(vanilla("timm_convmixer"), share_rate=2, scope="norm")
    cfg = cfg_of(opts=["SOLVER.WEIGHT_DECAY", "0.05", "BN.WEIGHT_DECAY", "0.0"])
    decay = {id(p): g["weight_decay"] for g in construct_optimizer(ws, cfg).param_groups for p in g["params"]}
    assert decay[id(ws.shared.sets[0].get_parameter("3.weight"))] == 0.0  # a shared BatchNorm
    assert decay[id(ws.blocks[0][1].weight)] == 0.05  # the pointwise conv


def test_shared_model_survives_deepcopy_move_and_ema():
    from timm.utils import ModelEmaV3

    ws = share(vanilla("mixer"), share_rate=2)  # random weights (timm zero-inits the head)
    copy_ = copy.deepcopy(ws)
    with torch.no_grad():
        copy_.shared.sets[0].mlp_tokens.fc1.weight.add_(1.0)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(copy_(x), ws(x))  # the copy's blocks read the copy's sets
    ws.to(torch.float64)
    assert ws.blocks[0].mlp_tokens.fc1.weight.dtype == torch.float64
    assert ws(x.double()).dtype == torch.float64
    ema = ModelEmaV3(ws.float(), decay=0.5)
    with torch.no_grad():
        ws.shared.sets[1].mlp_channels.fc2.weight.add_(1.0)
    ema.update(ws)
    torch.testing.assert_close(ema.module.shared.sets[1].mlp_channels.fc2.weight,
                               ws.shared.sets[1].mlp_channels.fc2.weight - 0.5)


# ---------------------------------------------------------------- timm treats them as its own
@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "ws_deit_tiny_patch16_224", "wfws_mixer_s16_224",
                                  "ws_convnext_iso_small", "wfws_convmixer_768_32_14_3"])
def test_timm_model_conventions(name):
    from timm.data import resolve_data_config

    family = next(f for f, key in (("convmixer", "convmixer"), ("convnext", "convnext_iso"), ("vit", "deit"),
                                   ("mixer", "mixer")) if key in name)
    kw = TINY[family][1] if family in TINY else dict(dim=16, depth=4, patch_kernel=8)
    m = timm.create_model("spin_" + name, num_classes=7, **kw)
    cfg = m.pretrained_cfg
    assert {"input_size", "interpolation", "crop_pct", "mean", "std", "num_classes", "first_conv",
            "classifier"} <= set(cfg) and cfg["num_classes"] == 7
    assert isinstance(m.get_submodule(cfg["first_conv"]), nn.Conv2d)
    assert isinstance(m.get_submodule(cfg["classifier"]), nn.Linear) and m.get_classifier().out_features == 7
    data = resolve_data_config({}, model=m)
    assert data["input_size"] == cfg["input_size"] and data["interpolation"] == cfg["interpolation"]
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    assert out.shape == (2, 7)
    out.mean().backward()
    assert all(p.grad is not None for p in m.parameters()), "every parameter gets a gradient"
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, m.num_features)
    m.reset_classifier(0)
    assert m(x).shape == (2, m.num_features)


def test_timm_torchscript_fx_and_features_where_timm_supports_them():
    from torch.fx import symbolic_trace

    x = torch.randn(1, 3, 32, 32)
    for name, family in [("spin_deit_tiny_patch16_224", "vit"), ("spin_mixer_s16_224", "mixer"),
                         ("spin_convnext_iso_small", "convnext")]:
        m = timm.create_model(name, **TINY[family][1]).eval()
        for traced in (torch.jit.script(m), symbolic_trace(m)):
            torch.testing.assert_close(traced(x), m(x))
    for name in ("spin_deit_tiny_patch16_224", "spin_ws_deit_tiny_patch16_224"):
        f = timm.create_model(name, features_only=True, out_indices=(1, 3), **TINY["vit"][1])
        assert [t.shape for t in f(x)] == [(1, 32, 4, 4)] * 2


# ---------------------------------------------------------------- bad requests
def test_share_errors():
    with pytest.raises(SharingError, match="no uniform block stack at Linear.blocks"):
        share(nn.Linear(3, 3), share_rate=2)
    model = vanilla("vit")
    with pytest.raises(SharingError, match="no uniform block stack at VisionTransformer.head"):
        share(model, share_rate=2, blocks="head")
    with pytest.raises(SharingError, match=r"'attn.qkvv'.*matches no parameter.*attn.qkv.weight"):
        share(model, share_rate=2, scope="attn.qkvv")
    with pytest.raises(SharingError, match="'pointwise' is not a part of vit's blocks; its parts are attn, mlp"):
        share(model, share_rate=2, scope="pointwise")
    with pytest.raises(SharingError, match="'ls'.*matches no parameter"):  # no layer scale in DeiT
        share(model, share_rate=2, scope="ls")
    with pytest.raises(SharingError, match="depth 4 divisible by the share rate 3"):
        share(model, share_rate=3)
    with pytest.raises(SharingError, match="the plan is for depth 6 but blocks has 4 blocks"):
        share(model, plan=build_plan(6, share_rate=2))
    with pytest.raises(SharingError, match="already shared"):
        share(share(model, share_rate=2), share_rate=2)
    with pytest.raises(SharingError, match="needs a WFWS model"):
        fuse(share(model, share_rate=2))
    odd = nn.Module()
    odd.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 5), nn.Linear(4, 4)])
    with pytest.raises(SharingError, match=r"blocks differ: blocks.2.weight is \(5, 4\) but blocks.0.weight is \(4, 4\)"):
        share(odd, share_rate=2)
    mixed = nn.Module()
    mixed.blocks = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(SharingError, match="blocks of different types"):
        share(mixed, share_rate=2)
    with pytest.raises(SharingError, match="allowed: None, mean"):
        share(model, share_rate=2, fusion="median")


@pytest.mark.parametrize("kwargs,needle", [
    (dict(share_rate=2.0), "share_rate must be an integer, got 2.0"),
    (dict(share_rate="2"), "share_rate must be an integer, got '2'"),
    (dict(share_rate=True), "share_rate must be an integer, got True"),
    (dict(share_rate=2, seed="a"), "seed must be an integer"),
    (dict(share_rate=2, scope=3), "a sharing scope is a string"),
    (dict(share_rate=2, relax="lora", relax_rank=2.5), "relax_rank must be an integer"),
    (dict(share_rate=2, relax_rank=4), "relax_rank 4 is read only by relax='lora'"),
    (dict(share_rate=2, inplace="yes"), "inplace must be True or False"),
    (dict(share_rate=2, blocks=3), "blocks is the dotted path"),
    ({}, "nothing to share"),
])
def test_share_argument_errors_leave_the_model_untouched(kwargs, needle):
    model = vanilla("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SharingError, match=needle):
        share(model, **kwargs)
    assert shared_sets_of(model) is None and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(SharingError, match="takes a torch.nn.Module, got a int"):
        share(3, share_rate=2)


def test_numpy_integers_are_integers():
    assert shared_sets_of(share(vanilla("vit"), share_rate=np.int64(2), seed=np.int32(1))).plan.layer_to_set == (0, 0, 1, 1)
