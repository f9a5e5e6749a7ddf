"""spin models held to timm's own model tests (timm's tests/test_models.py is not installed with its
wheel, so its checks are re-stated here on tiny models): forward, backward, default cfgs,
features_only with each feature_cls, forward_intermediates and pruning, TorchScript and torch.fx of
the vanilla models (FX backward, FX -> TorchScript). Each spin model is held to what timm holds its
counterpart to: the ConvMixer and the isotropic ConvNeXt as standard (NCHW) models, DeiT and
Mixer as timm's non-standard ones (their feature maps are tokens). Then what timm's tests do not
cover: shared models refusing TorchScript / torch.fx (and still exporting), weights from local
files, layer-wise LR decay of shared sets, per-builder pretrained cfgs and timm's scripts."""
import math
import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from timm.models.convmixer import ConvMixer
from timm.optim import create_optimizer_v2
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from conftest import randomize_bn
from spin import SharingError, share
from spin.engine.checkpoint import save_checkpoint
from spin.errors import SpinError
from spin.models.registry import HUB_KEYS
from spin.share_transform import fuse, shared_sets_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {  # spin name -> (tiny keywords, timm's classification of its counterpart)
    "convmixer_768_32": (dict(dim=16, depth=4, patch_kernel=4, kernel_size=3), "std"),
    "convmixer_768_32_14_3": (dict(dim=16, depth=4, patch_kernel=4, kernel_size=3), "std"),
    "convnext_iso_small": (dict(dim=16, depth=4, patch_size=8, kernel_size=3), "std"),
    "deit_tiny_patch16_224": (dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2), "tokens"),
    "mixer_s16_224": (dict(img_size=32, patch_size=8, embed_dim=32, num_blocks=4), "tokens"),
}
VANILLA = ["spin_" + n for n in TINY]
SHARED = ["spin_ws_convmixer_768_32_14_3", "spin_wfws_convmixer_768_32_14_3", "spin_ws_convnext_iso_small",
          "spin_wfws_convnext_iso_small", "spin_ws_deit_tiny_patch16_224", "spin_wfws_deit_tiny_patch16_224",
          "spin_ws_mixer_s16_224", "spin_wfws_mixer_s16_224"]
TRACER = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True)


def tiny(name):
    base = name.removeprefix("spin_").removeprefix("ws_").removeprefix("wfws_")
    return TINY[base]


def create(name, **kwargs):
    return timm.create_model(name, **{**tiny(name)[0], **kwargs})


def image(model, batch=1, size=32):
    """A batch at the cfg's input size when it is fixed (DeiT, Mixer), else at ``size`` (timm's tests
    shrink large inputs the same way)."""
    cfg = model.default_cfg
    return torch.randn(batch, *(cfg["input_size"] if cfg.get("fixed_input_size") else (cfg["input_size"][0], size, size)))


# ------------------------------------------------------------------ timm's test_models.py, re-stated
@pytest.mark.parametrize("name", VANILLA + SHARED)
def test_forward_and_grad_checkpointing(name):
    model = create(name).eval()
    x = image(model)
    out = model(x)
    assert out.shape == (1, 1000) and not out.isnan().any()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", VANILLA + SHARED)
def test_backward_reaches_every_parameter(name):
    model = create(name, num_classes=42).train()
    out = model(image(model, 2))
    out.mean().backward()
    assert out.shape[-1] == 42
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", VANILLA + SHARED)
def test_default_cfg_and_heads(name):
    model = create(name).eval()
    cfg, kind = model.default_cfg, tiny(name)[1]
    assert model.num_classes == 1000 and model.num_features > 0 and model.head_hidden_size > 0
    x = image(model, size=cfg["input_size"][1])  # the pool size is the cfg input size's
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    if kind == "std":  # NCHW at the cfg's pool size
        assert feats.shape[1] == model.num_features and tuple(feats.shape[2:]) == cfg["pool_size"]
    else:
        assert feats.shape[-1] == model.num_features
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == pre.shape
    if kind == "std":
        model.reset_classifier(0, "")
        assert tuple(model(x).shape[2:]) == cfg["pool_size"]
        unpooled = create(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == feats.shape
    else:
        assert create(name, num_classes=0).eval()(x).shape[-1] == model.num_features
    keys = create(name).state_dict()
    assert cfg["classifier"] + ".weight" in keys and cfg["first_conv"] + ".weight" in keys


@pytest.mark.parametrize("name,feature_cls", [(n, c) for n in VANILLA for c in ("getter", "hook", "list", "dict", "fx")
                                              if tiny(n)[1] == "std" or c == "getter"]
                         + [(n, "getter") for n in SHARED])
def test_features_only(name, feature_cls):
    model = create(name, features_only=True, feature_cls=feature_cls).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == 3  # the last three blocks, as timm's isotropic models
    x = image(model)
    outputs = model(x)
    outputs = list(outputs.values()) if isinstance(outputs, dict) else outputs
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[1] == c and o.shape[2] <= math.ceil(x.shape[2] / r) + 1 and not o.isnan().any()
    assert "num_classes" not in model.default_cfg


@pytest.mark.parametrize("name", VANILLA + SHARED)
def test_forward_intermediates(name):
    model = create(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = image(model)
    final, inters = model.forward_intermediates(x, output_fmt="NCHW")
    assert [t.shape[get_channel_dim("NCHW")] for t in inters] == info.channels()
    assert all(t.shape[get_spatial_dim("NCHW")[0]] <= math.ceil(x.shape[2] / r) + 1
               for t, r in zip(inters, info.reduction()))
    torch.testing.assert_close(final, model.forward_features(x))
    model.set_grad_checkpointing()
    torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in VANILLA + SHARED if "wfws_" not in n])
def test_pruned_model_is_rebuilt_by_its_state_dict(name):
    model, again = create(name).eval(), create(name).eval()
    assert model.prune_intermediate_layers([0, 1]) == [0, 1] and len(model.blocks) == 2
    again.prune_intermediate_layers([0, 1])
    again.load_state_dict(model.state_dict())
    x = image(model)
    for a, b in zip(model.forward_intermediates(x, indices=[0, 1])[1], again.forward_intermediates(x, indices=[0, 1])[1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", [n for n in SHARED if "wfws_" in n])
def test_wfws_refuses_pruning(name):
    model = create(name)
    x = image(model)
    with pytest.raises(SharingError, match=r"(prune_intermediate_layers would drop|was replaced).*spin.fuse"):
        model.prune_intermediate_layers([0, 1])  # spin's classes refuse here, timm's at the next forward
        model.forward_intermediates(x)
    ws = fuse(create(name)).eval()  # the advertised way
    ws.prune_intermediate_layers([0, 1])
    assert len(ws.blocks) == 2 and len(ws.forward_intermediates(x, indices=[0, 1])[1]) == 2


def _fx(model, train=False):
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=TRACER)


@pytest.mark.parametrize("name", VANILLA)
def test_torchscript_and_fx_of_vanilla_models(name):
    with timm.set_scriptable(True):
        model = create(name).eval()
    x = image(model)
    # no_grad, not inference_mode: a scripted graph run under inference_mode after other scripted
    # models in the same process can try to save inference tensors for backward (seen in one CI order)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), out)
        graph = _fx(model)
        assert torch.equal(next(iter(graph(x).values())), out)
        torch.testing.assert_close(next(iter(torch.jit.script(graph)(x).values())), out)
    train = create(name, num_classes=42).train()
    graph = _fx(train, train=True)
    next(iter(graph(image(train, 2)).values())).mean().backward()
    assert [n for n, p in graph.named_parameters() if p.grad is None] == []
    assert sum(p.numel() for p in graph.parameters()) == sum(p.numel() for p in train.parameters())


# ------------------------------------------------------------------ shared models: refused, never wrong
@pytest.mark.parametrize("name", SHARED)
def test_shared_models_refuse_torchscript_and_fx(name):
    model = create(name).eval()
    with pytest.raises(SharingError, match="TorchScript cannot compile the forward hooks.*torch.export"):
        torch.jit.script(model)
    with pytest.raises(SharingError, match="torch.fx cannot trace the forward hooks.*torch.export"):
        torch.fx.symbolic_trace(model)
    with pytest.raises(SharingError, match="torch.fx cannot trace"):
        _fx(model)
    for kind in ("hook", "fx"):
        with pytest.raises(SharingError, match=f"feature_cls='{kind}'.*without the shared sets.*'getter'"):
            create(name, features_only=True, feature_cls=kind)


def test_shared_models_export_and_compile():
    ws, wfws = create("spin_ws_convmixer_768_32_14_3").eval(), create("spin_wfws_deit_tiny_patch16_224").eval()
    x = image(ws)
    torch.testing.assert_close(torch.export.export(ws, (x,)).module()(x), ws(x))
    x = image(wfws)
    torch.testing.assert_close(torch.export.export(wfws, (x,)).module()(x), wfws(x))
    torch.testing.assert_close(torch.compile(wfws, backend="eager")(x), wfws(x))


# ------------------------------------------------------------------ timm's pretrained=True: local files
def _save(model, path):
    if path.suffix == ".pyth":
        save_checkpoint(str(path), model, 0)
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)  # timm's train.py / a bare state dict


@pytest.mark.parametrize("name", ["spin_convmixer_768_32_14_3", "spin_ws_deit_tiny_patch16_224",
                                  "spin_wfws_convnext_iso_small", "spin_mixer_s16_224"])
@pytest.mark.parametrize("suffix", [".pyth", ".pth", ".safetensors"])
def test_pretrained_loads_a_local_file(tmp_path, name, suffix):
    saved = randomize_bn(create(name, num_classes=5)).eval()
    path = tmp_path / f"weights{suffix}"
    _save(saved, path)
    model = create(name, num_classes=5, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = image(model, 2)
    torch.testing.assert_close(model(x), saved(x))
    assert model.pretrained_cfg["file"] == str(path)


def test_pretrained_adapts_head_and_input_channels_as_timm(tmp_path):
    saved = create("spin_convmixer_768_32", num_classes=5).eval()
    path = tmp_path / "w.pyth"
    _save(saved, path)
    new_head = create("spin_convmixer_768_32", num_classes=7, in_chans=1, pretrained=True,
                      pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert new_head(torch.randn(1, 1, 32, 32)).shape == (1, 7)
    torch.testing.assert_close(new_head.patch_embed.conv.weight, saved.patch_embed.conv.weight.sum(1, keepdim=True))
    forced = create("spin_convmixer_768_32", num_classes=5, pretrained=True,
                    pretrained_cfg_overlay=dict(file=str(path), num_classes=-1))  # train.py --pretrained-path
    assert not torch.equal(forced.head.fc.weight, saved.head.fc.weight)
    assert torch.equal(forced.blocks[0].pwise.weight, saved.blocks[0].pwise.weight)
    body = create("spin_convmixer_768_32", num_classes=0, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert body(torch.randn(1, 3, 32, 32)).shape == (1, 16)


def test_pretrained_converts_timm_convmixer_weights(tmp_path):
    ref = randomize_bn(ConvMixer(dim=16, depth=4, kernel_size=3, patch_size=4, num_classes=5, act_layer=nn.ReLU)).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = create("spin_convmixer_768_32", num_classes=5, pretrained=True,
                  pretrained_cfg_overlay=dict(file=str(tmp_path / "timm.pth"))).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.state_dict()["pwise_w.2"], ref.state_dict()["blocks.2.1.weight"])


def test_pretrained_errors(tmp_path):
    with pytest.raises(SpinError, match="spin_deit_tiny_patch16_224 has no hub weights; give a local file"):
        create("spin_deit_tiny_patch16_224", pretrained=True)
    _save(create("spin_deit_tiny_patch16_224"), tmp_path / "vanilla.pth")
    with pytest.raises(SpinError, match="missing keys.*shared.sets.*a vanilla file starts a WFWS model, not a WS one"):
        create("spin_ws_deit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "vanilla.pth")))


# ------------------------------------------------------------------ layer decay, cfgs, timm's scripts
def _lr_scales(model):
    opt = create_optimizer_v2(model, "sgd", lr=1.0, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("name,set_key,layer_key", [
    ("spin_ws_deit_tiny_patch16_224", "shared.sets.1.attn.qkv.weight", "blocks.3.norm1.weight"),
    ("spin_ws_convmixer_768_32_14_3", "shared.sets.1.pwise.weight", "blocks.3.dwise_blk.0.weight"),
    ("spin_ws_convnext_iso_small", "shared.sets.1.pwconv1.weight", "blocks.3.norm.weight")])
def test_layer_decay_gives_a_set_its_deepest_layers_scale(name, set_key, layer_key):
    model = create(name)
    assert shared_sets_of(model).plan.groups[1] == (2, 3)
    scales = _lr_scales(model)
    vanilla = _lr_scales(create(name.replace("_ws_", "_")))
    assert scales[set_key] == scales[layer_key] == vanilla[layer_key] > vanilla[layer_key.replace("3", "2", 1)]
    assert scales[set_key.replace("sets.1", "sets.0")] == vanilla["blocks.1." + layer_key.split(".", 2)[2]]


def test_layer_decay_of_wfws_coefficients_is_their_layers():
    weighted = share(create("spin_deit_tiny_patch16_224"), share_rate=2, fusion="scalar_weighted_mean")
    scales = _lr_scales(weighted)
    assert scales["shared.coeffs.2.attn.qkv.weight"] == scales["blocks.2.attn.qkv.weight"] < scales["blocks.3.attn.qkv.weight"]


@pytest.mark.parametrize("name,timm_name", [("deit_tiny_patch16_224", "deit_tiny_patch16_224"),
                                            ("ws_deit_base_patch16_224", "deit_base_patch16_224"),
                                            ("wfws_mixer_b16_224", "mixer_b16_224")])
def test_each_builder_has_its_own_timm_cfg(name, timm_name):
    ours, theirs = timm.get_pretrained_cfg("spin_" + name).to_dict(), timm.get_pretrained_cfg(timm_name).to_dict()
    assert {k: v for k, v in ours.items() if k not in HUB_KEYS} == {k: v for k, v in theirs.items() if k not in HUB_KEYS}
    with torch.device("meta"):
        model = timm.create_model("spin_" + name)
    assert not set(HUB_KEYS[1:]) & set(model.pretrained_cfg) and model.pretrained_cfg["architecture"] == "spin_" + name


def test_convmixer_and_convnext_cfgs():
    timm_layout = timm.get_pretrained_cfg("spin_convmixer_768_32")
    assert (timm_layout.crop_pct, timm_layout.pool_size, timm_layout.first_conv) == (0.96, (32, 32), "patch_embed.conv")
    assert timm.get_pretrained_cfg("spin_wfws_convmixer_768_32_14_3").pool_size == (16, 16)
    assert timm.get_pretrained_cfg("spin_convmixer_768_32_14_3").crop_pct == 0.875
    assert timm.get_pretrained_cfg("spin_ws_convnext_iso_base").pool_size == (14, 14)
    assert create("spin_convnext_iso_small").default_cfg["pool_size"] == (28, 28)  # patch 8: the instance's


@pytest.mark.parametrize("name", ["spin_ws_convmixer_768_32_14_3", "spin_deit_tiny_patch16_224"])
def test_the_keywords_timm_scripts_pass(tmp_path, name):
    # train.py with its defaults (None values are dropped by timm.create_model), validate.py --torchscript
    # on a vanilla model, benchmark.py's pooling, train.py --initial-checkpoint with a state dict file.
    model = create(name, num_classes=10, in_chans=3, drop_rate=0.1, drop_path_rate=0.1, drop_block_rate=None,
                   global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False, checkpoint_path=None)
    assert model.num_classes == 10
    _save(model, tmp_path / "initial.pth")
    again = create(name, num_classes=10, checkpoint_path=str(tmp_path / "initial.pth")).eval()
    x = image(again)
    torch.testing.assert_close(again(x), model.eval()(x))
    pooled = "fast" if "convmixer" in name else "avg"
    assert create(name, global_pool=pooled, num_classes=0).eval()(x).shape == (1, again.num_features)
    if "ws_" not in name:
        with timm.set_scriptable(True):
            torch.jit.script(create(name, scriptable=True).eval())


def test_bn_keywords_reach_convmixer_batchnorms():
    model = create("spin_convmixer_768_32", bn_momentum=0.01, bn_eps=1e-3)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 9 and {(m.momentum, m.eps) for m in norms} == {(0.01, 1e-3)}


def test_python_m_spin_models_runs_a_timm_script(tmp_path):
    # timm's scripts are not in its wheel; this stand-in makes the call validate.py makes.
    script = tmp_path / "validate.py"
    script.write_text(
        "import argparse, torch\nfrom timm.models import create_model\nfrom timm.utils import ParseKwargs\n"
        "p = argparse.ArgumentParser()\np.add_argument('--model')\np.add_argument('--pretrained', action='store_true')\n"
        "p.add_argument('--num-classes', type=int)\np.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)\n"
        "a = p.parse_args()\n"
        "m = create_model(a.model, pretrained=a.pretrained, num_classes=a.num_classes, in_chans=3, global_pool=None, "
        "scriptable=False, **a.model_kwargs).eval()\n"
        "print(a.model, tuple(m(torch.zeros(1, *m.default_cfg['input_size'])).shape))\n")
    weights = tmp_path / "w.pyth"
    _save(create("spin_convmixer_768_32_14_3", num_classes=3), weights)
    kwargs = [f"{k}={v}" for k, v in tiny("spin_convmixer_768_32_14_3")[0].items()]
    out = subprocess.run([sys.executable, "-m", "spin.models", str(script), "--model", "spin_convmixer_768_32_14_3",
                          "--pretrained", "--num-classes", "3", "--model-kwargs", *kwargs,
                          f"pretrained_cfg_overlay={{'file': '{weights}'}}"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("spin_convmixer_768_32_14_3 (1, 3)")
