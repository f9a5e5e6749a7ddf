"""spin sweep: real trials through the local executor, reruns, Ctrl-C, failing trials, parents,
the SLURM submission, and the report rebuilt from run folders."""
import contextlib
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest
from PIL import Image

from conftest import make_image_folder
from spin.cli import main
from spin.sweep import finalize, grid_trials
from spin.engine.checkpoint import epochs_done, latest_checkpoint
from spin.engine.runfolder import lock_holder
from spin.sweep.run import make_executor, read_status, submit_trials

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny-ws.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("sweep") / "data", n_train=6, n_val=3)


def common(data, epochs=2):
    return ["DATA.PATH_TO_DATA_DIR", data, "SOLVER.MAX_EPOCH", str(epochs), "TEST.ENABLE", "False"]


def rows(out):
    with open(os.path.join(out, "results.csv")) as f:
        return list(csv.DictReader(f))


def statuses(out):
    found = {}
    for group in os.listdir(out):
        if os.path.isdir(os.path.join(out, group)) and not group.startswith("."):
            for trial in os.listdir(os.path.join(out, group)):
                found[f"{group}/{trial}"] = read_status(os.path.join(out, group, trial))
    return found


def test_grid_by_seeds_rerun_and_report(data, tmp_path, capsys):
    out = str(tmp_path / "sw")
    argv = ["sweep", "--cfg", TINY, "--grid", "CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "1,2", "--grid",
            "CONVMIXER.WEIGHT_SHARE.SCOPE", "pointwise,both", "--seeds", "2", "--out", out, "--jobs", "2",
            *common(data)]
    assert main(argv) == 0
    assert "8/8 trials done" in capsys.readouterr().out
    table = rows(out)
    assert len(table) == 8 and {r["status"] for r in table} == {"done"}
    rate, scope = "WEIGHT_SHARE.SHARE_RATE", "WEIGHT_SHARE.SCOPE"  # the published names, read as the current
    assert {(r[rate], r[scope], r["seed"]) for r in table} == {
        (a, b, c) for a in ("1", "2") for b in ("pointwise", "both") for c in ("0", "1")}
    ws_both = [r for r in table if r[rate] == "2" and r[scope] == "both"]
    assert {r["unique_params"] for r in ws_both} == {"5028"} and ws_both[0]["kind"] == "WS"
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["comparisons"] == [] and not os.path.exists(os.path.join(out, "comparisons.csv"))
    for point in summary["points"]:
        mine = [float(r["final_top1"]) for r in table if r["trial"] == point["trial"]]
        assert point["n"] == 2 and point["final_mean"] == pytest.approx(statistics.fmean(mine))
        assert point["final_std"] == pytest.approx(statistics.stdev(mine))
    md = open(os.path.join(out, "summary.md")).read()
    assert "| SHARE_RATE=2_SCOPE=both | WS | 5,028 |" in md
    for png in ("accuracy_vs_params.png", "grid_SHARE_RATE.png", "grid_SCOPE.png"):
        with Image.open(os.path.join(out, png)) as im:
            im.verify()
    before = {k: v["attempts"] for k, v in statuses(out).items()}
    report = {f: open(os.path.join(out, f), "rb").read() for f in ("results.csv", "summary.md")}
    assert main(argv) == 0  # a rerun trains nothing
    assert "8 of 8 trials already done" in capsys.readouterr().out
    assert {k: v["attempts"] for k, v in statuses(out).items()} == before
    for f in report:
        os.remove(os.path.join(out, f))
    assert main(["sweep", "--report", out]) == 0  # rebuilt from the run folders alone
    assert {f: open(os.path.join(out, f), "rb").read() for f in report} == report


def test_failing_trial_is_recorded_and_the_rest_finish(data, tmp_path, capsys):
    out = str(tmp_path / "sw")  # the missing data folder is found by the trial itself, at run time
    assert main(["sweep", "--cfg", TINY, "--grid", "DATA.PATH_TO_DATA_DIR", f"{data},{tmp_path}/nothing",
                 "--grid", "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "None,mean", "--out", out,
                 "SOLVER.MAX_EPOCH", "1", "TEST.ENABLE", "False"]) == 1  # finished, but not all trials did
    captured = capsys.readouterr()
    last = captured.out.splitlines()[-1]
    assert "2/4 trials done, 2 failed:" in last and last.count("nothing_REDUCTION_FN=") == 2, last
    assert captured.err.count("spin: error: ") == 1 and "spin: error: 2 of 4 trials failed: grid/" in captured.err
    failed = [r for r in rows(out) if r["status"] == "failed"]
    assert len(failed) == 2 and all("nothing" in r["error"] for r in failed), failed


def test_a_broken_trial_config_refuses_the_sweep_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "--cfg", TINY, "--grid", "CONVMIXER.WEIGHT_SHARE.REDUCTION_FN", "None,median,mean",
            "--grid", "CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "2,3", "--seeds", "2", "--out", str(out)]
    for extra in ([], ["--dry-run"]):
        assert main(argv + extra) == 2
        lines = capsys.readouterr().err.splitlines()
        # one line per problem, naming its trials: the fusion 'median' (2 rates x 2 seeds) and the
        # rate 3 that does not divide the depth 4 (3 fusions x 2 seeds)
        assert len(lines) == 2 and all(l.startswith("spin: error: trials grid/") for l in lines), lines
        rate, fusion = sorted(lines, key=lambda l: "median" in l)
        assert "REDUCTION_FN=median_SHARE_RATE=2-s0" in fusion and "(+1 more): WEIGHT_SHARE.REDUCTION_FN " \
            "'median': unknown weight fusion" in fusion
        assert "REDUCTION_FN=None_SHARE_RATE=3-s0" in rate and "(+3 more)" in rate and "share rate 3" in rate
        assert not out.exists()


def test_parent_child_wfws_trial_starts_from_the_parents_checkpoint(data, tmp_path):
    sweep = tmp_path / "wfws.yaml"
    text = f"""
base: {TINY}
opts: [DATA.PATH_TO_DATA_DIR, {data}, SOLVER.MAX_EPOCH, 2, TEST.ENABLE, False]
seeds: 1
groups:
  fusion:
    trials:
      wfws: {{parent: vanilla, opts: [CONVMIXER.WEIGHT_SHARE.REDUCTION_FN, channel_weighted_mean]}}
      vanilla: [CONVMIXER.WEIGHT_SHARE.ENABLE, False]
"""
    sweep.write_text(text + "comparisons: [fusion/wfws < fusion/vanilla]\n")
    out = tmp_path / "sw"
    assert main(["sweep", "--sweep", str(sweep), "--out", str(out), "--jobs", "2"]) == 0
    parent_ck = out / "fusion" / "vanilla-s0" / "checkpoints" / "checkpoint_epoch_00002.pyth"
    log = (out / "fusion" / "wfws-s0" / "stdout.log").read_text()
    assert f"initialised weights from {parent_ck}; starting at epoch 1" in log
    table = {r["trial"]: r for r in rows(out)}
    assert table["wfws"]["kind"] == "WFWS" and table["vanilla"]["kind"] == "vanilla"
    assert int(table["wfws"]["unique_params"]) < int(table["vanilla"]["params"]) < int(table["wfws"]["params"])
    with open(out / "comparisons.csv") as f:  # one seed a side: no interval
        (row,) = list(csv.DictReader(f))
    assert (row["comparison"], row["n_a"], row["n_b"], row["verdict"]) == \
        ("fusion/wfws < fusion/vanilla", "1", "1", "n/a")
    before = (out / "comparisons.csv").read_bytes()
    (out / "comparisons.csv").unlink()
    assert main(["sweep", "--report", str(out)]) == 0  # the comparisons live in the sweep folder
    assert (out / "comparisons.csv").read_bytes() == before and "## Comparisons" in (out / "summary.md").read_text()
    sweep.write_text(text)  # a rerun of the file without comparisons drops them (nothing retrains)
    assert main(["sweep", "--sweep", str(sweep), "--out", str(out)]) == 0
    assert not (out / "comparisons.yaml").exists() and not (out / "comparisons.csv").exists()


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes_without_retraining(data, tmp_path):
    out = tmp_path / "sw"
    argv = [sys.executable, "-m", "spin.cli", "sweep", "--cfg", TINY, "--grid", "CONVMIXER.WEIGHT_SHARE.SHARE_RATE",
            "1,2", "--seeds", "2", "--out", str(out), "--jobs", "2", *common(data, 25), "LOG_PERIOD", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    def has_checkpoint(st):
        folder = out / st["group"] / f"{st['name']}-s{st['seed']}" / "checkpoints"
        return folder.is_dir() and any(f.endswith(".pyth") for f in os.listdir(folder))

    deadline = time.time() + 240
    while time.time() < deadline:  # until two trials run and both have a checkpoint
        running = [st for st in statuses(out).values() if st.get("status") == "running"] if out.exists() else []
        if len(running) == 2 and all(has_checkpoint(st) for st in running):
            break
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C reaches the driver and its trials, as in a terminal
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and re.fullmatch(r"spin: stopped: [0-2] of 4 trials done; rerun to resume\n", err), err
    assert "running" not in {s.get("status") for s in statuses(out).values()}
    stopped = {k: has_checkpoint(s) for k, s in statuses(out).items() if s.get("status") == "stopped"}
    assert any(stopped.values()) and not any(os.path.exists(out / k / ".spin.lock") for k in stopped)
    assert subprocess.run(argv, env=env, capture_output=True, text=True).returncode == 0
    for key, s in statuses(out).items():
        assert s["status"] == "done", key
        starts = [a["start_epoch"] for a in s["attempts"]]
        if stopped.get(key):  # stopped after a checkpoint: resumed from it, not retrained
            assert starts[0] == 0 and len(starts) == 2 and starts[1] > 0, (key, starts)
        elif key in stopped:  # a trial can start between the poll and the Ctrl-C: nothing to resume yet
            assert starts == [0, 0], (key, starts)
        else:
            assert starts == [0], (key, starts)


def test_a_killed_sweep_stops_its_trials_and_the_rerun_resumes_them(data, tmp_path):
    out = tmp_path / "sw"
    trial = out / "grid" / "SHARE_RATE=2-s0"
    argv = [sys.executable, "-m", "spin.cli", "sweep", "--cfg", TINY, "--grid", "CONVMIXER.WEIGHT_SHARE.SHARE_RATE", "2",
            "--out", str(out), *common(data, 200), "LOG_PERIOD", "0", "TRAIN.EVAL_PERIOD", "200"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (lock_holder(str(trial)) and latest_checkpoint(str(trial))):
            time.sleep(0.05)
        assert lock_holder(str(trial)), "the trial never started"
        os.kill(p.pid, signal.SIGKILL)  # the driver alone: its trial must notice and stop
        p.wait()
        deadline = time.time() + 30  # it releases its folder, then records that it stopped
        while time.time() < deadline and (lock_holder(str(trial)) or read_status(str(trial))["status"] == "running"):
            time.sleep(0.1)
        assert lock_holder(str(trial)) is None and read_status(str(trial))["status"] == "stopped"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    done = epochs_done(latest_checkpoint(str(trial)))
    assert subprocess.run(argv, env=env, capture_output=True).returncode == 0
    st = read_status(str(trial))
    assert st["status"] == "done" and [a["start_epoch"] for a in st["attempts"]] == [0, done]


def test_slurm_submission_carries_the_requested_resources(data, tmp_path, monkeypatch):
    from submitit.slurm import slurm

    trials = finalize(grid_trials("g", [TINY], common(data), {"CONVMIXER.WEIGHT_SHARE.SHARE_RATE": ["1", "2"]}, 2),
                      str(tmp_path / "sw"))
    captured = []

    def fake_submit(self, command):
        captured.append(self._make_submission_file_text(command, "uid"))
        return slurm.SlurmJob(folder=self.folder, job_id="4242")

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    monkeypatch.setattr(slurm.SlurmExecutor, "_submit_command", fake_submit)
    ex = make_executor("slurm", str(tmp_path / "sw" / ".submitit"), 1,
                       dict(partition="gpu-a100", gpus=4, cpus=8, time=120, array_parallelism=3))
    specs = [{"out": t.out, "cfg_files": t.cfg_files, "opts": t.run_opts, "threads": 0} for t in trials]
    jobs = submit_trials(ex, "slurm", specs)
    assert len(jobs) == 4 and len(captured) == 1  # one job array for the four trials
    script = captured[0]
    for line in ("#SBATCH --partition=gpu-a100", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --time=120", "#SBATCH --array=0-3%3"):
        assert line in script, line


def test_sweep_errors(tmp_path, capsys):
    assert main(["sweep", "--cfg", TINY, "--grid", "NOPE.KEY", "1,2", "--out", str(tmp_path / "o")]) == 2
    assert "unknown config key NOPE.KEY" in capsys.readouterr().err
    assert main(["sweep", "--grid", "RNG_SEED", "1", "--out", str(tmp_path / "o")]) == 2
    assert "needs --cfg" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  a:\n    trials:\n      x: {parent: y}\n")
    assert main(["sweep", "--sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "names parent 'a/y', which is not a trial" in capsys.readouterr().err
    assert main(["sweep", "--report", str(tmp_path)]) == 2
    assert "holds no sweep trials" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
