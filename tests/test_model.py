"""The model: parameter counts, upstream keys, block semantics against an independent
functional implementation, and gradients of shared sets."""
import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_bn
from spin.engine.checkpoint import CheckpointError, load_model_weights
from spin.models import SpinConvMixer, create_model
from spin.sharing import build_plan
from spin.share_transform import unique_parameters

SMALL = dict(dim=16, depth=4, patch_kernel=4, kernel_size=3, num_classes=5, drop_rate=0.0)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_published_parameter_counts():
    # 768/32/14/3, 1000 classes. Hand count: stem 3*768*196 + 768 + BN 1536 = 453,888;
    # block 768*9+768 + 1536 + 768*768+768 + 1536 = 601,344 (x32); head 769,000.
    assert n_params(create_model("convmixer_768_32_14_3")) == 20_465_896
    assert 453_888 + 32 * 601_344 + 769_000 == 20_465_896
    # WS rate 2 drops 16 pointwise sets of 768*768+768.
    assert n_params(create_model("ws_convmixer_768_32_14_3")) == 11_016_424
    assert 20_465_896 - 16 * 590_592 == 11_016_424
    wfws = create_model("wfws_convmixer_768_32_14_3")
    assert n_params(wfws) == 20_465_896  # keeps all 32 pretrained sets
    assert unique_parameters(wfws) == 11_016_424


def upstream_keys(depth, n_sets, reduction=0):
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = {f"pwise_w.{j}" for j in range(n_sets)} | {f"pwise_b.{j}" for j in range(n_sets)}
    keys |= {"patch_embed.conv.weight", "patch_embed.conv.bias", "head.fc.weight", "head.fc.bias"}
    keys |= {f"patch_embed.bn.{b}" for b in bn}
    for i in range(depth):
        keys |= {f"blocks.{i}.dwise_blk.0.weight", f"blocks.{i}.dwise_blk.0.bias"}
        keys |= {f"blocks.{i}.dwise_blk.2.{b}" for b in bn} | {f"blocks.{i}.bn2.{b}" for b in bn}
    keys |= {f"reduction_w.{i}" for i in range(reduction)}
    return keys


@pytest.mark.parametrize("rate,fusion,n_sets,n_red,red_shape", [
    (1, None, 4, 0, None), (2, None, 2, 0, None), (2, "mean", 4, 0, None),
    (2, "scalar_weighted_mean", 4, 4, (1,)), (2, "channel_weighted_mean", 4, 4, (16,)),
])
def test_state_dict_keys_are_upstreams(rate, fusion, n_sets, n_red, red_shape):
    m = SpinConvMixer(**SMALL, plan=build_plan(4, share_rate=rate), fusion=fusion)
    sd = m.state_dict()
    assert set(sd) == upstream_keys(4, n_sets, n_red)
    assert sd["pwise_w.0"].shape == (16, 16, 1, 1) and sd["pwise_b.0"].shape == (16,)
    assert sd["blocks.0.dwise_blk.0.weight"].shape == (16, 1, 3, 3)
    if red_shape:
        assert sd["reduction_w.3"].shape == red_shape and torch.all(sd["reduction_w.3"] == 1)


def reference_forward(sd, x, depth, layer_to_set, k=3, stride=4, pointwise_residual=True):
    """SPIN's forward written independently, from a state dict with upstream keys (eval BN)."""
    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"],
                            sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)
    x = bn(F.relu(F.conv2d(x, sd["patch_embed.conv.weight"], sd["patch_embed.conv.bias"],
                           stride=stride)), "patch_embed.bn")
    c = x.shape[1]
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.conv2d(x, sd[p + "dwise_blk.0.weight"], sd[p + "dwise_blk.0.bias"],
                     padding=(k - 1) // 2, groups=c)
        x = x + bn(F.relu(y), p + "dwise_blk.2")
        j = layer_to_set[i]
        y = bn(F.relu(F.conv2d(x, sd[f"pwise_w.{j}"], sd[f"pwise_b.{j}"])), p + "bn2")
        x = x + y if pointwise_residual else y
    return F.linear(x.mean((2, 3)), sd["head.fc.weight"], sd["head.fc.bias"])


@pytest.mark.parametrize("mapping", ["sequential", "strided", "pyramid"])
@pytest.mark.parametrize("residual", [True, False])
def test_logits_match_independent_implementation(mapping, residual):
    plan = build_plan(4, share_rate=2, mapping=mapping)
    m = randomize_bn(SpinConvMixer(**SMALL, plan=plan, pointwise_residual=residual)).eval()
    x = torch.randn(2, 3, 16, 16)
    ref = reference_forward(m.state_dict(), x, 4, plan.layer_to_set, pointwise_residual=residual)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m([x]), ref, rtol=1e-5, atol=1e-5)  # SlowFast-style input list


def test_strict_load_of_upstream_layout():
    """A state dict written from the key list alone (as in a published .pyth) loads strictly."""
    g = torch.Generator().manual_seed(1)
    shapes = {k: v.shape for k, v in SpinConvMixer(**SMALL, plan=build_plan(4, share_rate=2)).state_dict().items()}
    sd = {}
    for k in upstream_keys(4, 2):
        sd[k] = (torch.tensor(3) if k.endswith("num_batches_tracked")
                 else torch.rand(shapes[k], generator=g) + (0.5 if "running_var" in k else 0))
    m = SpinConvMixer(**SMALL, plan=build_plan(4, share_rate=2))
    m.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(m.eval()(x), reference_forward(sd, x, 4, [0, 0, 1, 1]))


@pytest.mark.parametrize("mapping", ["sequential", "strided"])
def test_shared_gradient_is_sum_over_its_layers(mapping):
    plan = build_plan(4, share_rate=2, mapping=mapping)
    ws = randomize_bn(SpinConvMixer(**SMALL, plan=plan)).eval()
    # The same network with each layer owning a copy of its set's weights.
    van = SpinConvMixer(**SMALL).eval()
    sd = {k: v for k, v in ws.state_dict().items() if not k.startswith("pwise_")}
    for i, g in enumerate(plan.layer_to_set):
        sd[f"pwise_w.{i}"], sd[f"pwise_b.{i}"] = ws.state_dict()[f"pwise_w.{g}"], ws.state_dict()[f"pwise_b.{g}"]
    van.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 16, 16)
    ws(x).square().sum().backward()
    van(x).square().sum().backward()
    for g, layers in enumerate(plan.groups):
        shared = ws.shared.sets[g].pwise
        torch.testing.assert_close(shared.weight.grad, sum(van.blocks[i].pwise.weight.grad for i in layers))
        torch.testing.assert_close(shared.bias.grad, sum(van.blocks[i].pwise.bias.grad for i in layers))


@pytest.mark.parametrize("scope,extra", [
    ("depthwise", {"shared.sets.0.dwise_blk.0.weight", "shared.sets.1.dwise_blk.0.bias"}),
    ("norm", {"shared.sets.0.dwise_blk.2.weight", "shared.sets.1.bn2.bias"}),
])
def test_other_scopes_share_through_spin_share(scope, extra):
    m = SpinConvMixer(**SMALL, plan=build_plan(4, share_rate=2, scope=scope))
    sd = m.state_dict()
    assert extra <= set(sd)
    assert sum(k.startswith("pwise_w.") for k in sd) == 4  # pointwise not shared
    if scope == "depthwise":
        assert "blocks.0.dwise_blk.0.weight" not in sd
    else:  # the affine parameters are shared, the running statistics stay each layer's own
        assert "blocks.1.bn2.weight" not in sd
        assert {f"blocks.{i}.bn2.running_var" for i in range(4)} <= set(sd)
    m(torch.randn(2, 3, 16, 16)).sum().backward()


def test_earlier_spin_layouts_load_with_equal_logits():
    """Files of spin before ConvMixer shared through spin.share kept shared depthwise sets at
    dwise_w.{g} / dwise_b.{g}, shared norms (with one set of statistics) at norm_a|norm_b.{g}."""
    plan = build_plan(4, share_rate=2, mapping="strided", scope="all")  # groups (0, 2), (1, 3)
    m = randomize_bn(SpinConvMixer(**SMALL, plan=plan)).eval()
    for i, g in enumerate(plan.layer_to_set):  # one set of statistics per group, as those files had
        first = plan.groups[g][0]
        for bn in ("dwise_blk.2", "bn2"):
            m.blocks[i].get_submodule(bn).load_state_dict(m.blocks[first].get_submodule(bn).state_dict())
    new = m.state_dict()
    legacy = {k: v for k, v in new.items() if not k.startswith(("shared.", "blocks."))}
    for g in range(2):
        first = plan.groups[g][0]
        legacy[f"dwise_w.{g}"] = new[f"shared.sets.{g}.dwise_blk.0.weight"]
        legacy[f"dwise_b.{g}"] = new[f"shared.sets.{g}.dwise_blk.0.bias"]
        for old, bn in (("norm_a", "dwise_blk.2"), ("norm_b", "bn2")):
            for t in ("weight", "bias"):
                legacy[f"{old}.{g}.{t}"] = new[f"shared.sets.{g}.{bn}.{t}"]
            for t in ("running_mean", "running_var", "num_batches_tracked"):
                legacy[f"{old}.{g}.{t}"] = new[f"blocks.{first}.{bn}.{t}"]
    x = torch.randn(2, 3, 16, 16)
    fresh = SpinConvMixer(**SMALL, plan=plan).eval()
    fresh.load_state_dict(legacy, strict=True)
    torch.testing.assert_close(fresh(x), m(x))
    fresh = SpinConvMixer(**SMALL, plan=plan).eval()  # the engine's strict loader takes them too
    load_model_weights(fresh, legacy)
    torch.testing.assert_close(fresh(x), m(x))
    with pytest.raises(CheckpointError, match="does not match"):  # another plan: a mismatch, not a crash
        load_model_weights(SpinConvMixer(**SMALL, plan=build_plan(4, share_rate=4, scope="all")), legacy)


def test_param_counts_per_scope():
    base = n_params(SpinConvMixer(**SMALL))
    pw = 16 * 16 + 16
    dw = 16 * 9 + 16
    bn = 2 * 2 * 16
    for scope, saved in [("pointwise", 2 * pw), ("depthwise", 2 * dw), ("both", 2 * (pw + dw)),
                         ("all", 2 * (pw + dw + bn))]:
        m = SpinConvMixer(**SMALL, plan=build_plan(4, share_rate=2, scope=scope))
        assert n_params(m) == base - saved, scope


def test_contract_and_bad_input():
    m = SpinConvMixer(**SMALL)
    feats = m.forward_features(torch.randn(2, 3, 16, 16))
    assert feats.shape == (2, 16, 4, 4)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 16)
    m.reset_classifier(7)
    assert m(torch.randn(1, 3, 16, 16)).shape == (1, 7)
    with pytest.raises(ValueError, match="one-element list"):
        m([torch.zeros(1), torch.zeros(1)])
    with pytest.raises(ValueError, match="RELU, GELU"):
        SpinConvMixer(**SMALL, act="swish")


@pytest.mark.parametrize("fusion", [None, "channel_weighted_mean"])
def test_nhwc_activations_change_layout_not_math(fusion):
    plan = build_plan(4, share_rate=2, mapping="strided")
    nhwc = randomize_bn(SpinConvMixer(**SMALL, plan=plan, fusion=fusion))
    nchw = SpinConvMixer(**SMALL, plan=plan, fusion=fusion, channels_last=False)
    nchw.load_state_dict(nhwc.state_dict(), strict=True)
    x = torch.randn(3, 3, 16, 16)
    nhwc.eval(), nchw.eval()
    assert nhwc.forward_features(x).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc(x), nchw(x), rtol=1e-5, atol=1e-5)
    nhwc.train(), nchw.train()
    nhwc(x).square().sum().backward()
    nchw(x).square().sum().backward()
    for (name, a), b in zip(nhwc.named_parameters(), nchw.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
