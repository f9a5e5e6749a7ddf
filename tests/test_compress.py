"""spin compress end to end on tiny data: shared, distilled, fused, exported; the table's numbers
against independent measurements; a rerun resumes; bad inputs are one error before any write."""
import json
import os

import pytest
import torch

from spin.cli import main
from spin.config import load_config
from spin.engine import checkpoint as cu
from spin.engine.loop import evaluate
from spin.engine.trainer import train
from spin.data import build_dataset, build_loader
from spin.models import build_model
from spin.tools.compress import compress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny-ws.yaml")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("compress")
    data = make_image_folder(root / "data")
    cfg = load_config([TINY], ["DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", str(root / "vanilla"),
                               "WEIGHT_SHARE.ENABLE", "False", "LOG_PERIOD", "0"])
    return root, train(cfg)["checkpoint"]


def test_compress_end_to_end_then_rerun_resumes(teacher, tmp_path):
    root, ck = teacher
    out = tmp_path / "c"
    res = compress(ck, str(out), export="pt2", opts=["LOG_PERIOD", "0"], say=lambda m: None)
    assert sorted(os.listdir(out)) == ["compress.json", "compress.md", "export", "fused.pyth", "fused.safetensors",
                                       "train"]
    t, s = res["rows"]
    # the fused student has exactly the parameters of a WS model of the same plan built directly
    ws_cfg = load_config([TINY], ["WEIGHT_SHARE.SHARE_RATE", "2"])
    assert s["parameters"] == s["unique_parameters"] == sum(p.numel() for p in build_model(ws_cfg).parameters())
    assert t["parameters"] == sum(p.numel() for p in build_model(
        load_config([TINY], ["WEIGHT_SHARE.ENABLE", "False"])).parameters())
    # top-1 of each file, measured here independently
    fused, cfg, _ = cu.build_model_from_checkpoint(str(out / "fused.pyth"))
    loader = build_loader(cfg, build_dataset(cfg, "val"), False, 8)
    assert evaluate(fused, loader, torch.device("cpu"))["top1_err"] == pytest.approx(100 - s["top1"])
    vanilla, _, _ = cu.build_model_from_checkpoint(ck)
    assert evaluate(vanilla, loader, torch.device("cpu"))["loss"] == pytest.approx(t["loss"], rel=1e-5)
    train_ck = cu.load_checkpoint(res["train_checkpoint"])
    assert train_ck["distill_teacher"]["path"] == ck and res["export"]["max_abs_diff"] <= 1e-4
    assert json.loads((out / "compress.json").read_text())["rows"][1]["top1"] == s["top1"]
    assert "| student (fused WS) |" in (out / "compress.md").read_text()
    # the same command again: the training run is finished, the numbers are the same
    again = compress(ck, str(out), opts=["LOG_PERIOD", "0"], say=lambda m: None)
    assert again["train_checkpoint"] == res["train_checkpoint"]
    assert [r["top1"] for r in again["rows"]] == [t["top1"], s["top1"]]


def test_compress_suggest_or_num_sets_picks_the_plan(teacher, tmp_path):
    _, ck = teacher
    res = compress(ck, str(tmp_path / "s"), suggest=2, epochs=1,
                   opts=["LOG_PERIOD", "0", "TRAIN.MAX_ITERS_PER_EPOCH", "2"], say=lambda m: None)
    plan = json.loads((tmp_path / "s" / "analysis" / "analysis.json").read_text())["suggestions"][0]["layer_map"]
    assert res["plan"] == f"layer map {plan}" and len(set(plan)) == 2 and res["epochs"] == 1
    # a set count instead of the default rate (one set for the 4 blocks)
    one = compress(ck, str(tmp_path / "n"), num_sets=1, epochs=1,
                   opts=["LOG_PERIOD", "0", "TRAIN.MAX_ITERS_PER_EPOCH", "2"], say=lambda m: None)
    ws1 = load_config([TINY], ["WEIGHT_SHARE.NUM_SETS", "1", "WEIGHT_SHARE.SHARE_RATE", "1"])
    assert one["rows"][1]["parameters"] == sum(p.numel() for p in build_model(ws1).parameters())


def _errors(capsys):
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("spin: error:"), lines
    return lines[0]


def test_compress_bad_inputs_are_one_error_and_write_nothing(teacher, tmp_path, capsys):
    root, ck = teacher
    out = tmp_path / "never"
    ws = train(load_config([TINY], ["DATA.PATH_TO_DATA_DIR", str(root / "data"), "OUTPUT_DIR", str(tmp_path / "ws"),
                                    "SOLVER.MAX_EPOCH", "1", "TRAIN.MAX_ITERS_PER_EPOCH", "1", "LOG_PERIOD", "0"]))
    bare = tmp_path / "bare.pth"
    torch.save(cu.load_checkpoint(ck)["model_state"], bare)
    cases = [(["--checkpoint", str(tmp_path / "gone.pyth")], "does not exist"),
             (["--checkpoint", ws["checkpoint"]], "starts from a vanilla model"),
             (["--checkpoint", str(bare)], "stores no config"),
             (["--checkpoint", ck, "--suggest", "9"], "--suggest 9"),
             (["--checkpoint", ck, "--fusion", "none"], "--fusion"),
             (["--checkpoint", ck, "--share-rate", "3"], "share rate 3"),
             (["--checkpoint", ck, "DISTILL.ALPHA", "2"], "DISTILL.ALPHA"),
             (["--checkpoint", ck, "DISTILL.HIDDEN_WEIGHT", "1", "DISTILL.LAYERS", "[40]"], "out of range"),
             (["--checkpoint", ck, "--num-sets", "1", "--share-rate", "2"], "give one of them")]
    for argv, msg in cases:
        assert main(["compress", *argv, "--out", str(out)]) == 2
        assert msg in _errors(capsys), argv
    assert not out.exists()
