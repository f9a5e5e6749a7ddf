"""Identity (spin/identity.py): a resume, an evaluation, a fine-tune or a sweep rerun that
contradicts what its checkpoint, run folder or sweep trial holds is refused — exit 2, one
``spin: error:`` line, no traceback, nothing written — and harmless differences proceed."""
import csv
import json
import os
import shutil

import pytest
import torch

from spin.cli import main
from spin.config import load_config
from spin.data import prepare_digits
from spin.engine import checkpoint as cu
from spin.engine.runfolder import RunLock
from spin.engine.trainer import train
from test_hardening import snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "configs", "digits", "WS-ConvMixer-digits.yaml")
SMALL = ["CONVMIXER.CHANNEL", "16", "CONVMIXER.DEPTH", "4", "TRAIN.MAX_ITERS_PER_EPOCH", "2",
         "TENSORBOARD.ENABLE", "False", "TEST.ENABLE", "False", "SOLVER.MAX_EPOCH", "1"]
FOLDER = ["TRAIN.DATASET", "imagenet", "TEST.DATASET", "imagenet", "DATA.PATH_TO_DATA_DIR"]


def copy_classes(src, dst, rename=str, keep=lambda c: True, per_class=6):
    """A small image folder from ``src``'s classes, renamed / filtered."""
    for split in ("train", "val"):
        for c in sorted(os.listdir(os.path.join(src, split))):
            if keep(c):
                os.makedirs(os.path.join(dst, split, rename(c)))
                for f in sorted(os.listdir(os.path.join(src, split, c)))[:per_class]:
                    shutil.copy(os.path.join(src, split, c, f), os.path.join(dst, split, rename(c), f))
    return str(dst)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained digits run (one epoch), a moved copy of its data, and folders of other classes."""
    tmp = tmp_path_factory.mktemp("identity")
    digits = prepare_digits()
    run = str(tmp / "run")
    ck = train(load_config([DIGITS], ["DATA.PATH_TO_DATA_DIR", digits, "OUTPUT_DIR", run, *SMALL]))["checkpoint"]
    return dict(tmp=tmp, digits=digits, run=run, ck=ck, moved=shutil.copytree(digits, tmp / "moved"),
                d9=copy_classes(digits, tmp / "d9", keep=lambda c: c != "0"),
                renamed=copy_classes(digits, tmp / "renamed", rename=lambda c: f"digit{c}"))


def fill(w, args, tmp_path):
    out = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for k, v in w.items():
        out = [a.replace("{" + k + "}", str(v)) for a in out]
    return out


def resume(*extra):
    return ["train", "--cfg", DIGITS, "DATA.PATH_TO_DATA_DIR", "{digits}", "OUTPUT_DIR", "{run}", *SMALL,
            "SOLVER.MAX_EPOCH", "2", *extra]


def finetune(*extra):
    return ["train", "--cfg", DIGITS, *SMALL, "TRAIN.CHECKPOINT_FILE_PATH", "{ck}", "TRAIN.CHECKPOINT_EPOCH_RESET",
            "True", "OUTPUT_DIR", "{tmp}/ft", *extra]


TEST = ["test", "TEST.CHECKPOINT_FILE_PATH", "{ck}"]
REFUSED = [  # (argv, the words the one error line holds)
    (resume("CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING", "strided"),
     "WEIGHT_SHARE layer->set map [0, 0, 1, 1] -> [0, 1, 0, 1]"),
    (resume("CONVMIXER.ACT_FUNC", "GELU"), "CONVMIXER.ACT_FUNC 'RELU' -> 'GELU'; to train this config choose a new OUTPUT_DIR"),
    (resume("CONVMIXER.POINTWISE_RESIDUAL", "False"), "CONVMIXER.POINTWISE_RESIDUAL True -> False"),
    (resume(*FOLDER, "{renamed}"), "TRAIN.DATASET 'digits' -> 'imagenet'"),
    (resume("CONVMIXER.WEIGHT_SHARE.SEED", "3", "CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING", "random"), "layer->set map"),
    (TEST + ["CONVMIXER.WEIGHT_SHARE.SHARING_MAPPING", "strided"], "holds another model than requested: "
     "WEIGHT_SHARE layer->set map [0, 0, 1, 1] -> [0, 1, 0, 1]; drop the overrides"),
    (TEST + ["CONVMIXER.ACT_FUNC", "GELU", "--cfg", DIGITS, *SMALL], "CONVMIXER.ACT_FUNC 'RELU' -> 'GELU'"),
    (TEST + FOLDER + ["{d9}"], "other classes than the data's: 10 -> 9 classes (only stored: ['0'], only requested: [])"),
    (TEST + FOLDER + ["{renamed}"], "10 -> 10 classes (only stored: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']"),
    (finetune(*FOLDER, "{renamed}"), "set TRAIN.CHECKPOINT_NEW_CLASSES True to fine-tune it onto these classes"),
    (finetune(*FOLDER, "{d9}"), "TRAIN.CHECKPOINT_FILE_PATH {ck} was trained on other classes than the data's: 10 -> 9"),
]


@pytest.mark.parametrize("argv,needle", REFUSED, ids=[" ".join(a[-4:])[-50:] for a, _ in REFUSED])
def test_a_contradicting_request_is_one_error_and_writes_nothing(world, tmp_path, capsys, argv, needle):
    before, before_world = snapshot(tmp_path), snapshot(world["tmp"])
    rc = main(fill(world, argv, tmp_path))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("spin: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fill(world, [needle], tmp_path)[0] in lines[0], err
    assert snapshot(tmp_path) == before and snapshot(world["tmp"]) == before_world


HARMLESS = [  # (argv, what the run's log then says)
    (resume("TRAIN.EVAL_PERIOD", "3", "TRAIN.CHECKPOINT_PERIOD", "2", "LOG_PERIOD", "5", "DATA_LOADER.NUM_WORKERS", "0",
            "TEST.BATCH_SIZE", "100", "NUM_GPUS", "0"), "resumed from"),
    (resume("DATA.PATH_TO_DATA_DIR", "{moved}"), "differ from checkpoint_epoch_00001.pyth's: DATA.PATH_TO_DATA_DIR"),
    (resume("SOLVER.BASE_LR", "0.02"), "SOLVER.BASE_LR 0.01 -> 0.02"),
    (finetune(*FOLDER, "{renamed}", "TRAIN.CHECKPOINT_NEW_CLASSES", "True"), "starting at epoch 1"),
]


@pytest.mark.parametrize("argv,said", HARMLESS, ids=[" ".join(a[-2:])[-40:] for a, _ in HARMLESS])
def test_harmless_differences_proceed_and_are_logged(world, tmp_path, argv, said):
    run = shutil.copytree(world["run"], tmp_path / "run")  # the shared run stays one epoch long
    argv = fill(world, [a.replace("{run}", str(run)) for a in argv], tmp_path)
    assert main(argv) == 0
    out = argv[argv.index("OUTPUT_DIR") + 1]
    assert fill(world, [said], tmp_path)[0] in open(os.path.join(out, "stdout.log")).read()


def test_checkpoints_store_their_identity_and_old_ones_derive_it(world, tmp_path, capsys):
    ck = torch.load(world["ck"], weights_only=True)
    ident = ck["identity"]
    assert ident["model"]["family"] == "convmixer" and ident["model"]["CONVMIXER.CHANNEL"] == 16
    assert ident["model"]["WEIGHT_SHARE layer->set map"] == [0, 0, 1, 1]
    assert ident["classes"]["classes"] == [str(k) for k in range(10)]
    assert ident["data"]["DATA.PATH_TO_DATA_DIR"] == os.path.abspath(world["digits"])
    run = shutil.copytree(world["run"], tmp_path / "run")
    path = cu.latest_checkpoint(str(run))
    del ck["identity"]  # a checkpoint of an earlier spin: derived from its cfg and classes
    torch.save(ck, path)
    assert cu.checkpoint_identity(cu.load_checkpoint(path)) == ident
    argv = fill(world, resume("CONVMIXER.ACT_FUNC", "GELU"), tmp_path)
    assert main([a.replace(world["run"], str(run)) for a in argv]) == 2
    assert "CONVMIXER.ACT_FUNC 'RELU' -> 'GELU'" in capsys.readouterr().err
    assert main(TEST[:2] + [path, "TEST.BATCH_SIZE", "64", "OUTPUT_DIR", str(tmp_path / "t")]) == 0  # harmless
    # a file spin did not write (no classes): its cfg need not describe its weights (upstream's fused
    # WFWS file stores the WFWS config), so only the weights' keys and shapes are checked
    del ck["classes"]
    ck["cfg"] = ck["cfg"].replace("ACT_FUNC: RELU", "ACT_FUNC: GELU")
    torch.save(ck, path)
    assert main(["test", "--cfg", DIGITS, *SMALL, "TEST.CHECKPOINT_FILE_PATH", path, "DATA.PATH_TO_DATA_DIR",
                 world["digits"], "OUTPUT_DIR", str(tmp_path / "t")]) == 0


# ------------------------------------------------------------------ sweeps
def sweep_argv(world, out, *extra):
    return ["sweep", "--cfg", DIGITS, "--grid", "CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "2", "--out", str(out),
            "DATA.PATH_TO_DATA_DIR", world["digits"], *SMALL, *extra]


@pytest.fixture(scope="module")
def done_sweep(world):
    out = world["tmp"] / "sweep"
    assert main(sweep_argv(world, out)) == 0
    return out


def trial_dir(out):
    return out / "grid" / "SHARE_RATE=2-s0"


def results(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_a_sweep_rerun_with_changed_settings_is_refused_or_rerun_in_place(world, done_sweep, tmp_path, capsys):
    out = shutil.copytree(done_sweep, tmp_path / "sweep")
    record = json.loads((trial_dir(out) / "sweep_trial.json").read_text())
    before = snapshot(tmp_path)
    assert main(sweep_argv(world, out, "CONVMIXER.CHANNEL", "8")) == 2
    err = capsys.readouterr().err
    assert err.count("spin: error:") == 1 and "Traceback" not in err, err
    assert "trial grid/SHARE_RATE=2-s0 holds results of other settings (CONVMIXER.CHANNEL 16 -> 8); add " \
           "--rerun-changed" in err
    assert snapshot(tmp_path) == before
    assert main(sweep_argv(world, out, "LOG_PERIOD", "3", "TRAIN.EVAL_PERIOD", "2")) == 0  # harmless: skipped
    assert "1 of 1 trials already done, skipped" in capsys.readouterr().out
    assert json.loads((trial_dir(out) / "sweep_trial.json").read_text()) == record
    old_params = int(results(out)[0]["params"])
    assert main(sweep_argv(world, out, "CONVMIXER.CHANNEL", "8", "--rerun-changed")) == 0
    row, = results(out)
    st = json.loads((trial_dir(out) / "sweep_trial.json").read_text())
    assert row["status"] == "done" and int(row["params"]) < old_params and float(row["final_top1"]) >= 0
    assert [a["start_epoch"] for a in st["attempts"]] == [0]  # retrained from scratch, in place
    ck = cu.load_checkpoint(cu.latest_checkpoint(str(trial_dir(out))))
    assert ck["identity"]["model"]["CONVMIXER.CHANNEL"] == 8


def test_the_report_never_pairs_a_record_with_other_settings_numbers(world, done_sweep, tmp_path):
    out = shutil.copytree(done_sweep, tmp_path / "sweep")
    path = trial_dir(out) / "sweep_trial.json"
    st = json.loads(path.read_text())
    del st["config"]  # a record of an earlier spin, whose opts disagree with its checkpoints
    st["opts"] += ["CONVMIXER.CHANNEL", "8"]
    path.write_text(json.dumps(st))
    assert main(["sweep", "--report", str(out)]) == 0
    row, = results(out)
    assert row["status"] == "mismatch" and row["final_top1"] == "" and "CONVMIXER.CHANNEL 16 -> 8" in row["error"]


def test_a_second_sweep_on_a_folder_in_use_is_refused(world, done_sweep, tmp_path, capsys):
    out = shutil.copytree(done_sweep, tmp_path / "sweep")
    with RunLock(str(out)):  # as a running sweep holds it
        before = snapshot(tmp_path)
        assert main(sweep_argv(world, out)) == 2
        err = capsys.readouterr().err
        assert snapshot(tmp_path) == before
    assert err.count("\n") == 1 and f"spin: error: --out '{out}' is in use by process {os.getpid()}" in err, err
    assert "wait for that sweep" in err
