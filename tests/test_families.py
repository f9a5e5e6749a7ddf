"""The new families through the engine: configs, digits training, WFWS from a saved vanilla
checkpoint and its export, DeiT's optimizer rules, EMA, stochastic depth, pretrained file formats."""
import argparse
import os

import pytest
import torch

from spin.cli import main
from spin.config import load_config
from spin.engine import checkpoint as cu
from spin.engine.optim import construct_optimizer
from spin.engine.trainer import train
from spin.tools.fuse import fuse_checkpoint
from spin.models import build_model
from spin.share_transform import unique_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
DEIT_DIGITS = os.path.join(CONFIGS, "digits", "WS-DeiT-digits.yaml")
CONVNEXT_DIGITS = os.path.join(CONFIGS, "digits", "WS-ConvNeXt-iso-digits.yaml")


@pytest.mark.parametrize("name,params,unique", [
    ("DeiT-S.yaml", 22_050_664, 22_050_664), ("WS-DeiT-S.yaml", 11_413_096, 11_413_096),
    ("WFWS-DeiT-S.yaml", 22_050_664, 11_413_096), ("ConvNeXt-iso-S.yaml", 22_308_712, 22_308_712),
    ("WS-ConvNeXt-iso-S.yaml", 11_501_800, 11_501_800)])
def test_published_family_configs(name, params, unique):
    cfg = load_config([os.path.join(CONFIGS, name)])
    with torch.device("meta"):
        m = build_model(cfg)
    assert sum(p.numel() for p in m.parameters()) == params and unique_parameters(m) == unique
    assert cfg.SOLVER.WEIGHT_DECAY == 0.05 and cfg.SOLVER.ZERO_WD_1D_PARAM and cfg.MODEL.DROP_PATH_RATE == 0.1


def test_stats_prints_the_published_counts(capsys):
    assert main(["stats", "--cfg", os.path.join(CONFIGS, "WS-DeiT-S.yaml"), "--cfg",
                 os.path.join(CONFIGS, "WS-ConvNeXt-iso-S.yaml"), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| WS-DeiT-S.yaml | DeiT |" in out and "| 11,413,096 | 11,413,096 | 4.60 |" in out
    assert "| WS-ConvNeXt-iso-S.yaml | ConvNeXtIsotropic |" in out and "| 11,501,800 | 11,501,800 | 4.29 |" in out


def test_deit_optimizer_rules_and_drop_path():
    cfg = load_config([DEIT_DIGITS], ["MODEL.DROP_PATH_RATE", "0.2"])
    model = build_model(cfg)
    decay = {id(p): g["weight_decay"] for g in construct_optimizer(model, cfg).param_groups for p in g["params"]}
    assert decay[id(model.pos_embed)] == decay[id(model.cls_token)] == 0.0
    assert decay[id(model.blocks[0].norm1.weight)] == decay[id(model.shared.sets[0].attn.qkv.bias)] == 0.0
    assert decay[id(model.shared.sets[0].attn.qkv.weight)] == decay[id(model.head.weight)] == 0.05
    assert len(decay) == sum(1 for _ in model.parameters())
    rates = [b.drop_path1.drop_prob for b in model.blocks[1:]]  # block 0 has rate 0 (Identity)
    assert rates == pytest.approx([0.2 * i / 5 for i in range(1, 6)])
    cm = build_model(load_config([os.path.join(CONFIGS, "tests", "tiny-ws.yaml")], ["MODEL.DROP_PATH_RATE", "0.3"]))
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in cm.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_convnext_iso_trains_on_digits(tmp_path):
    cfg = load_config([CONVNEXT_DIGITS], ["DATA.PATH_TO_DATA_DIR", str(tmp_path / "digits"), "OUTPUT_DIR",
                                          str(tmp_path / "out"), "SOLVER.MAX_EPOCH", "4", "TENSORBOARD.ENABLE", "False"])
    res = train(cfg)
    assert res["val"]["samples"] == 360 and 100 - res["val"]["top1_err"] >= 80.0  # chance is 10%


def test_wfws_deit_from_a_saved_vanilla_trains_and_exports(tmp_path):
    data = str(tmp_path / "digits")
    common = ["DATA.PATH_TO_DATA_DIR", data, "TENSORBOARD.ENABLE", "False", "SOLVER.MAX_EPOCH", "1"]
    van = train(load_config([DEIT_DIGITS], common + ["OUTPUT_DIR", str(tmp_path / "vanilla"),
                                                     "WEIGHT_SHARE.ENABLE", "False"]))
    assert unique_parameters(build_model(load_config([DEIT_DIGITS], ["WEIGHT_SHARE.ENABLE", "False"]))) \
        == van["parameters"]
    wfws_opts = common + ["OUTPUT_DIR", str(tmp_path / "wfws"), "WEIGHT_SHARE.REDUCTION_FN", "channel_weighted_mean",
                          "TRAIN.CHECKPOINT_FILE_PATH", van["checkpoint"], "TRAIN.CHECKPOINT_EPOCH_RESET", "True",
                          "MODEL_EMA.ENABLE", "True", "MODEL_EMA.DECAY", "0.9"]
    cfg = load_config([DEIT_DIGITS], wfws_opts)
    res = train(cfg)
    # channel-weighted coefficients: per layer C_out of qkv (3 x 96), proj (96), fc1 (2 x 96), fc2 (96)
    assert res["start_epoch"] == 0 and res["parameters"] == van["parameters"] + 6 * (288 + 96 + 192 + 96)
    ck = cu.load_checkpoint(res["checkpoint"])
    assert "model_ema_state" in ck and any(k.startswith("shared.coeffs.5.attn.qkv") for k in ck["model_state"])
    out = fuse_checkpoint(cfg, res["checkpoint"], str(tmp_path / "fused.pyth"), safetensors=True)
    assert out["params_after"] == res["unique_parameters"]
    ws_cfg = load_config([DEIT_DIGITS], ["WEIGHT_SHARE.REDUCTION_FN", "None"])
    ws = build_model(ws_cfg)
    assert sum(p.numel() for p in ws.parameters()) == res["unique_parameters"]
    ws.load_state_dict(cu.load_checkpoint(out["output"])["model_state"], strict=True)
    wfws = build_model(cfg)
    wfws.load_state_dict(ck["model_state"], strict=True)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(ws.eval()(x), wfws.eval()(x), rtol=1e-5, atol=1e-5)
    again, _, _ = cu.build_model_from_checkpoint(out["safetensors"])  # cfg from the metadata
    torch.testing.assert_close(again.eval()(x), wfws(x), rtol=1e-5, atol=1e-5)


def test_checkpoint_formats(tmp_path):
    sd = {"w": torch.ones(2)}
    for name, obj in [("official.pth", {"model": sd, "epoch": 3}), ("lightning.ckpt", {"state_dict": sd}),
                      ("bare.pth", sd), ("spin.pyth", {"model_state": sd, "epoch": 0})]:
        torch.save(obj, tmp_path / name)
        assert torch.equal(cu.load_checkpoint(str(tmp_path / name))["model_state"]["w"], sd["w"]), name
    torch.save({"model": sd, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    with pytest.raises(cu.CheckpointError) as e:
        cu.load_checkpoint(str(tmp_path / "pickled.pth"))
    assert "argparse.Namespace" in str(e.value) and "weights_only=False" not in str(e.value)
    torch.save({"optimizer": {}, "args": 1}, tmp_path / "noweights.pth")
    with pytest.raises(cu.CheckpointError, match="has no model weights"):
        cu.load_checkpoint(str(tmp_path / "noweights.pth"))
