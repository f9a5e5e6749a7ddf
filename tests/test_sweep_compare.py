"""spin sweep comparisons and checkpoint verdicts, on fake run folders (no training): the load-time
checks of ``comparisons:``, the paired and Welch intervals against hand computations, the verdicts,
the checkpoint_eval.json columns and the in-loop ≠ checkpoint flag."""
import csv
import json
import math
import os

import pytest

from spin.cli import main
from spin.sweep import SweepError, load_sweep_file, save_comparisons
from spin.sweep.compare import judge, paired_interval, welch_interval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny-ws.yaml")
T2 = 4.302652729911275   # t(0.975, df=2)
T1 = 12.706204736174698  # t(0.975, df=1)


def sweep_file(tmp_path, comparisons, name="s.yaml"):
    path = tmp_path / name
    path.write_text(f"""
base: {TINY}
seeds: 3
groups:
  g:
    trials: {{hi: [], lo: [], mid: [], top: [], odd: [], one: [], old: []}}
  s:
    grid:
      CONVMIXER.WEIGHT_SHARE.SCOPE: [pointwise, both]
comparisons: {json.dumps(comparisons)}
""")
    return str(path)


def fake_trial(out, group, name, seed, top1, status="done", ckpt=None, agree=True):
    """A finished 2-epoch run folder as a sweep trial leaves it; ``ckpt`` is the checkpoint's top-1
    (default: the in-loop one), None for an older run without checkpoint_eval.json."""
    run = os.path.join(out, group, f"{name}-s{seed}")
    os.makedirs(os.path.join(run, "checkpoints"))
    with open(os.path.join(run, "sweep_trial.json"), "w") as f:
        json.dump({"group": group, "name": name, "seed": seed, "values": {"trial": name}, "cfg_files": [TINY],
                   "opts": ["RNG_SEED", str(seed)], "status": status}, f)
    with open(os.path.join(run, "checkpoints", "metrics.csv"), "w") as f:
        f.write("epoch,train_loss,val_top1_err,val_top5_err,train_time\n"
                f"1,1.0,{100 - top1 + 5},10,1.5\n2,0.5,{100 - top1},5,1.5\n")
    if ckpt is not False:
        ev = {"top1_err": 100 - (top1 if ckpt is None else ckpt), "top5_err": 4, "loss": 0.3, "samples": 12}
        with open(os.path.join(run, "checkpoint_eval.json"), "w") as f:
            json.dump({"checkpoint": os.path.join(run, "checkpoints", "checkpoint_epoch_00002.pyth"), "epoch": 2,
                       "in_loop": {"top1_err": 100 - top1, "top5_err": 5, "loss": 0.3, "samples": 12},
                       "checkpoint_eval": ev, "agree": agree}, f)


def test_paired_interval_is_the_hand_computation():
    mean, low, high = paired_interval([1.0, 2.0, 3.0])  # sd 1, n 3
    assert mean == 2 and low == pytest.approx(2 - T2 / math.sqrt(3)) and high == pytest.approx(2 + T2 / math.sqrt(3))
    assert paired_interval([7.0, 7.0, 7.0]) == (7.0, 7.0, 7.0)  # no spread: a zero-width interval, not NaN


def test_welch_interval_with_unequal_n_is_the_hand_computation():
    from scipy.stats import t

    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0]  # means 2.5, 3; variances 5/3, 2
    va, vb = (5 / 3) / 4, 2 / 2
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 1)
    assert df == pytest.approx(1.89716, abs=1e-5)
    half = t.ppf(0.975, df) * math.sqrt(va + vb)
    diff, low, high = welch_interval(a, b)
    assert diff == -0.5 and low == pytest.approx(-0.5 - half) and high == pytest.approx(-0.5 + half)
    # one side without spread: df = n - 1 of the other
    diff, low, high = welch_interval([1.0, 2.0, 3.0], [5.0] * 4)
    assert diff == -3 and (low, high) == pytest.approx((-3 - T2 / math.sqrt(3), -3 + T2 / math.sqrt(3)))
    assert welch_interval([1.0, 1.0], [2.0, 2.0, 2.0]) == (-1.0, -1.0, -1.0)


def test_judge_verdicts_and_too_few_seeds():
    lo = {0: 89.0, 1: 89.0, 2: 89.0}
    assert judge({0: 93.0, 1: 95.0, 2: 97.0}, lo, ">")["verdict"] == "holds"      # 6 ± 4.97
    assert judge({0: 93.0, 1: 95.0, 2: 97.0}, lo, "<")["verdict"] == "reversed"
    assert judge({0: 90.0, 1: 91.0, 2: 92.0}, lo, ">")["verdict"] == "tie"        # 2 ± 2.48
    r = judge({0: 1.0}, {0: 2.0}, ">")
    assert r["verdict"] == "n/a" and r["paired"] == "yes" and "1 paired seed" in r["reason"]
    r = judge({0: 95.0}, lo, ">")
    assert r["verdict"] == "n/a" and r["paired"] == "no" and r["reason"].startswith("a has 1 finished seed")


@pytest.mark.parametrize("entry, message", [
    ("g/mdi > g/lo", "'g/mdi' is not a trial of this sweep; did you mean g/mid?"),
    ("g/hi >= g/lo", "operator '>=' is neither > nor <"),
    ("g/hi > g/hi", "compares g/hi with itself"),
    ("g/hi g/lo", "is not two trials and an operator"),
    ("hi > g/lo", "'hi' is not a trial of this sweep"),
    ({"a": "g/hi", "b": "g/lo"}, "needs a, b and claim"),
])
def test_bad_comparisons_are_one_line_errors_before_anything_runs(tmp_path, capsys, entry, message):
    path = sweep_file(tmp_path, ["g/hi > g/lo", entry])
    with pytest.raises(SweepError, match="comparison"):
        load_sweep_file(path)
    assert main(["sweep", "--sweep", path, "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spin: error: sweep file {path}: comparison") \
        and message in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_comparison_forms_and_grid_names(tmp_path):
    settings, _ = load_sweep_file(sweep_file(tmp_path, [
        "s/SCOPE=pointwise > s/SCOPE=both", "g/hi<g/lo",
        {"a": "g/top", "claim": ">", "b": "g/lo", "name": "top wins"}]))
    assert settings["comparisons"] == [
        {"name": "s/SCOPE=pointwise > s/SCOPE=both", "a": "s/SCOPE=pointwise", "claim": ">", "b": "s/SCOPE=both"},
        {"name": "g/hi < g/lo", "a": "g/hi", "claim": "<", "b": "g/lo"},
        {"name": "top wins", "a": "g/top", "claim": ">", "b": "g/lo"}]
    settings, _ = load_sweep_file(sweep_file(tmp_path, None))
    assert settings["comparisons"] == []


def test_report_judges_the_comparisons_and_flags_disagreeing_checkpoints(tmp_path, capsys):
    out = str(tmp_path / "sw")
    comparisons = ["g/mid > g/lo", "g/mid < g/lo", "g/hi > g/lo", "g/top > g/lo", "g/odd < g/lo", "g/one > g/lo",
                   "g/old > g/lo", "g/lo > s/SCOPE=both"]
    settings, _ = load_sweep_file(sweep_file(tmp_path, comparisons))
    save_comparisons(out, settings["comparisons"])
    for seed in range(3):
        fake_trial(out, "g", "lo", seed, 89)
        fake_trial(out, "g", "hi", seed, 90 + seed)
        fake_trial(out, "g", "mid", seed, 93 + 2 * seed)
        fake_trial(out, "g", "top", seed, 96, agree=seed != 1)               # seed 1's checkpoint disagrees
        fake_trial(out, "g", "old", seed, 95, ckpt=False)                    # a run from before checkpoint_eval
        fake_trial(out, "g", "odd", seed, 80 + 2 * seed, status="done" if seed < 2 else "failed")
    fake_trial(out, "g", "one", 0, 95, ckpt=95.5)                            # 0.5 points apart
    assert main(["sweep", "--report", out]) == 0
    assert "comparisons.csv" in capsys.readouterr().out

    with open(os.path.join(out, "comparisons.csv")) as f:
        got = {r["comparison"]: r for r in csv.DictReader(f)}
    h2 = T2 / math.sqrt(3)
    expect = {  # (paired, diff, low, high, verdict)
        "g/mid > g/lo": ("yes", 6, 6 - 2 * h2, 6 + 2 * h2, "holds"),           # diffs 4, 6, 8: sd 2
        "g/mid < g/lo": ("yes", 6, 6 - 2 * h2, 6 + 2 * h2, "reversed"),
        "g/hi > g/lo": ("yes", 2, 2 - h2, 2 + h2, "tie"),                      # diffs 1, 2, 3: sd 1
        "g/top > g/lo": ("yes", 7, 7, 7, "holds"),                            # diffs 7, 7, 7: no spread
        "g/odd < g/lo": ("no", -8, -8 - T1, -8 + T1, "tie"),                   # Welch: 80, 82 vs 89 x3: se 1, df 1
    }
    for name, (paired, diff, low, high, verdict) in expect.items():
        r = got[name]
        assert (r["paired"], r["verdict"]) == (paired, verdict), r
        assert [float(r[k]) for k in ("diff", "ci_low", "ci_high")] == pytest.approx([diff, low, high], abs=1e-4)
    assert got["g/hi > g/lo"]["metric"] == "ckpt_top1" and got["g/old > g/lo"]["metric"] == "final_top1"
    assert got["g/old > g/lo"]["verdict"] == "holds"  # in-loop on both sides: 95 vs 89, no spread
    assert got["g/one > g/lo"]["verdict"] == "n/a" and "a has 1 finished seed" in got["g/one > g/lo"]["reason"]
    assert got["g/lo > s/SCOPE=both"]["verdict"] == "n/a" and "no trial s/SCOPE=both" in \
        got["g/lo > s/SCOPE=both"]["reason"]

    with open(os.path.join(out, "results.csv")) as f:
        rows = {(r["trial"], r["seed"]): r for r in csv.DictReader(f)}
    assert (rows["one", "0"]["final_top1"], rows["one", "0"]["ckpt_top1"], rows["one", "0"]["ckpt_top5"],
            rows["one", "0"]["agree"]) == ("95.0", "95.5", "96.0", "True")
    assert (rows["top", "1"]["agree"], rows["old", "0"]["ckpt_top1"], rows["old", "0"]["agree"]) == ("False", "", "")

    md = open(os.path.join(out, "summary.md")).read()
    flag = next(line for line in md.splitlines() if line.startswith("⚠ in-loop ≠ checkpoint"))
    assert "g/top-s1 (in-loop 96.00, checkpoint 96.00, agree False)" in flag
    assert "g/one-s0 (in-loop 95.00, checkpoint 95.50, agree True)" in flag
    assert "g/top-s0" not in flag and "g/old" not in flag and "g/lo-" not in flag
    assert "| one | WS | 5,668 | 0.0004 | 95.50 ± 0.00 | checkpoint | 95.00 ± 0.00 | 1/1 |" in md  # the checkpoint's
    assert "| old | WS | 5,668 | 0.0004 | 95.00 ± 0.00 | in-loop |" in md  # no checkpoint_eval.json
    assert md.index("## Comparisons") > md.index("## g")
    assert "| g/mid > g/lo | checkpoint | 3 / 3 | yes | 95.00 | 89.00 | 6.00 | [1.03, 10.97] | holds |" in md
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert [c["verdict"] for c in summary["comparisons"]] == [got[c]["verdict"] for c in comparisons]
    assert {p["trial"]: p["top1_source"] for p in summary["points"]}["old"] == "in-loop"
