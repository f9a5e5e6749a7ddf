"""Training engine: LR policy, a real few-epoch run, resume, kill-and-resume, bad inputs."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from spin.config import ConfigError, load_config
from spin.data import DataError
from spin.engine import checkpoint as cu
from spin.engine.loop import NonFiniteLossError
from spin.engine.optim import construct_optimizer, get_lr_at_epoch
from spin.engine.trainer import train
from spin.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny-ws.yaml")


def tiny_cfg(data, out, *opts):
    return load_config([TINY], ["DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", str(out), *opts])


def json_stats(out):
    with open(os.path.join(out, "stdout.log")) as f:
        return [json.loads(line.split("json_stats: ", 1)[1]) for line in f if "json_stats: " in line]


# ------------------------------------------------------------------------ LR policy
def test_onecycle_at_hand_computed_points():
    cfg = load_config(opts=["SOLVER.LR_POLICY", "onecycle", "SOLVER.BASE_LR", "0.01",
                            "SOLVER.MAX_EPOCH", "300"])
    # knots (0, 0), (120, lr), (240, lr/20), (300, 0)
    for epoch, lr in [(0, 0.0), (60, 0.005), (120, 0.01), (180, 0.00525), (240, 0.0005),
                      (270, 0.00025), (300, 0.0), (0.5, 0.01 * 0.5 / 120)]:
        assert get_lr_at_epoch(cfg, epoch) == pytest.approx(lr, abs=1e-12), epoch


def test_cosine_with_warmup():
    cfg = load_config(opts=["SOLVER.LR_POLICY", "cosine", "SOLVER.BASE_LR", "0.1", "SOLVER.MAX_EPOCH",
                            "10", "SOLVER.WARMUP_EPOCHS", "2.0", "SOLVER.WARMUP_START_LR", "0.0"])
    at2 = 0.1 * (1 + 0.8090169943749475) / 2  # cos(pi * 2/10)
    assert get_lr_at_epoch(cfg, 1.0) == pytest.approx(at2 / 2)
    assert get_lr_at_epoch(cfg, 5.0) == pytest.approx(0.05)
    assert get_lr_at_epoch(cfg, 10.0) == pytest.approx(0.0)


def test_bn_params_get_bn_weight_decay():
    cfg = load_config([TINY], ["BN.WEIGHT_DECAY", "0.0", "SOLVER.WEIGHT_DECAY", "0.05"])
    model = build_model(cfg)
    opt = construct_optimizer(model, cfg)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model.patch_embed.bn.weight)] == 0.0
    assert decay[id(model.blocks[0].bn2.bias)] == 0.0
    assert decay[id(model.shared.sets[0].pwise.weight)] == 0.05
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["eps"] == 1e-8
    assert len(decay) == sum(1 for _ in model.parameters())


# ------------------------------------------------------------------------ a real run
def test_training_learns_writes_and_resumes(image_folder, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(image_folder, out, "SOLVER.MAX_EPOCH", "4", "TENSORBOARD.ENABLE", "True",
                   "TRAIN.CHECKPOINT_PERIOD", "2", "TRAIN.EVAL_PERIOD", "2")
    res = train(cfg)
    stats = json_stats(out)
    epochs = [s for s in stats if s["_type"] == "train_epoch"]
    assert len(epochs) == 4 and epochs[-1]["loss"] < 0.5 * epochs[0]["loss"]
    vals = [s for s in stats if s["_type"] == "val_epoch"]
    assert [v["epoch"] for v in vals] == ["2/4", "4/4"]
    assert res["val"]["top1_err"] <= 25.0  # 4 colours: chance is 75% error
    assert {"dt", "dt_data", "eta", "mem", "lr", "iter"} <= set(next(s for s in stats if s["_type"] == "train_iter"))
    ckdir = out / "checkpoints"
    assert sorted(os.listdir(ckdir)) == ["checkpoint_epoch_00002.pyth", "checkpoint_epoch_00004.pyth",
                                         "metrics.csv"]
    ck = cu.load_checkpoint(str(ckdir / "checkpoint_epoch_00004.pyth"))
    assert ck["epoch"] == 3 and set(ck) >= {"model_state", "optimizer_state", "cfg"}
    assert "pwise_w.1" in ck["model_state"] and "pwise_w.2" not in ck["model_state"]
    assert len((ckdir / "metrics.csv").read_text().strip().splitlines()) == 5
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tensorboard"))
    # Resume: a longer schedule continues after epoch 4 instead of starting over.
    res2 = train(tiny_cfg(image_folder, out, "SOLVER.MAX_EPOCH", "5"))
    assert res2["start_epoch"] == 4
    assert os.path.exists(ckdir / "checkpoint_epoch_00005.pyth")
    # A finished run started again trains nothing, writes nothing, and reports its accuracy.
    before = sorted(os.listdir(ckdir))
    res3 = train(tiny_cfg(image_folder, out, "SOLVER.MAX_EPOCH", "5"))
    assert res3["start_epoch"] == 5 and res3["val"]["samples"] == 32
    assert sorted(os.listdir(ckdir)) == before


def test_mixup_and_randaugment_path(image_folder, tmp_path):
    cfg = tiny_cfg(image_folder, tmp_path / "o", "SOLVER.MAX_EPOCH", "1", "AUG.ENABLE", "True",
                   "MIXUP.ENABLE", "True", "MODEL.LOSS_FUNC", "soft_cross_entropy",
                   "TRAIN.MIXED_PRECISION", "True")  # bf16 autocast on the CPU
    res = train(cfg)
    assert 0 <= res["val"]["top1_err"] <= 100


def test_checkpoint_file_path_with_epoch_reset_starts_wfws_from_vanilla(image_folder, tmp_path):
    van_out = tmp_path / "vanilla"
    train(tiny_cfg(image_folder, van_out, "SOLVER.MAX_EPOCH", "1",
                   "CONVMIXER.WEIGHT_SHARE.ENABLE", "False"))
    ck = str(van_out / "checkpoints" / "checkpoint_epoch_00001.pyth")
    wf_out = tmp_path / "wfws"
    res = train(tiny_cfg(image_folder, wf_out, "SOLVER.MAX_EPOCH", "1",
                         "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "mean",
                         "TRAIN.CHECKPOINT_FILE_PATH", ck, "TRAIN.CHECKPOINT_EPOCH_RESET", "True"))
    assert res["start_epoch"] == 0
    state = cu.load_checkpoint(str(wf_out / "checkpoints" / "checkpoint_epoch_00001.pyth"))["model_state"]
    assert sum(k.startswith("pwise_w.") for k in state) == 4  # all D sets kept
    # Without the epoch reset it would continue the vanilla run's optimizer: a clear refusal.
    with pytest.raises(cu.CheckpointError, match="CHECKPOINT_EPOCH_RESET True"):
        train(tiny_cfg(image_folder, tmp_path / "wfws2", "SOLVER.MAX_EPOCH", "2",
                       "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "scalar_weighted_mean",
                       "TRAIN.CHECKPOINT_FILE_PATH", ck, "TRAIN.CHECKPOINT_EPOCH_RESET", "False"))


# ------------------------------------------------------------------------ kill and resume
def _run(args, out, wait_for_kill=False):
    cmd = [sys.executable, "-m", "spin.cli", "train", "--cfg", TINY, *args, "OUTPUT_DIR", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait_for_kill:
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        return None
    # Own process group, killed whole: the job and its data-loader worker die together, as under a
    # scheduler's kill (a lone SIGKILL would orphan the worker).
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    first = out / "checkpoints" / "checkpoint_epoch_00001.pyth"
    deadline = time.time() + 120
    while not first.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return p.returncode


def test_sigkill_then_resume_equals_uninterrupted(image_folder, tmp_path):
    args = ["DATA.PATH_TO_DATA_DIR", image_folder, "SOLVER.MAX_EPOCH", "4", "TRAIN.EVAL_PERIOD", "10",
            "DATA_LOADER.NUM_WORKERS", "1", "AUG.ENABLE", "True", "MIXUP.ENABLE", "True",
            "MODEL.LOSS_FUNC", "soft_cross_entropy", "MODEL.DROPOUT_RATE", "0.3"]
    _run(args, tmp_path / "full")
    rc = _run(args, tmp_path / "killed", wait_for_kill=True)
    assert rc == -signal.SIGKILL
    done = cu.latest_checkpoint(str(tmp_path / "killed"))
    assert done is not None and not done.endswith("00004.pyth")  # it really stopped midway
    _run(args, tmp_path / "killed")
    a = cu.load_checkpoint(str(tmp_path / "full" / "checkpoints" / "checkpoint_epoch_00004.pyth"))
    b = cu.load_checkpoint(str(tmp_path / "killed" / "checkpoints" / "checkpoint_epoch_00004.pyth"))
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k


# ------------------------------------------------------------------------ bad input
def test_missing_and_empty_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        train(tiny_cfg(str(tmp_path / "nowhere"), tmp_path / "o"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        train(tiny_cfg(str(tmp_path / "empty"), tmp_path / "o"))
    with pytest.raises(DataError, match="PATH_TO_DATA_DIR is empty"):
        train(tiny_cfg("", tmp_path / "o"))


def test_class_folders_differ(image_folder, tmp_path):
    os.rename(os.path.join(image_folder, "val", "d"), os.path.join(image_folder, "val", "e"))
    with pytest.raises(DataError, match=r"only in train: \['d'\]; only in val: \['e'\]"):
        train(tiny_cfg(image_folder, tmp_path / "o"))


def test_batch_size_not_divisible_by_gpus(image_folder, tmp_path):
    with pytest.raises(ConfigError, match="TRAIN.BATCH_SIZE 10 is not divisible by NUM_GPUS 4"):
        train(tiny_cfg(image_folder, tmp_path / "o", "TRAIN.BATCH_SIZE", "10", "NUM_GPUS", "4"))


def test_checkpoint_of_another_architecture_is_refused_and_kept(image_folder, tmp_path):
    out = tmp_path / "o"
    train(tiny_cfg(image_folder, out, "SOLVER.MAX_EPOCH", "1"))
    ck = out / "checkpoints" / "checkpoint_epoch_00001.pyth"
    before = ck.read_bytes()
    with pytest.raises(cu.CheckpointError, match="missing keys.*OUTPUT_DIR.s earlier run, resumed automatically.*choose a new OUTPUT_DIR"):
        train(tiny_cfg(image_folder, out, "SOLVER.MAX_EPOCH", "2", "CONVMIXER.WEIGHT_SHARE.ENABLE", "False"))
    assert ck.read_bytes() == before
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_epoch_00001.pyth", "metrics.csv"]


def test_nan_loss_stops_and_keeps_last_checkpoint(image_folder, tmp_path):
    out = tmp_path / "o"
    train(tiny_cfg(image_folder, out, "SOLVER.MAX_EPOCH", "1"))
    ck = out / "checkpoints" / "checkpoint_epoch_00001.pyth"
    before = ck.read_bytes()
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 2"):
        # A mean of 1e30 overflows the first conv: the loss is NaN on the first batch.
        train(tiny_cfg(image_folder, out, "SOLVER.MAX_EPOCH", "3", "DATA.MEAN", "[-1e38, -1e38, -1e38]",
                       "DATA.STD", "[1e-38, 1e-38, 1e-38]"))
    assert ck.read_bytes() == before
    assert cu.latest_checkpoint(str(out)) == str(ck)


def test_corrupt_image_is_skipped_and_counted(image_folder, tmp_path):
    bad = os.path.join(image_folder, "train", "a", "000.png")
    with open(bad, "wb") as f:
        f.write(b"definitely not a png")
    out = tmp_path / "o"
    with pytest.warns(UserWarning, match="skipping unreadable image .*000.png"):
        train(tiny_cfg(image_folder, out, "SOLVER.MAX_EPOCH", "1"))
    epoch = next(s for s in json_stats(out) if s["_type"] == "train_epoch")
    assert epoch["skipped_images"] == 1


def test_cli_reports_one_clear_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "spin.cli", "train", "--cfg", TINY, "SOLVER.BASE_LRR", "1"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "spin: error: unknown config key SOLVER.BASE_LRR in command-line overrides; did you mean SOLVER.BASE_LR?"]
    p = subprocess.run([sys.executable, "tools/run_net.py", "--cfg", TINY, "TRAIN.BATCH_SIZE", "x"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "wrong value type" in p.stderr
