"""Weight fusion against hand computations, grouping by the real map, and fuse() export."""
import pytest
import torch

from conftest import randomize_bn
from spin.engine.checkpoint import load_model_weights
from spin.fusion import FUSIONS, fuse
from spin.models import SpinConvMixer
from spin.sharing import SharingError, build_plan
from spin.share_transform import fuse as spin_fuse
from spin.share_transform import sharing_of, unique_parameters

SMALL = dict(dim=16, depth=4, patch_kernel=4, kernel_size=3, num_classes=5, drop_rate=0.0)


def per_layer(d=4, c=3):
    g = torch.Generator().manual_seed(3)
    w = [torch.randn(c, c, 1, 1, generator=g) for _ in range(d)]
    b = [torch.randn(c, generator=g) for _ in range(d)]
    return w, b


def test_mean_by_hand_sequential():
    w, b = per_layer()
    plan = build_plan(4, share_rate=2)  # groups (0,1), (2,3)
    fw, fb = fuse(w, plan, "mean"), fuse(b, plan, "mean", is_bias=True)
    torch.testing.assert_close(fw[0], (w[0] + w[1]) / 2)
    torch.testing.assert_close(fw[1], (w[2] + w[3]) / 2)
    torch.testing.assert_close(fb[1], (b[2] + b[3]) / 2)


def test_mean_grouped_by_strided_map():
    w, _ = per_layer()
    plan = build_plan(4, share_rate=2, mapping="strided")  # groups (0,2), (1,3); upstream: (0,1)
    fw = fuse(w, plan, "mean")
    torch.testing.assert_close(fw[0], (w[0] + w[2]) / 2)
    torch.testing.assert_close(fw[1], (w[1] + w[3]) / 2)
    assert not torch.allclose(fw[0], (w[0] + w[1]) / 2)


def test_uneven_groups_and_choose_first():
    w, b = per_layer(d=5)
    plan = build_plan(5, mapping=[1, 0, 1, 1, 0])  # set 0: layers 1,4; set 1: layers 0,2,3
    fw = fuse(w, plan, "mean")
    torch.testing.assert_close(fw[0], (w[1] + w[4]) / 2)
    torch.testing.assert_close(fw[1], (w[0] + w[2] + w[3]) / 3)
    first = fuse(w, plan, "choose_first")
    assert torch.equal(first[0], w[1]) and torch.equal(first[1], w[0])
    assert torch.equal(fuse(b, plan, "choose_first", is_bias=True)[0], b[1])


def test_scalar_weighted_mean_by_hand():
    w, b = per_layer()
    s = [torch.tensor([v]) for v in (0.5, 2.0, -1.0, 3.0)]
    plan = build_plan(4, share_rate=2, mapping="pyramid")  # groups (0,3), (1,2)
    fw = fuse(w, plan, "scalar_weighted_mean", s)
    torch.testing.assert_close(fw[0], (0.5 * w[0] + 3.0 * w[3]) / 2)
    torch.testing.assert_close(fw[1], (2.0 * w[1] - 1.0 * w[2]) / 2)
    # biases are plain means whatever the coefficients
    torch.testing.assert_close(fuse(b, plan, "scalar_weighted_mean", s, is_bias=True)[0], (b[0] + b[3]) / 2)


def test_channel_weighted_mean_by_hand():
    w, _ = per_layer()
    c = [torch.tensor([1.0, 2.0, 3.0]) * (i + 1) for i in range(4)]
    plan = build_plan(4, share_rate=2)
    fw = fuse(w, plan, "channel_weighted_mean", c)
    for out in range(3):  # output channel `out` of layer l is scaled by c_l[out]
        expected = (c[2][out] * w[2][out] + c[3][out] * w[3][out]) / 2
        torch.testing.assert_close(fw[1][out], expected)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("mapping", ["sequential", "strided", "pyramid", "random"])
@pytest.mark.parametrize("scope", ["pointwise", "both", "pointwise+norm"])
def test_fuse_export_matches_wfws_logits(fusion, mapping, scope):
    plan = build_plan(4, share_rate=2, mapping=mapping, seed=1, scope=scope)
    wfws = randomize_bn(SpinConvMixer(**SMALL, plan=plan, fusion=fusion))
    g = torch.Generator().manual_seed(2)
    for name, p in wfws.named_parameters():  # give every stored copy and coefficient distinct values
        if name.startswith(("blocks.", "shared.coeffs")):
            p.data = torch.randn(p.shape, generator=g) * 0.3 + (1.0 if "coeffs" in name else 0.0)
    wfws.eval()
    ws = spin_fuse(wfws).eval()
    assert sharing_of(ws)[1] is None
    keys = ws.state_dict()
    assert sum(k.startswith("pwise_w.") for k in keys) == (2 if "pointwise" in plan.scope else 4)
    assert not any(k.startswith(("reduction_w", "shared.coeffs")) for k in keys)
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(ws(x), wfws(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in ws.parameters()) == unique_parameters(wfws)


def test_vanilla_checkpoint_loads_into_wfws():
    vanilla = randomize_bn(SpinConvMixer(**SMALL))
    wfws = SpinConvMixer(**SMALL, plan=build_plan(4, share_rate=2), fusion="channel_weighted_mean")
    load_model_weights(wfws, vanilla.state_dict())  # reduction_w keep their init (ones)
    for i in range(4):
        assert torch.equal(wfws.blocks[i].pwise.weight, vanilla.blocks[i].pwise.weight)
    assert torch.all(wfws.state_dict()["reduction_w.0"] == 1)
    # With rate 1 the fused model is the vanilla one.
    same = SpinConvMixer(**SMALL, plan=build_plan(4, share_rate=1), fusion="mean")
    load_model_weights(same, vanilla.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(same.eval()(x), vanilla.eval()(x))


def test_fusion_errors():
    with pytest.raises(SharingError, match="allowed: None, mean"):
        SpinConvMixer(**SMALL, plan=build_plan(4, share_rate=2), fusion="median")
    with pytest.raises(SharingError, match="needs a WFWS"):
        spin_fuse(SpinConvMixer(**SMALL))
    with pytest.raises(SharingError, match="shares nothing"):
        SpinConvMixer(**SMALL, relax="scale")


def test_inference_cache_follows_weight_updates():
    plan = build_plan(4, share_rate=2)
    wfws = SpinConvMixer(**SMALL, plan=plan, fusion="scalar_weighted_mean").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = wfws(x)
        assert torch.equal(wfws(x), a)  # served from the cache
        wfws.blocks[3].pwise.weight.mul_(2.0)  # an in-place update must invalidate it
        b = wfws(x)
    assert not torch.allclose(a, b)
    with torch.no_grad():
        wfws.shared.coeffs[0].pwise.weight.fill_(0.5)
        c = wfws(x)
    assert not torch.allclose(b, c)
    torch.testing.assert_close(spin_fuse(wfws).eval()(x), c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wfws(x), c)  # grad mode: computed afresh, same values


@pytest.mark.parametrize("fusion,k", [("mean", 0), ("scalar_weighted_mean", 1), ("channel_weighted_mean", 3)])
@pytest.mark.parametrize("mapping", [[0, 0, 1, 1], [1, 0, 1, 1], [0, 1, 0, 1]])
def test_fusion_gradients_match_autograd_reference(fusion, k, mapping):
    """The hand-written backward against autograd through a plain loop of the formulas."""
    plan = build_plan(4, mapping=mapping)
    g = torch.Generator().manual_seed(4)
    w = [torch.randn(3, 2, 1, 1, generator=g, requires_grad=True) for _ in range(4)]
    c = [torch.randn(k, generator=g, requires_grad=True) for _ in range(4)] if k else None
    upstream = [torch.randn(3, 2, 1, 1, generator=g) for _ in range(plan.num_sets)]
    out = fuse(w, plan, fusion, c)
    sum((o * u).sum() for o, u in zip(out, upstream)).backward()
    got_w, got_c = [t.grad.clone() for t in w], [t.grad.clone() for t in c] if c else None
    for t in w + (c or []):
        t.grad = None
    ref = []
    for members in plan.groups:
        terms = [w[l] * (c[l].reshape(-1, 1, 1, 1) if c else 1.0) for l in members]
        ref.append(sum(terms) / len(terms))
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r)
    sum((r * u).sum() for r, u in zip(ref, upstream)).backward()
    for a, t in zip(got_w, w):
        torch.testing.assert_close(a, t.grad)
    for a, t in zip(got_c or [], c or []):
        torch.testing.assert_close(a, t.grad)
