"""Bad input of every kind ends in one ``spin: error:`` line, exit 2, no traceback and no file
written; the run folder stays one run's and consistent (lock, config history, SIGKILL, divergence);
the data walk survives symlink loops; tools refuse broken inputs."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from spin.cli import main
from spin.config import load_config
from spin.data.folder import DataError, ImageFolder, load_rgb
from spin.engine import checkpoint as cu
from spin.engine.loop import NonFiniteLossError
from spin.engine.optim import get_lr_at_epoch
from spin.engine.trainer import SoftTargetLoss, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny-ws.yaml")
DEIT_DIGITS = os.path.join(ROOT, "configs", "digits", "WS-DeiT-digits.yaml")
# Commands of the BAD table run on another family's small config: alias -> (command, config).
FAMILY_CMDS = {"train_deit": ("train", DEIT_DIGITS),
               "train_cnx": ("train", os.path.join(ROOT, "configs", "digits", "WS-ConvNeXt-iso-digits.yaml")),
               "train_mix": ("train", os.path.join(ROOT, "configs", "digits", "WS-Mixer-digits.yaml")),
               "stats_deit": ("stats", DEIT_DIGITS)}
WS = "CONVMIXER.WEIGHT_SHARE."


def snapshot(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def write(path, data):
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An image folder, a trained tiny checkpoint, a vanilla checkpoint and odd files."""
    tmp = tmp_path_factory.mktemp("world")
    data = make_image_folder(tmp / "data", n_train=8, n_val=4)
    empty = make_image_folder(tmp / "empty_class", n_train=4, n_val=2)
    for split in ("train", "val"):
        for f in os.listdir(os.path.join(empty, split, "b")):
            os.remove(os.path.join(empty, split, "b", f))
    broken = {}
    for split in ("train", "val"):  # every image of one split is unreadable
        broken[split] = make_image_folder(tmp / f"broken_{split}", n_train=4, n_val=2)
        for dirpath, _, names in os.walk(os.path.join(broken[split], split)):
            for name in names:
                write(os.path.join(dirpath, name), b"not a png")
    ck = train(load_config([TINY], ["DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", str(tmp / "run"),
                                    "SOLVER.MAX_EPOCH", "1", "TEST.ENABLE", "False"]))["checkpoint"]
    files = {
        "syntax.yaml": "TRAIN:\n  ENABLE: [True\n", "list.yaml": "- TRAIN\n- SOLVER\n", "scalar.yaml": "42\n",
        "section.yaml": "TRAIN: 5\n", "binary.yaml": bytes(range(256)) * 4, "a_file": "not a folder\n",
        "junk.pt2": "junk\n", "null.yaml": "SOLVER:\n  MAX_EPOCH: null\n", "trials_list.yaml": "groups: {g: {trials: [{name: a, opts: []}]}}\n",
        "grid_list.yaml": f"base: {TINY}\ngroups: {{g: {{grid: [CONVMIXER.KERNEL, 3]}}}}\n",
    }
    paths = {k: write(tmp / k, v) for k, v in files.items()}
    return dict(data=data, empty=empty, broken_train=broken["train"], broken_val=broken["val"], ck=ck, tmp=tmp, run=str(tmp / "run"), **paths)


def base(w, out, *opts):
    return ["--cfg", TINY, "DATA.PATH_TO_DATA_DIR", w["data"], "OUTPUT_DIR", str(out), *opts]


# (command, extra args, expected fragment of the one error line). {x} are the world's paths.
BAD = [
    ("train", ["SOLVER.BASE_LR", "-0.1"], "SOLVER.BASE_LR must be a finite number >= 0"),
    ("train", ["SOLVER.BASE_LR", "-1"], "SOLVER.BASE_LR must be a finite number >= 0, got -1.0"),
    ("train", ["--cfg", "{null.yaml}"], "SOLVER.MAX_EPOCH must be a int like its default 300, got an empty value"),
    ("train", ["TRAIN.BATCH_SIZE", "None"], "TRAIN.BATCH_SIZE must be a int like its default"),
    ("train", ["SOLVER.WEIGHT_DECAY", "-1.0"], "SOLVER.WEIGHT_DECAY must be"),
    ("train", ["SOLVER.WARMUP_EPOCHS", "-2.0"], "SOLVER.WARMUP_EPOCHS must be >= 0"),
    ("train", ["DATA_LOADER.NUM_WORKERS", "-1"], "DATA_LOADER.NUM_WORKERS must be >= 0"),
    ("train", ["DATA.TRAIN_CROP_SIZE", "0"], "DATA.TRAIN_CROP_SIZE must be >= 1"),
    ("train", ["NUM_GPUS", "-1"], "NUM_GPUS must be >= 0"),
    ("train", ["TRAIN.EVAL_PERIOD", "0"], "TRAIN.EVAL_PERIOD must be >= 1"),
    ("train", ["TRAIN.CHECKPOINT_PERIOD", "-3"], "TRAIN.CHECKPOINT_PERIOD must be >= 1"),
    ("train", ["SOLVER.MAX_EPOCH", "0"], "SOLVER.MAX_EPOCH must be >= 1"),
    ("train", ["SOLVER.OPTIMIZING_METHOD", "adamx"], "unknown SOLVER.OPTIMIZING_METHOD 'adamx'; allowed: adamw"),
    ("train", ["SOLVER.LR_POLICY", "step"], "unknown SOLVER.LR_POLICY 'step'; allowed: onecycle"),
    ("train", ["MODEL.LOSS_FUNC", "focal"], "unknown MODEL.LOSS_FUNC 'focal'"),
    ("train", ["TRAIN.DATASET", "imagenet21k"], "unknown TRAIN.DATASET 'imagenet21k'"),
    ("train", ["AUG.ENABLE", "True", "AUG.AA_TYPE", "rand-x9"], "AUG.AA_TYPE 'rand-x9'"),
    ("train", ["AUG.ENABLE", "True", "AUG.RE_MODE", "blur"], "unknown AUG.RE_MODE 'blur'"),
    ("train", ["AUG.INTERPOLATION", "lanczos"], "unknown AUG.INTERPOLATION 'lanczos'"),
    ("train", ["MODEL.MODEL_NAME", "ResNet"], "unknown MODEL.MODEL_NAME 'ResNet'"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "median"], "REDUCTION_FN 'median'"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING", "zigzag"], "SHARING_MAPPING 'zigzag'"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.SCOPE", "bias"], "unknown sharing scope 'bias'"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.SCOPE", "attn"], "'attn' is not a part of convmixer's blocks"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "3"], "depth 4 divisible by the share rate 3"),
    ("train", ["OUTPUT_DIR", "{a_file}"], "is a file, not a folder"),
    ("train", ["OUTPUT_DIR", "{a_file}/sub"], "is a file; choose another folder"),
    ("train", ["TRAIN.ENABLE", "False", "TEST.ENABLE", "False"], "the job would do nothing"),
    ("train", ["TRAIN.CHECKPOINT_FILE_PATH", "/nonexistent/ck.pyth"], "TRAIN.CHECKPOINT_FILE_PATH '/nonexistent"),
    ("train", ["--cfg", "{syntax.yaml}"], "is not valid YAML at line 3, column 1"),
    ("train", ["--cfg", "{list.yaml}"], "holds a list, not a mapping"),
    ("train", ["--cfg", "{scalar.yaml}"], "holds a int, not a mapping"),
    ("train", ["--cfg", "{section.yaml}"], "TRAIN is a section"),
    ("train", ["--cfg", "{binary.yaml}"], "is not UTF-8 text"),
    ("train", ["SOLVER.BASE_LRR", "1"], "did you mean SOLVER.BASE_LR?"),
    ("train", ["TRAIN.BATCH_SIZE", "big"], "TRAIN.BATCH_SIZE must be a int"),
    ("train", ["TRAIN.BATCH_SIZE", "10", "NUM_GPUS", "4"], "TRAIN.BATCH_SIZE 10 is not divisible by NUM_GPUS 4"),
    ("train", ["DATA.PATH_TO_DATA_DIR", "/nonexistent/data"], "does not exist"),
    ("train", ["DATA.PATH_TO_DATA_DIR", "{empty}"], "/train/b' holds no images"),
    ("train", ["DATA.PATH_TO_DATA_DIR", "{broken_train}"], "none of the 16 images of"),
    ("train", ["DATA.PATH_TO_DATA_DIR", "{broken_val}"], "/val' can be read (the first: "),
    ("test", ["DATA.PATH_TO_DATA_DIR", "{broken_val}", "TEST.CHECKPOINT_FILE_PATH", "{ck}"], "none of the 8 images"),
    ("train", ["MIXUP.ENABLE", "True"], "set MODEL.LOSS_FUNC soft_cross_entropy"),
    ("train", ["NUM_GPUS"], "KEY VALUE pairs"),
    ("train", ["--frobnicate"], "--frobnicate"),
    ("train", ["DATA.STD", "[0.0, 1.0, 1.0]"], "DATA.STD values must be > 0"),
    ("train", ["MODEL.DROP_PATH_RATE", "1.5"], "MODEL.DROP_PATH_RATE must be in [0, 1)"),
    ("train_deit", ["VIT.EMBED_DIM", "102"], "VIT.EMBED_DIM 102 is not divisible by VIT.NUM_HEADS 4"),
    ("train_deit", ["WEIGHT_SHARE.SCOPE", "pointwise"], "'pointwise' is not a part of vit's blocks"),
    ("train_deit", ["VIT.PATCH_SIZE", "5"], "DATA.TRAIN_CROP_SIZE 32 is not a multiple of VIT.PATCH_SIZE 5"),
    ("train_deit", ["DATA.TEST_CROP_SIZE", "64"], "has a fixed input size"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "2", "WEIGHT_SHARE.SHARE_RATE", "4"],
     "one key under its published and its current name"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.ENABLE", "False", "TRAIN.CHECKPOINT_FILE_PATH", "{ck}", "TRAIN.AUTO_RESUME",
               "False"], "does not match the model architecture"),
    ("train", ["MODEL.NUM_CLASSES", "2"], "the data set has 4 classes"),
    ("train", ["OUTPUT_DIR", "{run}", "TRAIN.AUTO_RESUME", "False"], "holds checkpoints of an earlier run"),
    ("bench", ["--preset", "nope"], "unknown --preset nope"),
    ("bench", ["--repeats", "0"], "--repeats must be >= 1"),
    ("predict", ["--checkpoint", "/nonexistent.pyth", "x.png"], "does not exist"),
    ("predict", ["--checkpoint", "{ck}", "--topk", "0", "x.png"], "--topk must be >= 1"),
    ("fuse", ["TRAIN.CHECKPOINT_FILE_PATH", "{ck}"], "spin fuse needs the WFWS config"),
    ("test", ["TEST.CHECKPOINT_FILE_PATH", ""], "no checkpoint to test"),
    ("stats", ["--sweep", "SOLVER.NOPE", "1,2"], "unknown config key SOLVER.NOPE"),
    ("nosuchcommand", [], "unknown command 'nosuchcommand'"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.ENABLE", "False", "CONVMIXER.WEIGHT_SHARE.RELAX", "lora",
               "CONVMIXER.WEIGHT_SHARE.RELAX_RANK", "4"], "relaxed sharing relaxes a shared model"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.ENABLE", "False", "CONVMIXER.WEIGHT_SHARE.RELAX", "lora"],
     "relaxed sharing relaxes a shared model"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.RELAX_RANK", "4"], "RELAX_RANK 4 is read only by RELAX lora"),
    ("train", ["CONVMIXER.WEIGHT_SHARE.RELAX", "lora", "CONVMIXER.WEIGHT_SHARE.RELAX_RANK", "-1"],
     "RELAX lora needs a rank"),
    ("test", ["CONVMIXER.CHANNEL", "16", "TEST.CHECKPOINT_FILE_PATH", "{ck}"], "shape mismatches ("),
    ("test", ["OUTPUT_DIR", "{a_file}", "TEST.CHECKPOINT_FILE_PATH", "{ck}"], "is a file, not a folder"),
    # keys of a section the family does not read (defaults are fine: published YAMLs carry them)
    ("train", ["VIT.DEPTH", "4"], "VIT.DEPTH set, but MODEL.MODEL_NAME WSConvMixer does not read VIT.*"),
    ("stats", ["MIXER.MLP_RATIO", "[1.0, 2.0]"], "read by MODEL.MODEL_NAME MlpMixer"),
    ("train_deit", ["CONVNEXT.KERNEL", "5"], "CONVNEXT.KERNEL set, but MODEL.MODEL_NAME DeiT does not read"),
    # architectures that cannot be built or run: refused before anything is written
    ("train", ["CONVMIXER.KERNEL", "4"], "CONVMIXER.KERNEL must be an odd number >= 1"),
    ("train", ["CONVMIXER.KERNEL", "0"], "CONVMIXER.KERNEL must be an odd number >= 1"),
    ("stats", ["CONVMIXER.KERNEL", "4"], "CONVMIXER.KERNEL must be an odd number >= 1"),
    ("train", ["CONVMIXER.PATCH_KERNEL", "64", "CONVMIXER.PATCH_STRIDE", "64"], "PATCH_KERNEL 64 is larger than the crop 32"),
    ("test", ["CONVMIXER.KERNEL", "6", "TEST.CHECKPOINT_FILE_PATH", "{ck}"], "CONVMIXER.KERNEL must be an odd"),
    ("train_cnx", ["CONVNEXT.KERNEL", "4"], "CONVNEXT.KERNEL must be an odd number >= 1"),
    ("train_cnx", ["CONVNEXT.PATCH_SIZE", "64"], "CONVNEXT.PATCH_SIZE must be in 1..the crop 32"),
    ("train_deit", ["VIT.CLASS_TOKEN", "False"], "VIT.CLASS_TOKEN False leaves no class token"),
    ("train_deit", ["VIT.GLOBAL_POOL", "foo"], "cannot be built or run with VIT.GLOBAL_POOL 'foo'"),
    ("stats_deit", ["VIT.GLOBAL_POOL", "foo"], "VIT.GLOBAL_POOL 'foo' (AssertionError"),
    ("train_mix", ["MIXER.MLP_RATIO", "[0.5, 4.0, 2.0]"], "MIXER.MLP_RATIO must be [token, channel]"),
    # integer lists take ints; plan keys that contradict each other are refused, not resolved
    ("train", [WS + "SHARE_RATE", "1", WS + "SHARING_MAPPING", "custom", WS + "LAYER_MAP", "[0, 0, 1, 3.5]"],
     "holds 3.5, not an integer"),
    ("train", [WS + "SHARE_RATE", "1", WS + "SHARING_MAPPING", "custom", WS + "LAYER_MAP", "[0, 0, 1, 1.0]"],
     "holds 1.0, not an integer"),
    ("train", [WS + "SHARE_RATE", "1", WS + "SHARING_DISTRIBUTION", "custom", WS + "GROUP_SIZES", "[2.5, 1.5]"],
     "explicit group sizes [2.5, 1.5] holds 2.5"),
    ("train", [WS + "SHARING_MAPPING", "custom", WS + "LAYER_MAP", "[0, 0, 1, 1]"],
     "explicit mapping list fixes the sets by itself, but share_rate (SHARE_RATE) 2"),
    ("train", [WS + "NUM_SETS", "3"], "NUM_SETS) 3 and share_rate (SHARE_RATE) 2 disagree"),
    ("train", [WS + "SHARE_RATE", "3", WS + "SHARING_DISTRIBUTION", "front"], "front distribution needs the depth 4 divisible"),
]
# Commands with their whole argument list ({out}: a path under the test's own folder).
RAW = [
    ([], "no command given"),
    (["fuse", "--cfg", TINY, "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "mean", "TRAIN.CHECKPOINT_FILE_PATH", "{ck}",
      "--output", "{ck}", "--overwrite"], "is the input"),
    (["export", "--checkpoint", "{ck}", "--format", "onnx", "--out", "{ck}", "--overwrite"], "must end in .onnx"),
    (["export", "--checkpoint", "{ck}", "--format", "pt2", "--out", "{out}/x.onnx"], "must end in .pt2"),
    (["export", "--checkpoint", "{a_file}", "--format", "pt2", "--out", "{out}/x.pt2"], "is not a PyTorch checkpoint"),
    (["export", "--checkpoint", "{junk.pt2}", "--format", "pt2", "--out", "{out}/x.pt2"], "is an exported artifact"),
    (["predict", "--checkpoint", "{junk.pt2}", "x.png"], "is not a .pt2 archive"),
    (["plot", "{run}", "--out", "{a_file}/c.png"], "is a file"),
    (["plot", "{run}", "--out", "{out}/c.svg"], "must end in .png"),
    (["plot", "{a_file}"], "is not a run folder"),
    (["analyze", "--checkpoint", "{ck}", "--out", "{a_file}"], "is a file, not a folder"),
    (["analyze", "--checkpoint", "{ck}", "--suggest", "0"], "--suggest must be a number of sets >= 1"),
    (["analyze", "--checkpoint", "{ck}", "--suggest", "9"], "give 1 <= N <= the depth 4"),
    (["analyze", "--checkpoint", "{ck}", "--by", "cka"], "add --suggest N"),
    (["bench", "--preset", "tiny", "--out", "{a_file}"], "is a file, not a folder"),
    (["sweep", "--cfg", TINY, "--grid", "SOLVER.MAX_EPOCH", "1", "--out", "{a_file}"], "is a file, not a folder"),
    (["sweep", "--cfg", "/nonexistent.yaml", "--grid", "SOLVER.MAX_EPOCH", "1", "--out", "{out}"],
     "'/nonexistent.yaml' does not exist"),
    (["sweep", "--cfg", TINY, "--grid", "SOLVER.MAX_EPOCH", "1", "--out", "{out}", "FOO.BAR", "1"], "FOO.BAR"),
    (["sweep", "--cfg", TINY, "--grid", "CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "2,x", "--out", "{out}"],
     "SHARE_RATE"),
    (["sweep", "--cfg", TINY, "--grid", "SOLVER.MAX_EPOCH", "1", "--report", "{run}"], "drop --cfg, --grid"),
    (["sweep", "--cfg", TINY, "--grid", "SOLVER.MAX_EPOCH", "1", "--seeds", "0", "--out", "{out}"],
     "--seeds must be >= 1"),
    (["sweep", "--cfg", TINY, "--grid", "SOLVER.MAX_EPOCH", "1", "--grid", "SOLVER.MAX_EPOCH", "2", "--out", "{out}"],
     "given more than once"),
    (["sweep", "--cfg", TINY, "--grid", "OUTPUT_DIR", "a,b", "--out", "{out}"], "choose DIR with --out"),
    (["sweep", "--cfg", TINY, "--grid", "RNG_SEED", "1,2", "--out", "{out}"], "choose the number with --seeds"),
    (["sweep", "--cfg", TINY, "--grid", "SOLVER.MAX_EPOCH", "1", "--out", "{out}", "--slurm-partition", "gpu"],
     "add --executor slurm"),
    (["sweep", "--sweep", "{trials_list.yaml}", "--out", "{out}", "--dry-run"], "not a list"),
    (["sweep", "--sweep", "{grid_list.yaml}", "--out", "{out}", "--dry-run"], "'grid:' maps each config key"),
    (["sweep", "--cfg", TINY, "--grid", "VIT.DEPTH", "4,6", "--out", "{out}"],
     "trials grid/DEPTH=4-s0, grid/DEPTH=6-s0: VIT.DEPTH set, but MODEL.MODEL_NAME WSConvMixer does not read"),
    (["sweep", "--cfg", TINY, "--grid", "CONVMIXER.KERNEL", "3,4", "--out", "{out}"],
     "trial grid/KERNEL=4-s0: CONVMIXER.KERNEL must be an odd number"),
    (["export", "--checkpoint", "{ck}", "--format", "pt2", "--out", "{out}/x.pt2", "CONVMIXER.KERNEL", "4"],
     "CONVMIXER.KERNEL must be an odd number"),
    (["analyze", "--checkpoint", "{ck}", "--out", "{out}/an", "VIT.DEPTH", "4"], "VIT.DEPTH set, but"),
]


@pytest.mark.parametrize("command,extra,needle", BAD, ids=[f"{c}-{'-'.join(e)[:40]}" for c, e, _ in BAD])
def test_bad_input_is_one_error_line_and_writes_nothing(world, tmp_path, capsys, command, extra, needle):
    for k, v in world.items():
        extra = [e.replace("{" + k + "}", str(v)) for e in extra]
    args = extra if command in ("bench", "predict", "nosuchcommand") else base(world, tmp_path / "out", *extra)
    if command == "stats":
        args = ["--cfg", TINY, *extra]
    if command in FAMILY_CMDS:
        command, cfg = FAMILY_CMDS[command]
        args = ["--cfg", cfg, *extra] + (["OUTPUT_DIR", str(tmp_path / "out")] if command == "train" else [])
    before, before_world = snapshot(tmp_path), snapshot(world["tmp"])
    rc = main([command, *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [l for l in err.splitlines() if l.startswith("spin: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0] or needle in err, err
    assert snapshot(tmp_path) == before and snapshot(world["tmp"]) == before_world


@pytest.mark.parametrize("argv,needle", RAW, ids=["-".join(a)[:50] for a, _ in RAW])
def test_bad_tool_input_is_one_error_line_and_writes_nothing(world, tmp_path, capsys, argv, needle):
    argv = [a.replace("{out}", str(tmp_path / "out")) for a in argv]
    for k, v in world.items():
        argv = [a.replace("{" + k + "}", str(v)) for a in argv]
    before, before_world = snapshot(tmp_path), snapshot(world["tmp"])
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("spin: error:")]
    assert rc == 2 and len(lines) == 1 and len(err.splitlines()) == 1, err
    assert needle in lines[0], err
    assert snapshot(tmp_path) == before and snapshot(world["tmp"]) == before_world


def test_read_only_output_folders_are_refused_before_any_work(world, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access  # root ignores permission bits, so the read-only mount is simulated
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(ro)) else real(p, mode, **kw))
    ck, wfws = world["ck"], ["CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "mean"]
    commands = [
        ["train", *base(world, ro / "t")],
        ["test", *base(world, ro / "t", "TEST.CHECKPOINT_FILE_PATH", ck)],
        ["fuse", "--cfg", TINY, *wfws, "TRAIN.CHECKPOINT_FILE_PATH", ck, "--output", str(ro / "x.pyth")],
        ["export", "--checkpoint", ck, "--format", "pt2", "--out", str(ro / "x.pt2")],
        ["plot", world["run"], "--out", str(ro / "c.png")],
        ["analyze", "--checkpoint", ck, "--out", str(ro / "an")],
        ["bench", "--preset", "tiny", "--out", str(ro / "b")],
        ["sweep", "--cfg", TINY, "--grid", "SOLVER.MAX_EPOCH", "1", "--out", str(ro / "sw")],
    ]
    before, before_world = snapshot(tmp_path), snapshot(world["tmp"])
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "is not writable" in err and str(ro) in err, (argv, err)
    assert snapshot(tmp_path) == before and snapshot(world["tmp"]) == before_world


def test_every_problem_of_a_config_is_reported(tmp_path, capsys):
    rc = main(["train", "--cfg", TINY, "SOLVER.BASE_LR", "-1.0", "TRAIN.EVAL_PERIOD", "0", "NUM_GPUS", "-2",
               "OUTPUT_DIR", str(tmp_path / "o")])
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(lines) == 3 and all(l.startswith("spin: error: ") for l in lines)


def test_cli_exit_status_and_help_from_a_real_process():
    p = subprocess.run([sys.executable, "-m", "spin.cli", "train", "--cfg", TINY, "SOLVER.MAX_EPOCH", "0"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == "spin: error: SOLVER.MAX_EPOCH must be >= 1, got 0"
    p = subprocess.run([sys.executable, "-m", "spin.cli", "train", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("usage: spin train")


@pytest.mark.parametrize("cmd", ["test", "fuse", "stats", "predict", "bench"])
def test_subcommand_help_names_the_subcommand(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: spin {cmd}")


# ---------------------------------------------------------------- the run folder
def test_second_run_on_a_folder_in_use_is_refused_and_a_stale_lock_is_taken_over(world, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["train", *base(world, out, "SOLVER.MAX_EPOCH", "30", "TEST.ENABLE", "False")]
    p = subprocess.Popen([sys.executable, "-m", "spin.cli", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 60
        while not (out / ".spin.lock").exists() and time.time() < deadline:
            time.sleep(0.05)
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2 and f"is in use by process {p.pid}" in err and len(err.splitlines()) == 1
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert (out / ".spin.lock").exists()  # a killed run leaves its lock ...
    train(load_config([TINY], base(world, out, "SOLVER.MAX_EPOCH", "1", "TEST.ENABLE", "False")[2:]))
    assert not (out / ".spin.lock").exists()  # ... which the next run takes over
    assert "took over the lock of a run that is gone" in (out / "stdout.log").read_text()


def test_config_history_and_difference_on_resume(world, tmp_path):
    out = tmp_path / "o"
    train(load_config([TINY], base(world, out, "SOLVER.MAX_EPOCH", "1", "TEST.ENABLE", "False")[2:]))
    first = (out / "config.yaml").read_text()
    assert main(["train", *base(world, out, "SOLVER.MAX_EPOCH", "1", "SOLVER.BASE_LR", "-5.0")]) == 2
    assert (out / "config.yaml").read_text() == first  # a rejected rerun changes nothing
    train(load_config([TINY], base(world, out, "SOLVER.MAX_EPOCH", "2", "TEST.ENABLE", "False")[2:]))
    history = os.listdir(out / "config_history")
    assert len(history) == 1 and (out / "config_history" / history[0]).read_text() == first
    log = (out / "stdout.log").read_text()
    assert "-  MAX_EPOCH: 1" in log and "+  MAX_EPOCH: 2" in log


def test_ctrl_c_during_training_is_one_line_and_the_rerun_resumes(world, tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "spin.cli", "train", *base(world, out, "SOLVER.MAX_EPOCH", "200", "TEST.ENABLE",
                                                             "False", "LOG_PERIOD", "0")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    # A terminal's Ctrl-C: the child starts with SIGINT's default disposition even if this process
    # inherited or was left with it ignored (a child inherits SIG_IGN and Python then never raises
    # KeyboardInterrupt)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline and cu.latest_checkpoint(str(out)) is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, as in a terminal
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # say where it hangs: faulthandler dumps every thread on SIGABRT
        os.killpg(p.pid, signal.SIGABRT)
        _, err = p.communicate(timeout=60)
        pytest.fail(f"the run did not stop within 60 s of Ctrl-C; its threads at SIGABRT:\n{err[-6000:]}")
    latest = cu.latest_checkpoint(str(out))
    assert p.returncode == 130 and err.strip() == f"spin: interrupted; rerun the same command to resume from {latest}", err
    done = cu.epochs_done(latest)
    assert done >= 1 and not (out / ".spin.lock").exists()
    cmd[cmd.index("200")] = str(done + 1)
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert f"resumed from {latest}" in (out / "stdout.log").read_text()


def _epochs_in_metrics(out):
    with open(out / "checkpoints" / "metrics.csv") as f:
        return [int(line.split(",")[0]) for line in f.read().splitlines()[1:]]


def test_sigkill_at_random_moments_leaves_a_consistent_folder(world, tmp_path):
    args = ["--cfg", TINY, "DATA.PATH_TO_DATA_DIR", world["data"], "SOLVER.MAX_EPOCH", "12",
            "TRAIN.CHECKPOINT_PERIOD", "2", "TRAIN.EVAL_PERIOD", "3", "TEST.ENABLE", "False", "LOG_PERIOD", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(out, kill_after=None):
        cmd = [sys.executable, "-m", "spin.cli", "train", *args, "OUTPUT_DIR", str(out)]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        if kill_after is None:
            assert p.wait(timeout=300) == 0, p.stderr.read()
            return None
        log = out / "stdout.log"  # training has begun once the log has an iteration line
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline and not (log.exists() and "train_iter" in log.read_text()):
            time.sleep(0.01)
        time.sleep(kill_after)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return cu.latest_checkpoint(str(out))

    run(tmp_path / "full")
    ref = cu.load_checkpoint(str(tmp_path / "full" / "checkpoints" / "checkpoint_epoch_00012.pyth"))
    rng = random.Random(0)
    stopped_at = []
    for trial in range(3):
        out = tmp_path / f"killed{trial}"
        for _ in range(2):  # killed twice at random moments of training, then run to the end
            stopped_at.append(run(out, kill_after=rng.uniform(0.0, 0.8)))
        run(out)
        left = [f for _, _, files in os.walk(out) for f in files if f.startswith(".tmp_")]
        assert not left and not (out / ".spin.lock").exists()
        assert _epochs_in_metrics(out) == list(range(1, 13))
        got = cu.load_checkpoint(str(out / "checkpoints" / "checkpoint_epoch_00012.pyth"))
        for k, v in ref["model_state"].items():
            assert torch.equal(v, got["model_state"][k]), (trial, k)
    assert any(s is None or not s.endswith("00012.pyth") for s in stopped_at)  # kills landed mid-run


def test_a_diverging_run_leaves_only_finite_checkpoints(world, tmp_path, monkeypatch):
    import spin.engine.trainer as trainer

    real = trainer.train_one_epoch

    def poisoning(model, *a, **kw):  # epoch 2 ends with a NaN BatchNorm statistic
        stats = real(model, *a, **kw)
        if a[4] == 1:
            next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("nan"))
        return stats

    monkeypatch.setattr(trainer, "train_one_epoch", poisoning)
    out = tmp_path / "o"
    opts = base(world, out, "SOLVER.MAX_EPOCH", "3", "TRAIN.EVAL_PERIOD", "5", "TEST.ENABLE", "False")[2:]
    with pytest.raises(NonFiniteLossError, match="non-finite values after epoch 2.*running_var"):
        train(load_config([TINY], opts))
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint_epoch_00001.pyth", "metrics.csv"]
    with pytest.raises(NonFiniteLossError, match="evaluation produced non-finite logits"):
        train(load_config([TINY], opts[:-4] + ["TRAIN.EVAL_PERIOD", "1"]))  # resumes at 1; eval catches it
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    res = train(load_config([TINY], opts))
    assert res["start_epoch"] == 1 and all(
        bool(torch.isfinite(t).all()) for t in cu.load_checkpoint(res["checkpoint"])["model_state"].values()
        if t.is_floating_point())


def test_non_finite_checkpoint_is_refused_by_predict_test_and_resume(world, tmp_path, capsys):
    ck = cu.load_checkpoint(world["ck"])
    ck["model_state"]["head.fc.bias"] = torch.full_like(ck["model_state"]["head.fc.bias"], float("nan"))
    bad = str(tmp_path / "nan.pyth")
    torch.save(ck, bad)
    img = os.path.join(world["data"], "val", "a", "000.png")
    assert main(["predict", "--checkpoint", bad, img]) == 2
    assert "gives non-finite outputs" in capsys.readouterr().err
    assert main(["test", "TEST.CHECKPOINT_FILE_PATH", bad, "DATA.PATH_TO_DATA_DIR", world["data"],
                 "OUTPUT_DIR", str(tmp_path / "t")]) == 2
    assert "evaluation produced non-finite logits" in capsys.readouterr().err
    assert main(["train", *base(world, tmp_path / "r", "TRAIN.CHECKPOINT_FILE_PATH", bad)]) == 2
    assert "holds non-finite weights (head.fc.bias)" in capsys.readouterr().err


ENOSPC = OSError(errno.ENOSPC, "No space left on device")  # as the OS raises it: no file name
TORCH_WRITER = RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                            "data/0: file write failed")


@pytest.mark.parametrize("fault", [ENOSPC, TORCH_WRITER, OSError(errno.EROFS, "Read-only file system"),
                                   OSError(errno.EACCES, "Permission denied")], ids=["enospc", "torch", "erofs", "eacces"])
def test_a_refused_write_names_its_file_and_keeps_the_old_one(tmp_path, fault):
    from spin.engine.runfolder import WriteError, atomic_write

    path = write(tmp_path / "metrics.csv", "old\n")

    def failing(f):
        f.write(b"half")
        raise fault

    with pytest.raises(WriteError, match=f"cannot write {path}: .*files written before are intact"):
        atomic_write(path, failing)
    assert open(path).read() == "old\n" and os.listdir(tmp_path) == ["metrics.csv"]


@pytest.mark.parametrize("fault", [ENOSPC, TORCH_WRITER], ids=["enospc", "torch"])
def test_disk_full_during_a_checkpoint_is_one_line_and_earlier_checkpoints_stay(world, tmp_path, capsys, monkeypatch,
                                                                                fault):
    out = tmp_path / "o"
    assert main(["train", *base(world, out, "SOLVER.MAX_EPOCH", "1", "TEST.ENABLE", "False")]) == 0
    first = out / "checkpoints" / "checkpoint_epoch_00001.pyth"
    before = first.read_bytes()
    real = torch.save

    def full_disk(obj, f, *a, **kw):
        real(obj, f, *a, **kw)
        raise fault

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert main(["train", *base(world, out, "SOLVER.MAX_EPOCH", "2", "TEST.ENABLE", "False")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"spin: error: cannot write {out}/checkpoints/checkpoint_epoch_00002.pyth")
    assert first.read_bytes() == before and sorted(os.listdir(out / "checkpoints")) == [first.name, "metrics.csv"]


def test_predict_reports_each_bad_image_and_keeps_the_good_results(world, tmp_path, capsys):
    good = os.path.join(world["data"], "val", "a", "000.png")
    bad = write(tmp_path / "bad.png", b"not a png")
    rc = main(["predict", "--checkpoint", world["ck"], good, bad, str(tmp_path / "missing.png"), good])
    out, err = capsys.readouterr()
    assert rc == 2 and out.splitlines().count(good) == 2 and len(out.splitlines()) == 2 * 5
    lines = err.splitlines()
    assert len(lines) == 2 and all(l.startswith("spin: error: cannot read image") for l in lines), err
    assert "bad.png" in lines[0] and "missing.png" in lines[1] and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_predict_of_an_artifact_at_another_crop_names_its_input_size(world, tmp_path, capsys, fmt):
    pytest.importorskip("onnxruntime")
    art = str(tmp_path / f"m.{fmt}")
    assert main(["export", "--checkpoint", world["ck"], "--format", fmt, "--out", art]) == 0
    img = os.path.join(world["data"], "val", "a", "000.png")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", art, img, "--opts", "DATA.TEST_CROP_SIZE", "48"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{art} takes 32x32 images" in err[0] and "DATA.TEST_CROP_SIZE 48" in err[0], err
    assert main(["predict", "--checkpoint", art, img]) == 0


def test_checkpoints_respect_the_umask(world, tmp_path):
    old = os.umask(0o022)
    try:
        path = cu.save_checkpoint(str(tmp_path / "c.pyth"), torch.nn.Linear(2, 2), 0)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


# ---------------------------------------------------------------- data
def test_a_pass_over_no_usable_image_is_an_error_not_a_result(world):
    from spin.data import build_loader
    from spin.data.transforms import build_eval_transform
    from spin.engine.loop import evaluate, train_one_epoch
    from spin.models import build_model

    cfg = load_config([TINY])
    model = build_model(cfg)
    for split, run in (("val", lambda loader: evaluate(model, loader, torch.device("cpu"))),
                       ("train", lambda loader: train_one_epoch(
                           model, loader, torch.optim.SGD(model.parameters(), 0.1), torch.nn.CrossEntropyLoss(),
                           torch.device("cpu"), 0, 1, lr_at=lambda e: 0.1, log_period=0))):
        ds = ImageFolder(world[f"broken_{split}"], split, build_eval_transform(cfg))  # past the up-front check
        with pytest.warns(UserWarning, match="skipping unreadable image"), \
                pytest.raises(DataError, match="saw no usable (training )?image"):
            run(build_loader(cfg, ds, split == "train", 4))


def test_symlinks_neither_loop_nor_relabel(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b", "c"), n_train=3, n_val=1)
    train_dir = os.path.join(root, "train")
    os.symlink(os.path.join(train_dir, "a"), os.path.join(train_dir, "a", "loop"))  # a/loop -> a
    os.symlink(train_dir, os.path.join(train_dir, "b", "up"))  # b/up -> train (all classes)
    os.symlink(os.path.join(train_dir, "a"), os.path.join(train_dir, "c", "other"))  # c/other -> a
    os.makedirs(os.path.join(tmp_path, "extra"))
    Image.new("RGB", (8, 8)).save(os.path.join(tmp_path, "extra", "x.png"))
    os.symlink(os.path.join(tmp_path, "extra"), os.path.join(train_dir, "c", "more"))  # outside: c's own
    ds = ImageFolder(root, "train")
    labels = {}
    for path, t in ds.samples:
        labels.setdefault(os.path.realpath(path), set()).add(t)
    assert all(len(v) == 1 for v in labels.values()) and len(labels) == len(ds.samples) == 10
    assert np.bincount(ds.targets).tolist() == [3, 3, 4]


def test_16_bit_images_are_scaled_and_bombs_skipped(tmp_path, monkeypatch):
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)  # 0 .. 64512
    Image.fromarray(a, mode="I;16").save(tmp_path / "deep.png")
    got = np.asarray(load_rgb(str(tmp_path / "deep.png")))[..., 0]
    assert got.max() == round(64512 * 255 / 65535) and got.min() == 0 and len(np.unique(got)) == 64
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over 2x the limit
    with pytest.raises(Image.DecompressionBombError):
        load_rgb(str(tmp_path / "big.png"))


# ---------------------------------------------------------------- honest options
def test_loss_func_is_honoured():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target = torch.tensor([0])
    p = torch.log_softmax(logits, -1)[0]
    smooth = 0.3  # on-target 1 - 0.3 + 0.1, others 0.1
    expected = -(0.8 * p[0] + 0.1 * p[1] + 0.1 * p[2])
    torch.testing.assert_close(SoftTargetLoss(smooth)(logits, target), expected)
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    torch.testing.assert_close(SoftTargetLoss(smooth)(logits, soft), -(0.5 * p[0] + 0.5 * p[1]))


def test_shard_scaling_covers_warmup_start_and_cosine_end():
    cfg = load_config(opts=["SOLVER.BASE_LR", "0.1", "SOLVER.WARMUP_START_LR", "0.01", "SOLVER.COSINE_END_LR",
                            "0.001", "SOLVER.WARMUP_EPOCHS", "2.0", "SOLVER.MAX_EPOCH", "10", "NUM_SHARDS", "4",
                            "SOLVER.BASE_LR_SCALE_NUM_SHARDS", "True", "SOLVER.LR_POLICY", "cosine"])
    assert get_lr_at_epoch(cfg, 0.0) == pytest.approx(0.04)
    assert get_lr_at_epoch(cfg, 10.0) == pytest.approx(0.004)
    assert get_lr_at_epoch(cfg, 5.0) == pytest.approx(0.004 + (0.4 - 0.004) / 2)


# ---------------------------------------------------------------- the GPU check's CPU path
def test_gpu_check_script_runs_its_cpu_path(tmp_path):
    script = os.path.join(ROOT, "bench", "gpu-check.sh")
    env = dict(os.environ, OMP_NUM_THREADS="1", PY=sys.executable,
               SPIN=os.path.join(os.path.dirname(sys.executable), "spin"))
    dry = subprocess.run(["bash", script, "--dry-run"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert dry.returncode == 0 and "== bench:" in dry.stdout and "== ddp_nccl:" in dry.stdout
    assert "TRAIN.COMPILE True" in dry.stdout and "--compile" in dry.stdout
    out = tmp_path / "gpu"
    p = subprocess.run(["bash", script, "--cpu", "--out", str(out)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    steps = dict(line.split()[:2] for line in (out / "steps.txt").read_text().splitlines())
    assert steps == {"bench": "0", "train_amp": "0", "train_amp_compile": "0", "ddp_gloo": "0"}
    summary = (out / "summary.md").read_text()
    assert "| tiny-cpu | spin_ws |" in summary and "| deit_tiny-cpu | spin_wfws |" in summary
    assert "| train_amp |" in summary and "| ddp_gloo |" in summary
    assert json.loads((out / "bench" / "deit_tiny-cpu.json").read_text())["models"]["timm"]["train_img_s"] > 0
