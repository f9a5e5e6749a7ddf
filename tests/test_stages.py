"""Per-stage sharing of hierarchical models (timm's Swin): each stage's block stack shared within
itself, checked against hand-tied timm models and hand counts; WFWS export, checkpoints, errors,
Swin-T's published architecture, and the engine (build_model, spin train, spin fuse)."""
import copy
import os

import pytest
import timm
import torch
import torch.nn as nn
from timm.models.swin_transformer import SwinTransformer
from timm.optim import param_groups_layer_decay

from spin import SharingError, build_plan, cached, share
from spin.cli import main
from spin.config import ConfigError, check_cfg, load_config
from spin.engine import checkpoint as cu
from spin.engine.trainer import train
from spin.identity import identity
from spin.models import build_model, plan_from_cfg
from spin.sharing import StagePlans
from spin.share_transform import (SharedStacks, fuse, layer_weights, shared_sets_of, shared_stacks_of, sharing_of,
                                  unique_parameters)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWIN_DIGITS = os.path.join(ROOT, "configs", "digits", "WS-Swin-digits.yaml")
TINY = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4),
            num_classes=5, drop_path_rate=0.0)
STAGES = "layers.*.blocks"


def vanilla(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = SwinTransformer(**{**TINY, **kwargs}).eval()
    with torch.no_grad():  # away from timm's init (zero biases, unit norms), so every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def block_names(model):
    return [n for n, _ in model.layers[0].blocks[0].named_parameters()]


def unique_count(model):
    """Parameters counted once per tensor object, however many modules hold it."""
    seen = {id(p): p for m in model.modules() for p in m._parameters.values() if p is not None}
    return sum(p.numel() for p in seen.values())


def hand_tied(model, plans, names):
    """ALBERT-style reference: each group's later members hold its first member's nn.Parameter objects."""
    tied = copy.deepcopy(model)
    for stage, plan in zip(tied.layers, plans):
        for members in plan.groups:
            src = stage.blocks[members[0]]
            for layer in members[1:]:
                for n in names:
                    mod, _, leaf = n.rpartition(".")
                    setattr(stage.blocks[layer].get_submodule(mod), leaf, src.get_submodule(mod)._parameters[leaf])
    return tied


def block_params(width, heads, window, mlp_ratio=4):
    """One Swin block by hand: 2 LayerNorms, the relative position bias table, qkv and proj, the MLP."""
    hidden = mlp_ratio * width
    return (4 * width + (2 * window - 1) ** 2 * heads + 3 * width * width + 3 * width + width * width + width
            + width * hidden + hidden + hidden * width + width)


def tiny_closed_form(sets_per_stage, norms=True):
    """The tiny model's parameters after sharing, by hand: vanilla minus the blocks each stage saves."""
    widths, windows = (16, 32, 64, 128), (4, 4, 4, 2)  # stage 3's 2x2 grid clamps its window to 2
    total = sum(p.numel() for p in SwinTransformer(**TINY).parameters())
    for d, h, c, w, n in zip(TINY["depths"], TINY["num_heads"], widths, windows, sets_per_stage):
        total -= (d - n) * (block_params(c, h, w) - (0 if norms else 4 * c))
    return total


# ------------------------------------------------------------------ (a) counts
@pytest.mark.parametrize("kwargs,sets", [(dict(num_sets=1), (1, 1, 1, 1)), (dict(share_rate=2), (1, 1, 2, 1))])
def test_per_stage_ws_counts_equal_a_hand_tied_timm_model_and_the_closed_form(kwargs, sets):
    model = vanilla()
    ws = share(model, blocks=STAGES, scope="all", **kwargs)
    plans, fusion = sharing_of(ws)
    assert isinstance(plans, StagePlans) and fusion is None and tuple(p.num_sets for p in plans) == sets
    assert isinstance(ws.shared, SharedStacks) and len(shared_stacks_of(ws)) == 4
    tied = hand_tied(model, plans, block_names(model))
    n = sum(p.numel() for p in ws.parameters())
    assert n == unique_parameters(ws) == unique_count(tied) == tiny_closed_form(sets)
    assert unique_count(model) == 674_251 and n == {(1, 1, 1, 1): 309_566, (1, 1, 2, 1): 359_648}[sets]
    # the default scope keeps the LayerNorms per layer (MiniViT)
    default = share(model, blocks=STAGES, **kwargs)
    assert unique_parameters(default) == tiny_closed_form(sets, norms=False)
    assert set(shared_stacks_of(default)[0].names) == set(block_names(model)) - {
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"}


# ------------------------------------------------------------------ (b) logits and gradients
def test_ws_equals_albert_style_tying_per_stage():
    model = vanilla(1)
    plans = [build_plan(2, num_sets=1), build_plan(2, num_sets=2), build_plan(4, share_rate=2, mapping="pyramid"),
             build_plan(2, num_sets=1)]
    ws = share(model, blocks=STAGES, plan=plans, scope="all")
    tied = hand_tied(model, plans, block_names(model))
    x = torch.randn(2, 3, 32, 32)
    a, b = ws(x), tied(x)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a, model(x), atol=1e-3)  # tying changed the model: the check has teeth
    a.square().sum().backward()
    b.square().sum().backward()
    # stage 2, pyramid groups (0, 3), (1, 2): set 1 gathers the gradients of blocks 1 and 2
    set1 = ws.shared[2].sets[1].get_parameter("mlp.fc1.weight")
    torch.testing.assert_close(set1.grad, tied.layers[2].blocks[1].mlp.fc1.weight.grad)
    assert "shared.2.sets.1.mlp.fc1.weight" in ws.state_dict()


# ------------------------------------------------------------------ (c) WFWS and relax per stage
@pytest.mark.parametrize("fusion", ["mean", "channel_weighted_mean"])
def test_wfws_per_stage_fuses_to_the_ws_model(fusion):
    model = vanilla(2)
    wfws = share(model, blocks=STAGES, num_sets=1, fusion=fusion, scope="all").eval()
    assert sum(p.numel() for p in wfws.parameters()) >= unique_count(model)  # all D copies stay
    ws = fuse(wfws).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ws(x), wfws(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad(), cached(wfws):  # every stack's fusions memoised, the same logits
        torch.testing.assert_close(wfws(x), ws(x), rtol=1e-5, atol=1e-5)
        assert all(s._scoped for s in shared_stacks_of(wfws))
    assert sum(p.numel() for p in ws.parameters()) == unique_parameters(wfws) == tiny_closed_form((1, 1, 1, 1))
    assert sharing_of(ws)[1] is None and [s.blocks_path for s in shared_stacks_of(ws)] == [
        f"layers.{i}.blocks" for i in range(4)]


def test_relaxed_sharing_per_stage():
    model = vanilla(3)
    x = torch.randn(2, 3, 32, 32)
    lora = share(model, blocks=STAGES, num_sets=1, relax="lora", relax_rank=2).eval()
    plain = share(model, blocks=STAGES, num_sets=1).eval()
    # deltas fitted to each stage's own layers bring the model back towards the original
    assert (lora(x) - model(x)).abs().max() < (plain(x) - model(x)).abs().max()
    assert "shared.2.relax_params.3.mlp.fc1.weight_lora_a" in lora.state_dict()
    wfws = share(model, blocks=STAGES, num_sets=1, fusion="mean", relax="scale").eval()
    ws = fuse(wfws).eval()
    torch.testing.assert_close(ws(x), wfws(x), rtol=1e-5, atol=1e-5)
    assert "shared.3.relax_params.1.attn.qkv.weight_scale" in ws.state_dict()


# ------------------------------------------------------------------ (d) checkpoints
def test_checkpoint_roundtrip_is_strict_and_holds_each_tensor_once(tmp_path):
    ws = share(vanilla(4), blocks=STAGES, share_rate=2)
    sd = ws.state_dict()
    assert not [k for k in sd if k.startswith("layers.2.blocks.") and ".mlp." in k]  # the copies left the blocks
    assert "shared.2.sets.1.attn.qkv.weight" in sd and "layers.2.blocks.3.norm1.weight" in sd
    # buffers stay per block, as in the vanilla model (and non-persistent ones out of the file)
    assert [n for n, _ in ws.named_buffers()] == [n for n, _ in vanilla().named_buffers()]
    assert not [k for k in sd if "relative_position_index" in k or "attn_mask" in k]
    path = tmp_path / "ws.pth"
    torch.save(sd, path)
    fresh = share(vanilla(5), blocks=STAGES, share_rate=2)
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), ws.eval()(x), rtol=0, atol=0)
    wfws = share(vanilla(4), blocks=STAGES, share_rate=2, fusion="scalar_weighted_mean")
    again = share(vanilla(5), blocks=STAGES, share_rate=2, fusion="scalar_weighted_mean")
    again.load_state_dict(wfws.state_dict(), strict=True)
    torch.testing.assert_close(again.eval()(x), wfws.eval()(x), rtol=0, atol=0)


def test_a_single_path_keeps_the_one_stack_layout():
    ws = share(vanilla(), blocks="layers.2.blocks", share_rate=2)
    assert shared_sets_of(ws) is ws.shared and "shared.sets.1.attn.qkv.weight" in ws.state_dict()
    assert sharing_of(ws)[0].layer_to_set == (0, 0, 1, 1)
    listed = share(vanilla(), blocks=["layers.2.blocks"], share_rate=2)  # a list: the per-stack layout
    assert "shared.0.sets.1.attn.qkv.weight" in listed.state_dict() and shared_sets_of(listed) is listed.shared[0]


# ------------------------------------------------------------------ (e) Swin-T
def test_swin_t_stage_wise_sharing_count():
    with torch.device("meta"):
        model = timm.create_model("swin_tiny_patch4_window7_224")
        all_ws = share(model, blocks=STAGES, num_sets=1, scope="all")
        default = share(model, blocks=STAGES, num_sets=1)
    vanilla_count = sum(p.numel() for p in model.parameters())
    assert vanilla_count == 28_288_354
    per_block = [sum(p.numel() for p in stage.blocks[0].parameters()) for stage in model.layers]
    by_hand = vanilla_count - sum((len(s.blocks) - 1) * n for s, n in zip(model.layers, per_block))
    assert per_block == [block_params(96, 3, 7), block_params(192, 6, 7), block_params(384, 12, 7),
                         block_params(768, 24, 7)]
    assert unique_parameters(all_ws) == by_hand == 11_755_741
    norms = sum((len(s.blocks) - 1) * 4 * c for s, c in zip(model.layers, (96, 192, 384, 768)))
    assert unique_parameters(default) == by_hand + norms == 11_767_645
    cfg = load_config([], ["MODEL.MODEL_NAME", "SwinTransformer", "WEIGHT_SHARE.ENABLE", "True",
                           "WEIGHT_SHARE.NUM_SETS", "1"])
    with torch.device("meta"):
        assert unique_parameters(build_model(cfg)) == 11_767_645
        assert unique_parameters(build_model(load_config([], ["MODEL.MODEL_NAME", "Swin"]))) == 28_288_354


# ------------------------------------------------------------------ (f) errors
def test_per_stack_errors():
    model = vanilla()
    with pytest.raises(SharingError, match=r"plan= has 2 plans, but blocks names 4 stacks \(layers.0.blocks"):
        share(model, blocks=STAGES, plan=[build_plan(2, num_sets=1)] * 2)
    with pytest.raises(SharingError, match="the plan for layers.2.blocks is for depth 2 but layers.2.blocks has 4"):
        share(model, blocks=STAGES, plan=[build_plan(2, num_sets=1)] * 4)
    with pytest.raises(SharingError, match="plan= is one SharingPlan, but blocks names 4 stacks"):
        share(model, blocks=STAGES, plan=build_plan(2, num_sets=1))
    with pytest.raises(SharingError, match=r"blocks='stages.\*.blocks' matches no nn.Sequential.*candidates: layers"):
        share(model, blocks="stages.*.blocks", num_sets=1)
    with pytest.raises(SharingError, match=r"stack layers.0.blocks \(2 blocks\): share rate 4 exceeds the depth 2"):
        share(model, blocks=STAGES, share_rate=4)
    with pytest.raises(SharingError, match="names layers.0 and layers.0.blocks inside it"):
        share(model, blocks=["layers.0", "layers.0.blocks"], num_sets=1)
    two = nn.Module()
    two.a = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    two.b = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1))
    with pytest.raises(SharingError, match=r"names stacks of different block types \(a: Linear, b: Conv2d\)"):
        share(two, blocks="*", num_sets=1)
    mixed = nn.Module()
    mixed.a = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(SharingError, match="a holds blocks of different types"):
        share(mixed, blocks=["a"], num_sets=1)
    ws = share(model, blocks=STAGES, num_sets=1)
    with pytest.raises(SharingError, match="already shared"):
        share(ws, blocks=STAGES, num_sets=1)
    with pytest.raises(SharingError, match="shares 4 block stacks.*shared_stacks_of"):
        shared_sets_of(ws)
    with pytest.raises(SharingError, match="layer_weights compares the layers of one block stack"):
        layer_weights(ws)
    assert shared_stacks_of(model) == [] and sharing_of(model) == (None, None)


# ------------------------------------------------------------------ timm's contract on a staged model
def test_timm_contract_of_a_staged_shared_swin():
    wfws = share(vanilla(6), blocks=STAGES, share_rate=2, fusion="mean").eval()
    x = torch.randn(1, 3, 32, 32)
    out = wfws(x)
    wfws.set_grad_checkpointing()
    torch.testing.assert_close(wfws(x), out, rtol=1e-5, atol=1e-6)
    _, inter = wfws.forward_intermediates(x)
    assert [t.shape[1] for t in inter] == [16, 32, 64, 128]
    # layer decay: each shared tensor in exactly one group, set g of stage 2 at its deepest member's layer
    ws = share(vanilla(), blocks=STAGES, share_rate=2)
    groups = param_groups_layer_decay(ws, layer_decay=0.7)
    assert sum(len(g["params"]) for g in groups) == len(list(ws.parameters()))
    assert (r"^shared\.2\.sets\.1\.", ("2", "3")) in ws.group_matcher()["blocks"]
    with pytest.raises(SharingError, match="TorchScript"):
        torch.jit.script(wfws)
    wfws.prune_intermediate_layers(indices=[2])  # timm's Swin drops stage 3, whose fused sets it reads
    with pytest.raises(SharingError, match="layers.3.blocks of this WFWS model was replaced or dropped"):
        wfws(x)


# ------------------------------------------------------------------ (g) the engine
def tiny_opts(tmp_path, name, *opts):
    """A tiny Swin (dim 16, stages [2, 2], heads [1, 2], 4x4 patches, 4x4 windows) on 16x16 digits, one set per
    stage (the config's NUM_SETS 1), a few iterations."""
    return ["DATA.PATH_TO_DATA_DIR", str(tmp_path / "digits"), "OUTPUT_DIR", str(tmp_path / name),
            "DATA.TRAIN_CROP_SIZE", "16", "DATA.TEST_CROP_SIZE", "16", "SWIN.EMBED_DIM", "16", "SWIN.DEPTHS", "[2, 2]",
            "SWIN.NUM_HEADS", "[1, 2]", "SOLVER.MAX_EPOCH", "1", "TRAIN.MAX_ITERS_PER_EPOCH", "2",
            "TENSORBOARD.ENABLE", "False", "LOG_PERIOD", "0", *opts]


def tiny_cfg(tmp_path, name, *opts):
    return load_config([SWIN_DIGITS], tiny_opts(tmp_path, name, *opts))


def test_build_model_identity_and_check_per_stage(tmp_path):
    cfg = tiny_cfg(tmp_path, "x", "SWIN.DEPTHS", "[2, 4]", "WEIGHT_SHARE.NUM_SETS", "0", "WEIGHT_SHARE.SHARE_RATE", "2")
    plans, fusion = sharing_of(build_model(cfg))
    assert isinstance(plans, StagePlans) and plans.layer_to_set == ((0, 0), (0, 0, 1, 1)) and fusion is None
    assert plans == plan_from_cfg(cfg)
    model_part = identity(cfg)["model"]
    assert model_part["WEIGHT_SHARE layer->set map"] == [[0, 0], [0, 0, 1, 1]]
    assert model_part["WEIGHT_SHARE scope"] == "attn+rpb+mlp" and model_part["DATA.TRAIN_CROP_SIZE"] == 16
    for opts, needle in [(("WEIGHT_SHARE.NUM_SETS", "3"), r"WEIGHT_SHARE \(stage 0, 2 blocks\): number of sets must be "
                                                          r"in 1..2"),
                         (("WEIGHT_SHARE.SHARING_MAPPING", "custom", "WEIGHT_SHARE.LAYER_MAP", "[0, 0]"),
                          "LAYER_MAP describe one stack"),
                         (("SWIN.NUM_HEADS", "[1, 2, 4]"), "has 3 entries but SWIN.DEPTHS"),
                         (("SWIN.NUM_HEADS", "[3, 2]"), "stage 0 width 16, not divisible by its SWIN.NUM_HEADS "
                                                        "entry 3"),
                         (("DATA.TRAIN_CROP_SIZE", "18", "DATA.TEST_CROP_SIZE", "18"), "not a multiple of SWIN.PATCH"),
                         (("SWIN.DEPTHS", "[2, 0]"), "SWIN.DEPTHS must list")]:
        with pytest.raises(ConfigError, match=needle):
            check_cfg(tiny_cfg(tmp_path, "y", *opts))


def test_spin_train_ws_and_wfws_per_stage_then_spin_fuse(tmp_path):
    ws = train(tiny_cfg(tmp_path, "ws"))
    fresh = build_model(tiny_cfg(tmp_path, "ws"))
    fresh.load_state_dict(cu.load_checkpoint(ws["checkpoint"])["model_state"], strict=True)
    assert ws["unique_parameters"] == unique_parameters(fresh) == sum(p.numel() for p in fresh.parameters())
    opts = tiny_opts(tmp_path, "wfws", "WEIGHT_SHARE.REDUCTION_FN", "channel_weighted_mean")
    wfws = train(load_config([SWIN_DIGITS], opts))
    assert wfws["unique_parameters"] == ws["unique_parameters"] < wfws["parameters"]
    out = str(tmp_path / "fused.pyth")
    main(["fuse", "--cfg", SWIN_DIGITS, "--output", out, *opts, "TRAIN.CHECKPOINT_FILE_PATH", wfws["checkpoint"]])
    exported, _, _ = cu.build_model_from_checkpoint(out)  # from its stored WS config, strictly
    trained = build_model(load_config([SWIN_DIGITS], opts))
    trained.load_state_dict(cu.load_checkpoint(wfws["checkpoint"])["model_state"], strict=True)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(exported.eval()(x), trained.eval()(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in exported.parameters()) == ws["unique_parameters"]
