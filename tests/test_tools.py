"""spin fuse / test / stats / predict against independent expectations."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import make_image_folder, randomize_bn
from spin.share_transform import unique_parameters
from spin.cli import main
from spin.config import load_config
from spin.engine import checkpoint as cu
from spin.engine.trainer import train
from spin.tools.fuse import fuse_checkpoint, load_safetensors_model
from spin.fusion import FUSIONS
from spin.models import build_model
from spin.paths import OutputError
from spin.tools.stats import describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny-ws.yaml")


def wfws_checkpoint(tmp_path, fusion, mapping="sequential", dim=32, with_optimizer=True):
    cfg = load_config([TINY], ["CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", fusion, "CONVMIXER.CHANNEL", str(dim),
                               "CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING", mapping])
    model = randomize_bn(build_model(cfg))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    opt = torch.optim.AdamW(model.parameters()) if with_optimizer else None
    if opt is not None:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        opt.step()
    path = cu.save_checkpoint(str(tmp_path / f"wfws-{fusion}-{mapping}.pyth"), model, 9, cfg, opt)
    return cfg, model.eval(), path


@pytest.mark.parametrize("fusion,mapping", [(f, "sequential") for f in FUSIONS] + [("mean", "strided"),
                                                                                   ("channel_weighted_mean", "pyramid")])
def test_export_equals_wfws_and_reloads_with_ws_config(tmp_path, fusion, mapping):
    cfg, wfws, path = wfws_checkpoint(tmp_path, fusion, mapping)
    out = fuse_checkpoint(cfg, path, str(tmp_path / "fused.pyth"), safetensors=True)
    assert out["params_after"] == unique_parameters(wfws) < out["params_before"]
    ck = cu.load_checkpoint(out["output"])
    assert "optimizer_state" not in ck and not any(k.startswith("reduction_w") for k in ck["model_state"])
    assert sum(k.startswith("pwise_w.") for k in ck["model_state"]) == 2
    # Reload with the WS config: the same file without fusion, strictly.
    ws_cfg = load_config([TINY], ["CONVMIXER.CHANNEL", "32", "CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING", mapping])
    ws = build_model(ws_cfg)
    ws.load_state_dict(ck["model_state"], strict=True)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(ws.eval()(x), wfws(x), rtol=1e-5, atol=1e-5)
    # ... and from its own stored cfg, whose fusion is off.
    rebuilt, stored, _ = cu.build_model_from_checkpoint(out["output"])
    assert stored.WEIGHT_SHARE.REDUCTION_FN is None
    torch.testing.assert_close(rebuilt.eval()(x), wfws(x), rtol=1e-5, atol=1e-5)
    st_model, _ = load_safetensors_model(out["safetensors"])
    torch.testing.assert_close(st_model.eval()(x), wfws(x), rtol=1e-5, atol=1e-5)


def test_exported_file_holds_each_shared_tensor_once(tmp_path):
    cfg, wfws, path = wfws_checkpoint(tmp_path, "mean", dim=768)
    out = fuse_checkpoint(cfg, path, str(tmp_path / "fused.pyth"), safetensors=True)
    ws = build_model(load_config([TINY], ["CONVMIXER.CHANNEL", "768"]))
    unique_bytes = sum(t.numel() * t.element_size() for t in ws.state_dict().values())
    assert out["state_bytes_after"] == unique_bytes
    assert abs(out["file_bytes_after"] - unique_bytes) <= 0.01 * unique_bytes
    assert abs(out["safetensors_bytes"] - unique_bytes) <= 0.01 * unique_bytes
    assert out["file_bytes_before"] > 2.5 * out["file_bytes_after"]  # 4 sets + Adam moments before


def test_fuse_refuses_to_overwrite_and_needs_wfws(tmp_path):
    cfg, _, path = wfws_checkpoint(tmp_path, "mean", with_optimizer=False)
    target = tmp_path / "fused.pyth"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        fuse_checkpoint(cfg, path, str(target))
    with pytest.raises(OutputError, match="is the input .*writing it would destroy the input"):
        fuse_checkpoint(cfg, path, path, overwrite=True)
    assert target.read_bytes() == b"precious"
    fuse_checkpoint(cfg, path, str(target), overwrite=True)
    assert cu.load_checkpoint(str(target))["model_state"]
    ws_cfg = load_config([TINY])
    with pytest.raises(cu.CheckpointError, match="needs the WFWS config"):
        fuse_checkpoint(ws_cfg, path, str(tmp_path / "x.pyth"))


def test_fuse_cli_and_tools_script(tmp_path, capsys):
    _, _, path = wfws_checkpoint(tmp_path, "scalar_weighted_mean", with_optimizer=False)
    args = ["--cfg", TINY, "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "scalar_weighted_mean",
            "TRAIN.CHECKPOINT_FILE_PATH", path, "OUTPUT_DIR", str(tmp_path / "out")]
    assert main(["fuse", *args]) == 0
    printed = capsys.readouterr().out
    # 4 classes: vanilla 1632 + 4 * 1504 + 132 = 7,780, + 4 scalar coefficients; fused: 2 sets fewer
    assert "7,784 parameters" in printed.splitlines()[0] and "5,668 parameters" in printed.splitlines()[1]
    fused = str(tmp_path / "out" / "wfws-scalar_weighted_mean-sequential-fused.pyth")
    assert printed.splitlines()[-1] == ("it stores its WS config (WEIGHT_SHARE.REDUCTION_FN None): "
                                        f"spin test TEST.CHECKPOINT_FILE_PATH {fused}")
    assert os.path.exists(tmp_path / "out" / "wfws-scalar_weighted_mean-sequential-fused.pyth")
    assert main(["fuse", *args]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    p = subprocess.run([sys.executable, "tools/fuse_weights.py", *args, "--overwrite"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_stats_against_hand_counts():
    cfg = load_config([TINY], ["MODEL.NUM_CLASSES", "10"])  # C/D/P/K 32/4/4/3, 32x32 inputs
    row = describe(cfg)
    # stem 3*32*16+32 + BN 64 = 1632; block dw 320 + BN 64 + pw 1056 + BN 64 = 1504; head 330
    vanilla = 1632 + 4 * 1504 + 330
    assert row["params"] == row["unique params"] == vanilla - 2 * 1056 == 5866
    # 8x8 tokens: stem 32*3*16*64, dw 4*32*9*64, pw 4*32*32*64, head 32*10
    macs = 32 * 3 * 16 * 64 + 4 * 32 * 9 * 64 + 4 * 32 * 32 * 64 + 320
    assert row["GMACs"] * 1e9 == pytest.approx(macs)
    assert (row["C/D/P/K"], row["sharing"], row["fusion"], row["rate"], row["mapping"]) == \
        ("32/4/4/3", "yes", "no", "2", "sequential")
    assert row["fp32 MB"] == pytest.approx(5866 * 4 / 1e6)
    wf = describe(load_config([TINY], ["MODEL.NUM_CLASSES", "10", "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN",
                                       "channel_weighted_mean"]))
    assert wf["params"] == vanilla + 4 * 32 and wf["unique params"] == 5866 and wf["fusion"] == "channel_weighted_mean"


def test_stats_cli_table(capsys, tmp_path):
    assert main(["stats", "--cfg", TINY, "--markdown", "--sweep", "CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "1,2,4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| name | C/D/P/K | sharing") and len(lines) == 5
    # 4 classes: vanilla 7,780; rate 2 drops 2 pointwise sets of 1,056, rate 4 drops 3
    assert [l.split("|")[9].strip() for l in lines[2:]] == ["7,780", "5,668", "4,612"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    data = make_image_folder(tmp / "data")
    cfg = load_config([TINY], ["DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", str(tmp / "out"),
                               "SOLVER.MAX_EPOCH", "4"])
    res = train(cfg)
    return data, res["checkpoint"]


def test_predict_names_classes(trained, capsys):
    data, ck = trained
    img = os.path.join(data, "val", "c", "000.png")
    assert main(["predict", "--checkpoint", ck, img]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == img and out[1].split()[:2] == ["1.", "c"] and len(out) == 5  # 4 classes
    assert cu.load_checkpoint(ck)["classes"] == ["a", "b", "c", "d"]


def test_spin_test_reports_and_infers_cfg(trained, capsys):
    data, ck = trained
    assert main(["test", "TEST.CHECKPOINT_FILE_PATH", ck, "OUTPUT_DIR", os.path.dirname(os.path.dirname(ck))]) == 0
    out = capsys.readouterr().out
    stats = json.loads(next(l for l in out.splitlines() if "json_stats" in l).split("json_stats: ")[1])
    assert stats["_type"] == "test_final" and stats["samples"] == 32 and stats["top1_err"] <= 25
    assert "test: top-1 " in out


def test_mismatched_checkpoint_is_a_clear_error(trained, capsys):
    _, ck = trained
    rc = main(["test", "--cfg", TINY, "CONVMIXER.WEIGHT_SHARE.ENABLE", "False", "TEST.CHECKPOINT_FILE_PATH", ck,
               "DATA.PATH_TO_DATA_DIR", trained[0]])
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not match the model architecture" in err and "missing keys (4): pwise_b.2" in err
