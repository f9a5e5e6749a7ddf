"""One home for each idea: every family answers the same way to the same sharing arguments, a
family is described once (README's example family is one file that spin train runs), and
MODEL.MODEL_NAME may name a registry builder."""
import copy
import dataclasses
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import make_image_folder, randomize_bn
from spin import SharingError
from spin.config import ConfigError, get_cfg, load_config
from spin.models import FAMILIES, build_model, create_model, register_family
from spin.share_transform import fuse, share, shared_sets_of, sharing_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {  # builder, keywords, the named part that holds each block's norms
    "convmixer": ("convmixer_768_32_14_3", dict(dim=16, depth=4, patch_kernel=4), "norm"),
    "vit": ("deit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2), "norm"),
    "convnext": ("convnext_iso_small", dict(dim=16, depth=4, patch_size=8, kernel_size=3), "norm"),
    "mixer": ("mixer_s16_224", dict(img_size=32, patch_size=8, embed_dim=32, num_blocks=4), "norm"),
}


def vanilla(family):
    torch.manual_seed(0)
    name, kw, _ = TINY[family]
    return randomize_bn(create_model(name, num_classes=3, **kw)).eval()


@pytest.mark.parametrize("family", sorted(TINY))
def test_every_family_answers_the_same_way(family):
    assert set(FAMILIES) >= set(TINY)
    m = vanilla(family)
    x = torch.rand(2, 3, 32, 32)
    assert sharing_of(m) == (None, None)  # a vanilla model of any family
    # inplace=False leaves the input untouched; inplace=True transforms it and returns it
    before = copy.deepcopy(m.state_dict())
    ws = share(m, share_rate=2)
    assert ws is not m and m.state_dict().keys() == before.keys() and shared_sets_of(m) is None
    same = copy.deepcopy(m)
    assert share(same, share_rate=2, inplace=True) is same and shared_sets_of(same) is not None
    # norm sharing: affine shared, statistics per layer; accepted with a fusion too, fuse keeps logits
    norm = TINY[family][2]
    wfws = share(m, share_rate=2, scope=f"{norm}", fusion="mean").eval()
    torch.testing.assert_close(fuse(wfws).eval()(x), wfws(x), rtol=1e-5, atol=1e-5)
    buffers = [n for n, _ in m.named_buffers() if n.startswith("blocks.")]
    ws_norm = share(m, share_rate=2, scope=norm)
    assert [n for n, _ in ws_norm.named_buffers() if n.startswith("blocks.")] == buffers
    # glob scopes: a pattern on block-relative names, for every family
    first = next(n for n, _ in m.blocks[0].named_parameters())
    glob = share(m, share_rate=2, scope=first.rsplit(".", 1)[0] + ".*")
    assert first in shared_sets_of(glob).names
    with pytest.raises(SharingError, match="already shared"):
        share(ws, share_rate=2)


def test_norm_statistics_stay_per_layer_in_a_shared_convmixer():
    m = vanilla("convmixer")
    ws = share(m, share_rate=2, scope="norm").train()
    ws(torch.rand(4, 3, 32, 32) * 3)  # layers 0 and 1 share their BN affine, not their statistics
    assert not torch.equal(ws.blocks[0].bn2.running_mean, ws.blocks[1].bn2.running_mean)


def test_model_name_may_name_a_registry_builder():
    cfg = load_config([], ["MODEL.MODEL_NAME", "deit_tiny_patch16_224", "VIT.DEPTH", "2", "DATA.TRAIN_CROP_SIZE", "32",
                           "DATA.TEST_CROP_SIZE", "32", "VIT.PATCH_SIZE", "8", "MODEL.NUM_CLASSES", "3"])
    m = build_model(cfg)
    # the section's keys are the architecture (what check, identity and spin stats read); the
    # builder gives its own pretrained cfg
    assert m.embed_dim == cfg.VIT.EMBED_DIM == 384 and len(m.blocks) == 2
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    cfg.defrost()
    cfg.MODEL.MODEL_NAME = "convmixer_768_32"  # the original block's builder: the section still decides
    cfg.CONVMIXER.CHANNEL, cfg.CONVMIXER.DEPTH = 16, 2
    m = build_model(cfg)
    assert m.dim == 16 and len(m.blocks) == 2 and m.blocks[0].pointwise_residual is cfg.CONVMIXER.POINTWISE_RESIDUAL
    with pytest.raises(ConfigError, match="shared variant.*name its vanilla builder deit_tiny_patch16_224"):
        build_model(load_config([], ["MODEL.MODEL_NAME", "ws_deit_tiny_patch16_224"]))
    with pytest.raises(ConfigError, match="unknown MODEL.MODEL_NAME 'deit_huge'"):
        build_model(load_config([], ["MODEL.MODEL_NAME", "deit_huge"]))


def test_family_sections_come_from_the_families():
    cfg = get_cfg()
    for fam in FAMILIES.values():
        assert dict(cfg[fam.section]) == fam.defaults  # the schema holds what the family file declares
    vit = FAMILIES["vit"]
    for clash in (dict(name="vit2", section="VIT"), dict(name="vit2", section="VIT2", model_names=("DeiT",)),
                  dict(name="vit", section="VIT2", model_names=("X",))):
        with pytest.raises(ValueError, match="already taken"):
            register_family(dataclasses.replace(vit, **{"model_names": ("VIT2",), **clash}))
    with pytest.raises(SharingError, match="shares nothing"):
        create_model("deit_tiny_patch16_224", relax="lora", relax_rank=2)


def test_readme_example_family_is_one_file_that_spin_trains(tmp_path):
    readme = open(os.path.join(ROOT, "README.md")).read()
    code = re.search(r"<!-- example-family -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 35
    (tmp_path / "tinymlp.py").write_text(code)
    data = make_image_folder(tmp_path / "data", n_train=8, n_val=4)
    cfg = tmp_path / "tinymlp.yaml"
    cfg.write_text("MODEL: {MODEL_NAME: TinyMLP, NUM_CLASSES: 4, DROPOUT_RATE: 0.0}\n"
                   "DATA: {TRAIN_CROP_SIZE: 32, TEST_CROP_SIZE: 32}\nTRAIN: {BATCH_SIZE: 8}\n"
                   "WEIGHT_SHARE: {ENABLE: True, SHARE_RATE: 2}\n"
                   "SOLVER: {BASE_LR: 0.01, OPTIMIZING_METHOD: adamw, MAX_EPOCH: 1}\nDATA_LOADER: {NUM_WORKERS: 0}\n")
    script = f"""
import sys, json
sys.path.insert(0, {str(tmp_path)!r})
import tinymlp
from spin.cli import main
from spin.sharing import SCOPES
assert SCOPES["tinymlp"] == {{"fc": ("fc.*",), "norm": ("norm.*",)}}
rc = main(["train", "--cfg", {str(cfg)!r}, "TINYMLP.DEPTH", "4", "WEIGHT_SHARE.REDUCTION_FN", "scalar_weighted_mean",
           "DATA.PATH_TO_DATA_DIR", {data!r}, "OUTPUT_DIR", {str(tmp_path / "out")!r}])
assert rc == 0, rc
rc = main(["stats", "--cfg", {str(cfg)!r}])
assert rc == 0, rc
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:] + p.stdout[-1000:]
    assert "dim 64, depth 4" in p.stdout  # its arch string in spin stats
    ck = torch.load(tmp_path / "out" / "checkpoints" / "checkpoint_epoch_00001.pyth", weights_only=True)
    assert {"shared.coeffs.0.fc.weight", "blocks.3.fc.weight"} <= set(ck["model_state"])  # WFWS: all D kept
    assert ck["identity"]["model"]["family"] == "tinymlp"
