"""spin export: ONNX and torch.export artifacts that store each shared tensor once, run in
onnxruntime / torch.export.load with the PyTorch logits, and serve spin predict."""
import json
import os
import sys

import pytest
import torch

from conftest import make_image_folder, randomize_bn
from spin.cli import main
from spin.config import load_config
from spin.tools.export import DeployError, export_checkpoint, onnx_session, run_onnx, stored_tensor_bytes
from spin.engine import checkpoint as cu
from spin.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny-ws.yaml")
DEIT = os.path.join(ROOT, "configs", "digits", "WS-DeiT-digits.yaml")
CONVNEXT = os.path.join(ROOT, "configs", "digits", "WS-ConvNeXt-iso-digits.yaml")


def saved(tmp_path, name, cfg_file, *opts):
    cfg = load_config([cfg_file], list(opts))
    model = randomize_bn(build_model(cfg))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return cu.save_checkpoint(str(tmp_path / f"{name}.pyth"), model, 0, cfg, extra={"classes": list("abcd")}), model


WIDE = ["CONVMIXER.CHANNEL", "512"]


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_ws_stores_each_shared_tensor_once_and_vanilla_twice_as_much(tmp_path, fmt):
    sizes = {}
    for name, opts in [("vanilla", ["CONVMIXER.WEIGHT_SHARE.ENABLE", "False"]), ("ws", []),
                       ("wfws", ["CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "channel_weighted_mean"])]:
        ck, model = saved(tmp_path, name, TINY, *WIDE, *opts)
        res = export_checkpoint(ck, fmt, str(tmp_path / f"{name}.{fmt}"), dynamic_batch=True)
        assert res["max_abs_diff"] <= 1e-4 and res["batches"] == [1, 5]
        unique = res["unique_bytes"] + res["buffer_bytes"]  # BatchNorm statistics are per layer
        assert abs(res["stored_bytes"] - unique) <= 0.02 * unique, (name, res)
        assert res["file_bytes"] - res["stored_bytes"] < 200_000  # the rest is the graph
        sizes[name] = (res["file_bytes"], unique)
    # the files keep the models' own size ratio: vanilla about twice WS at rate 2 (the pointwise sets
    # dominate: 4 x 262,656 against 2 x 262,656 parameters here), a fused WFWS the size of WS
    ratio = sizes["vanilla"][0] / sizes["ws"][0]
    assert ratio == pytest.approx(sizes["vanilla"][1] / sizes["ws"][1], rel=0.04) and ratio > 1.8
    assert abs(sizes["wfws"][0] - sizes["ws"][0]) <= 0.02 * sizes["ws"][0]


def test_artifacts_give_pytorchs_logits_independently(tmp_path):
    ck, _ = saved(tmp_path, "m", TINY, "CONVMIXER.DEPTH", "8", "CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING", "random",
                  "CONVMIXER.WEIGHT_SHARE.SEED", "5", "CONVMIXER.WEIGHT_SHARE.SCOPE", "both",
                  "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "mean")
    model, _, _ = cu.build_model_from_checkpoint(ck)
    from spin.share_transform import fuse

    ref_model = fuse(model.eval()).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = ref_model(x)
    onnx_file = export_checkpoint(ck, "onnx", str(tmp_path / "m.onnx"), dynamic_batch=True)["output"]
    torch.testing.assert_close(run_onnx(onnx_session(onnx_file), x), ref, rtol=1e-4, atol=1e-4)
    pt2 = export_checkpoint(ck, "pt2", str(tmp_path / "m.pt2"), dynamic_batch=True)["output"]
    torch.testing.assert_close(torch.export.load(pt2).module()(x), ref, rtol=1e-4, atol=1e-4)
    _, n_onnx = stored_tensor_bytes(onnx_file, "onnx")
    assert n_onnx == len(ref_model.state_dict()) - sum(k.endswith("num_batches_tracked") for k in ref_model.state_dict())


@pytest.mark.parametrize("cfg_file", [DEIT, CONVNEXT])
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_other_families_export(tmp_path, cfg_file, fmt):
    ck, model = saved(tmp_path, "m", cfg_file, "WEIGHT_SHARE.REDUCTION_FN", "mean", "WEIGHT_SHARE.RELAX", "lora",
                      "WEIGHT_SHARE.RELAX_RANK", "2")
    res = export_checkpoint(ck, fmt, str(tmp_path / f"m.{fmt}"))
    assert res["max_abs_diff"] <= 1e-4
    assert abs(res["stored_bytes"] - res["unique_bytes"] - res["buffer_bytes"]) <= 0.02 * res["unique_bytes"]


def test_predict_from_onnx_equals_the_checkpoint(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_train=2, n_val=2)
    ck, _ = saved(tmp_path, "m", TINY, "DATA.PATH_TO_DATA_DIR", data)
    img = os.path.join(data, "val", "b", "001.png")
    assert main(["predict", "--checkpoint", ck, img]) == 0
    from_pyth = capsys.readouterr().out
    assert main(["export", "--checkpoint", ck, "--format", "onnx"]) == 0
    printed = capsys.readouterr().out
    assert "max |logit difference| vs PyTorch" in printed and os.path.exists(tmp_path / "m.onnx")
    assert main(["predict", "--checkpoint", str(tmp_path / "m.onnx"), img]) == 0
    from_onnx = capsys.readouterr().out
    top = lambda text: [line.split()[1] for line in text.splitlines()[1:]]  # noqa: E731
    assert top(from_onnx) == top(from_pyth) and len(top(from_onnx)) == 4
    assert main(["export", "--checkpoint", ck, "--format", "onnx"]) == 2  # exists: no overwrite
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_export_errors(tmp_path, capsys, monkeypatch):
    ck, _ = saved(tmp_path, "m", TINY)
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pyth"), "--format", "pt2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "--checkpoint", ck, "--format", "pt2", "CONVMIXER.WEIGHT_SHARE.ENABLE", "False"]) == 2
    assert "does not match the model architecture" in capsys.readouterr().err
    assert main(["export", "--checkpoint", ck, "--format", "tflite"]) == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the deploy extra is missing
    with pytest.raises(DeployError, match=r"pip install 'spin\[deploy\]'"):
        export_checkpoint(ck, "onnx", str(tmp_path / "x.onnx"))
    assert not os.path.exists(tmp_path / "x.onnx")


def test_bench_reports_onnxruntime_beside_eager(tmp_path):
    assert main(["bench", "--preset", "tiny", "--models", "spin_ws,spin_wfws", "--onnx", "--warmup", "0",
                 "--repeats", "1", "--iters", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "tiny-cpu-onnx.json").read_text())
    assert all(r["onnx_infer_img_s"] > 0 for r in res["models"].values())
    assert "spin_ws onnxruntime/eager infer" in res["ratios"]


def test_logit_check_is_relative_to_the_logits_and_a_failure_writes_nothing(tmp_path):
    cfg = load_config([TINY], [])
    model = randomize_bn(build_model(cfg))
    with torch.no_grad():
        model.get_classifier().weight.mul_(1e5)  # logits ~1e4: float32 rounding alone is ~1e-3 there
    ck = cu.save_checkpoint(str(tmp_path / "big.pyth"), model, 0, cfg)
    res = export_checkpoint(ck, "onnx", str(tmp_path / "big.onnx"))
    assert res["logit_scale"] > 1e3 and res["max_abs_diff"] <= 1e-4 * res["logit_scale"]
    with pytest.raises(DeployError, match="logits differ from PyTorch's"):
        export_checkpoint(ck, "onnx", str(tmp_path / "strict.onnx"), tolerance=-1.0)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.pyth"]  # no temporary file left either
