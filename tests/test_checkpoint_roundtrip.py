"""A model saved with its cfg and rebuilt from the checkpoint gives identical logits."""
import os

import pytest
import torch

from conftest import randomize_bn
from spin.config import load_config
from spin.engine.checkpoint import (CheckpointError, build_model_from_checkpoint, load_checkpoint,
                                    load_model_weights, save_checkpoint)
from spin.models import build_model

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "tests", "tiny-ws.yaml")


@pytest.mark.parametrize("mapping,fusion", [("random", "None"), ("random", "channel_weighted_mean"),
                                            ("pyramid", "scalar_weighted_mean")])
def test_random_mapping_survives_save_and_load(tmp_path, mapping, fusion):
    cfg = load_config([TINY], ["CONVMIXER.DEPTH", "8", "CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING", mapping,
                               "CONVMIXER.WEIGHT_SHARE.SEED", "11",
                               "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", fusion])
    model = randomize_bn(build_model(cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = save_checkpoint(str(tmp_path / "ck.pyth"), model, epoch=0, cfg=cfg)
    rebuilt, cfg2, ck = build_model_from_checkpoint(path)
    assert rebuilt.shared.plan == model.shared.plan
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), model(x))
    # The seed is what makes it reproducible: another seed builds another map that does not fit.
    other = build_model(load_config([TINY], ["CONVMIXER.DEPTH", "8", "CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING",
                                              mapping, "CONVMIXER.WEIGHT_SHARE.SEED", "12",
                                              "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", fusion]))
    if mapping == "random":
        assert other.shared.plan != model.shared.plan


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pyth"))
    bad = tmp_path / "bad.pyth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_checkpoint(str(bad))
    good = tmp_path / "good.pyth"
    torch.save({"model_state": {"w": torch.ones(1000)}}, good)
    bad.write_bytes(good.read_bytes()[:300])  # a torch.save zip cut short
    with pytest.raises(CheckpointError, match="cannot read .* it is corrupt, truncated"):
        load_checkpoint(str(bad))
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"\x08\x07")
    with pytest.raises(CheckpointError, match="is an exported artifact .*give the .pyth it was exported from"):
        load_checkpoint(str(artifact))
    ws = build_model(load_config([TINY]))
    vanilla = build_model(load_config([TINY], ["CONVMIXER.WEIGHT_SHARE.ENABLE", "False"]))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(4\): pwise_b.2, pwise_b.3, pwise_w.2, pwise_w.3"):
        load_model_weights(ws, vanilla.state_dict())
    wide = build_model(load_config([TINY], ["CONVMIXER.CHANNEL", "16"]))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_model_weights(ws, wide.state_dict())


def test_resume_refuses_optimizer_state_stored_in_another_parameter_order(tmp_path):
    """Optimizer state is stored by position. A file of upstream or of an earlier spin, whose
    ConvMixer registered the pointwise sets first (pwise_w.* before blocks.*), must not resume into
    a model whose parameters come in another order; its weights still start a new schedule."""
    from spin.engine.checkpoint import load_train_checkpoint
    from spin.engine.optim import construct_optimizer

    cfg = load_config([TINY], ["OUTPUT_DIR", str(tmp_path / "run")])
    model = build_model(cfg)
    opt = construct_optimizer(model, cfg)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    path = save_checkpoint(str(tmp_path / "run" / "checkpoints" / "checkpoint_epoch_00001.pyth"), model, 0, cfg, opt)
    ck = load_checkpoint(path)
    assert ck["optimizer_params"][:2] == ["patch_embed.conv.weight", "patch_embed.conv.bias"]
    fresh = build_model(cfg)
    assert load_train_checkpoint(cfg, fresh, construct_optimizer(fresh, cfg)) == 1  # this spin's file
    del ck["optimizer_params"]  # as an earlier spin wrote it: same order, accepted
    torch.save(ck, path)
    assert load_train_checkpoint(cfg, fresh, construct_optimizer(fresh, cfg)) == 1
    first = [k for k in ck["model_state"] if k.startswith("pwise_")]  # upstream's registration order
    ck["model_state"] = {**{k: ck["model_state"][k] for k in first}, **ck["model_state"]}
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match="another order.*CHECKPOINT_EPOCH_RESET True"):
        load_train_checkpoint(cfg, fresh, construct_optimizer(fresh, cfg))
    cfg.defrost()
    cfg.TRAIN.AUTO_RESUME, cfg.TRAIN.CHECKPOINT_FILE_PATH, cfg.TRAIN.CHECKPOINT_EPOCH_RESET = False, path, True
    assert load_train_checkpoint(cfg, fresh, construct_optimizer(fresh, cfg)) == 0
    assert torch.equal(fresh.state_dict()["pwise_w.1"], model.state_dict()["pwise_w.1"])
