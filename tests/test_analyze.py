"""spin analyze (CKA, weight similarity, plan suggestions) and relaxed sharing (LoRA / scale deltas)
against independent expectations."""
import itertools
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder, randomize_bn
from spin.tools.analyze import MinibatchCKA, best_contiguous, best_grouping, fusion_error, _ratio
from spin.cli import main
from spin.config import load_config
from spin.engine import checkpoint as cu
from spin.models import build_model, create_model
from spin.share_transform import fuse, share, unique_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny-ws.yaml")
VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=5)


# ---------------------------------------------------------------- CKA
def test_cka_is_one_for_a_layer_with_itself_and_invariant_to_rotation_and_scale():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    acc = MinibatchCKA()
    for _ in range(5):  # accumulated over batches
        x = torch.randn(16, 20, generator=g, dtype=torch.float64)
        acc.update([x, x @ q, 3.7 * x, torch.randn(16, 20, generator=g, dtype=torch.float64)])
    c = acc.result()
    assert np.allclose(np.diag(c), 1.0) and np.allclose(c, c.T)
    assert c[0, 1] == pytest.approx(1.0, abs=1e-9) and c[0, 2] == pytest.approx(1.0, abs=1e-9)
    assert abs(c[0, 3]) < 0.2  # independent features


def test_minibatch_cka_equals_the_unbiased_formula_by_hand():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(12, 7, generator=g, dtype=torch.float64)
    y = y + x @ torch.randn(5, 7, generator=g, dtype=torch.float64)

    def hsic(k, l):  # Song et al. (2012), written out
        n = k.shape[0]
        k, l = k - torch.diag(torch.diag(k)), l - torch.diag(torch.diag(l))
        one = torch.ones(n, dtype=torch.float64)
        return (torch.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))

    kx, ky = x @ x.T, y @ y.T
    acc = MinibatchCKA()
    acc.update([x, y])
    assert acc.result()[0, 1] == pytest.approx(float(hsic(kx, ky) / torch.sqrt(hsic(kx, kx) * hsic(ky, ky))))


# ---------------------------------------------------------------- plan suggestions
@pytest.mark.parametrize("d", [4, 5, 6, 7])
def test_contiguous_dp_equals_brute_force(d):
    rng = np.random.default_rng(d)
    for _ in range(5):
        a = rng.normal(size=(d, d))
        s = (a + a.T) / 2
        for n in range(1, d):
            best = max((_ratio(s, [sum(i >= c for c in cuts) for i in range(d)]), cuts)
                       for cuts in itertools.combinations(range(1, d), n - 1))
            assert _ratio(s, best_contiguous(s, n)) == pytest.approx(best[0], abs=1e-9), (d, n)


def test_local_search_finds_a_planted_grouping():
    rng = np.random.default_rng(0)
    truth = [0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 1, 0]  # three interleaved groups
    s = np.where(np.equal.outer(truth, truth), 0.9, 0.1) + rng.normal(0, 0.02, (12, 12))
    s = (s + s.T) / 2
    found = best_grouping(s, 3, exact_limit=0)  # forced past brute force
    assert found == [0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 1, 0]
    assert best_grouping(s[:8, :8], 3) == [0, 1, 2, 0, 1, 2, 0, 1]  # exact on 8 layers


def test_fusion_error_by_hand():
    v = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    # groups (0, 1) mean (2, 0): errors 1 + 1; (2, 3) identical: 0; total norm 1 + 9 + 4 + 4
    assert fusion_error(v, [0, 0, 1, 1]) == pytest.approx(2 / 18)


def test_analyze_suggests_the_planted_groups_with_zero_fusion_error(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_train=4, n_val=3)
    cfg = load_config([TINY], ["CONVMIXER.DEPTH", "8", "CONVMIXER.WEIGHT_SHARE.ENABLE", "False",
                               "DATA.PATH_TO_DATA_DIR", data])
    model = randomize_bn(build_model(cfg))
    with torch.no_grad():  # layers 0-3 hold one pointwise set, layers 4-7 another
        for i in range(8):
            model.blocks[i].pwise.load_state_dict(model.blocks[0 if i < 4 else 4].pwise.state_dict())
    ck = cu.save_checkpoint(str(tmp_path / "run" / "checkpoints" / "checkpoint_epoch_00001.pyth"), model, 0, cfg)
    assert main(["analyze", "--checkpoint", ck, "--suggest", "2", "--images", "12"]) == 0
    out = capsys.readouterr().out
    assert "contiguous (best): layer map [0, 0, 0, 0, 1, 1, 1, 1]" in out
    assert "any grouping (best): layer map [0, 0, 0, 0, 1, 1, 1, 1]" in out
    assert "relative fusion error 0.0000" in out and "LAYER_MAP: [0, 0, 0, 0, 1, 1, 1, 1]" in out
    assert "WEIGHT_SHARE:\n  ENABLE: True\n  SHARING_MAPPING: custom" in out
    folder = tmp_path / "run" / "analysis"
    for png in ("cka.png", "weights.png"):
        with Image.open(folder / png) as im:
            im.verify()
    res = __import__("json").load(open(folder / "analysis.json"))
    assert res["images"] == 12 and np.allclose(np.diag(res["cka"]), 1.0, atol=1e-6)
    sims = np.array(res["weight_cosine"])
    assert np.allclose(sims[:4, :4], 1.0, atol=1e-6) and np.allclose(sims[4:, 4:], 1.0, atol=1e-6)
    sequential = next(c for c in res["suggestions"] if c["name"] == "sequential")
    strided = next(c for c in res["suggestions"] if c["name"] == "strided")
    assert sequential["fusion_error"] == pytest.approx(0, abs=1e-9) and strided["fusion_error"] > 0.1


# ---------------------------------------------------------------- relaxed sharing
def random_vit(seed=0):
    torch.manual_seed(seed)
    m = create_model("deit_tiny_patch16_224", **VIT)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


def test_relaxed_at_full_rank_reproduces_the_model_and_at_zero_is_plain_ws():
    x = torch.randn(2, 3, 32, 32)
    vit = random_vit()
    full = share(vit, share_rate=2, fusion=None, relax="lora", relax_rank=128).eval()  # >= every matrix's rank
    torch.testing.assert_close(full(x), vit(x), rtol=1e-4, atol=1e-4)
    wfws = share(vit, share_rate=2, fusion="mean", relax="lora", relax_rank=128).eval()
    torch.testing.assert_close(wfws(x), vit(x), rtol=1e-4, atol=1e-4)
    low = share(vit, share_rate=2, relax="lora", relax_rank=2)
    with torch.no_grad():
        for name, p in low.shared.relax_params.named_parameters():
            if name.endswith(("lora_b", "shift")):  # B = 0 and no bias shifts: plain WS
                p.zero_()
    torch.testing.assert_close(low.eval()(x), share(vit, share_rate=2).eval()(x), rtol=0, atol=0)
    cm = randomize_bn(create_model("convmixer_768_32_14_3", dim=16, depth=4, patch_kernel=4, num_classes=5)).eval()
    torch.testing.assert_close(share(cm, share_rate=2, scope="both", relax="lora", relax_rank=16).eval()(x), cm(x),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("relax,rank", [("lora", 4), ("scale", 0)])
def test_relaxed_from_scratch_starts_as_plain_ws_and_learns(relax, rank):
    x = torch.randn(2, 3, 32, 32)
    for name, kw in (("deit_tiny_patch16_224", VIT), ("convmixer_768_32_14_3", dict(dim=16, depth=4, patch_kernel=4))):
        torch.manual_seed(0)
        plain = create_model(name, share_rate=2, **kw)
        torch.manual_seed(0)
        relaxed = create_model(name, share_rate=2, relax=relax, relax_rank=rank, **kw)
        relaxed.load_state_dict(plain.state_dict(), strict=False)  # the same sets; deltas at their init
        torch.testing.assert_close(relaxed.eval()(x), plain.eval()(x), rtol=1e-6, atol=1e-6)
        relaxed.train()(x).square().sum().backward()
        grads = {n: p.grad for n, p in relaxed.named_parameters() if "relax_params" in n}
        assert grads and all(g is not None and g.abs().sum() > 0 for n, g in grads.items()
                             if not n.endswith("lora_a")), (name, [n for n, g in grads.items() if g.abs().sum() == 0])


def test_scale_relax_reproduces_per_channel_scaled_layers():
    vit = random_vit(1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # layers 1 and 3: their group's first member scaled per output channel
        for a, b in ((0, 1), (2, 3)):
            for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                src, dst = vit.blocks[a].get_submodule(n), vit.blocks[b].get_submodule(n)
                dst.weight.copy_(src.weight * (torch.rand(src.weight.shape[0], generator=g) + 0.5)[:, None])
    x = torch.randn(2, 3, 32, 32)
    relaxed = share(vit, share_rate=2, relax="scale").eval()
    torch.testing.assert_close(relaxed(x), vit(x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(share(vit, share_rate=2).eval()(x), vit(x), atol=1e-3)


def test_relaxed_wfws_exports_with_its_deltas_and_reloads(tmp_path):
    for fusion in ("channel_weighted_mean", "mean"):
        vit = random_vit(3)
        wfws = share(vit, share_rate=2, fusion=fusion, relax="lora", relax_rank=3, mapping="strided")
        with torch.no_grad():
            for p in wfws.shared.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        ws = fuse(wfws.eval()).eval()
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(ws(x), wfws(x), rtol=1e-5, atol=1e-5)
        assert sum(p.numel() for p in ws.parameters()) == unique_parameters(wfws)
        assert any(k.startswith("shared.relax_params.3.attn.qkv.weight_lora_a") for k in ws.state_dict())
        torch.save(ws.state_dict(), tmp_path / "ws.pth")
        again = create_model("deit_tiny_patch16_224", share_rate=2, mapping="strided", relax="lora", relax_rank=3, **VIT)
        again.load_state_dict(cu.load_checkpoint(str(tmp_path / "ws.pth"))["model_state"], strict=True)
        torch.testing.assert_close(again.eval()(x), wfws(x), rtol=1e-5, atol=1e-5)
    cm = randomize_bn(create_model("convmixer_768_32_14_3", dim=16, depth=4, patch_kernel=4, num_classes=5)).eval()
    cwf = share(cm, share_rate=2, fusion="mean", relax="scale", scope="both").eval()
    torch.testing.assert_close(fuse(cwf).eval()(x), cwf(x), rtol=1e-5, atol=1e-5)


def test_relaxed_parameter_counts_follow_the_closed_form():
    with torch.device("meta"):
        ws = create_model("ws_convmixer_768_32_14_3")
        r8 = create_model("ws_convmixer_768_32_14_3", relax="lora", relax_rank=8)
        sc = create_model("ws_convmixer_768_32_14_3", relax="scale")
        vit = create_model("ws_deit_small_patch16_224", relax="lora", relax_rank=4)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # every one of the 32 layers gets B (768 x 8) and A (8 x 768) for its pointwise matrix, and a
    # shift (768) for its pointwise bias: D (r (C_out + C_in) + C_out)
    assert n(r8) == unique_parameters(r8) == n(ws) + 32 * (8 * (768 + 768) + 768) == 11_434_216
    assert n(sc) == n(ws) + 32 * (768 + 768)  # a scale for the weight, a shift for the bias, per layer
    # DeiT-S: qkv (1152 x 384), proj (384 x 384), fc1 (1536 x 384), fc2 (384 x 1536) and their biases
    matrices = (1152 + 384) + (384 + 384) + (1536 + 384) + (384 + 1536)
    assert n(vit) == 11_413_096 + 12 * (4 * matrices + 1152 + 384 + 1536 + 384)


def test_relax_config_keys_and_a_vanilla_checkpoint_start(tmp_path):
    base = ["CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "mean", "CONVMIXER.WEIGHT_SHARE.RELAX", "lora",
            "CONVMIXER.WEIGHT_SHARE.RELAX_RANK", "32", "CONVMIXER.CHANNEL", "32"]
    vanilla = randomize_bn(build_model(load_config([TINY], ["CONVMIXER.WEIGHT_SHARE.ENABLE", "False"])))
    ck = cu.save_checkpoint(str(tmp_path / "v.pyth"), vanilla, 0)
    cfg = load_config([TINY], base + ["TRAIN.CHECKPOINT_FILE_PATH", ck, "TRAIN.CHECKPOINT_EPOCH_RESET", "True",
                                      "OUTPUT_DIR", str(tmp_path / "o")])
    model = build_model(cfg)
    said = []
    assert cu.load_train_checkpoint(cfg, model, say=said.append) == 0
    assert said[0].startswith("fitted the relaxed-sharing deltas")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), vanilla.eval()(x), rtol=1e-4, atol=1e-4)  # full rank 32
    # the evaluation paths (spin test, analyze/export/predict) fit the deltas the same way
    rebuilt, _, _ = cu.build_model_from_checkpoint(ck, cfg=cfg)
    torch.testing.assert_close(rebuilt.eval()(x), vanilla(x), rtol=1e-4, atol=1e-4)
    from spin.engine.trainer import test

    data = make_image_folder(tmp_path / "data", n_train=2, n_val=4)
    losses = [test(load_config([TINY], opts + ["TEST.CHECKPOINT_FILE_PATH", ck, "DATA.PATH_TO_DATA_DIR", data,
                                               "OUTPUT_DIR", str(tmp_path / name)]))["loss"]
              for name, opts in (("v", ["CONVMIXER.WEIGHT_SHARE.ENABLE", "False"]), ("r", base))]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    with pytest.raises(Exception, match=r"RELAX lora needs a rank: set WEIGHT_SHARE.RELAX_RANK >= 1"):
        from spin.config import check_cfg

        check_cfg(load_config([TINY], ["CONVMIXER.WEIGHT_SHARE.RELAX", "lora"]))
