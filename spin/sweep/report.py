"""A sweep's results, rebuilt from its run folders alone (every DIR/<group>/<trial>/sweep_trial.json):

* results.csv — one row per trial: group, trial, grid values, seed, kind (vanilla/WS/WFWS),
  parameters, unique parameters, GMACs, final and best val top-1/top-5, the final checkpoint's
  top-1/top-5 re-evaluated by the engine (OUTPUT_DIR/checkpoint_eval.json; empty in older runs) and
  whether it agrees with the run's own last validation, epochs, train time, status
  (``mismatch``, without numbers, when the trial's checkpoints come from other settings than its
  sweep_trial.json records);
* summary.md — per group, mean ± std over seeds for every grid point, sorted by top-1 (the
  checkpoint's where every finished seed has it), trials whose checkpoint disagrees flagged, and
  the verdicts on the sweep's comparisons (compare.py);
* comparisons.csv — one row per comparison: the means, the 95% interval of their difference, the verdict;
* accuracy_vs_params.png — final top-1 (mean ± std) against unique parameters, one colour per kind;
* <group>_<KEY>.png — top-1 against each grid key, one line per combination of the other keys.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
import statistics
from collections import defaultdict
from typing import Optional

from .. import identity as idn
from ..config import plan_key
from ..engine.curves import read_metrics, save_png
from ..engine.runfolder import RunFolderError, atomic_write
from ..engine.verify import read_record
from ..errors import SpinError
from .compare import FIELDS as COMPARISON_FIELDS
from .compare import comparisons_markdown, load_comparisons, primary_metric, verdicts
from .run import STATUS, folder_identity, read_status, stored_config

FIELDS = ["group", "trial", "seed", "kind", "params", "unique_params", "gmacs", "final_top1", "best_top1",
          "final_top5", "best_top5", "ckpt_top1", "ckpt_top5", "agree", "epochs", "max_epoch", "train_time_s",
          "status", "error"]
# in-loop and checkpoint top-1 further apart than this (points) flag the trial: the saved model is
# not the one the run measured
AGREE_POINTS = 0.01


def _describe(cfg, cache: dict) -> dict:
    """Kind, parameters and GMACs of the model a trial's config builds (cached per model)."""
    from ..tools.stats import describe

    key = json.dumps(idn.identity(cfg)["model"], sort_keys=True, default=str)
    if key not in cache:
        row = describe(cfg)
        kind = "vanilla" if row["sharing"] == "no" and row["fusion"] == "no" else (
            "WFWS" if row["fusion"] != "no" else "WS")
        cache[key] = {"params": row["params"], "unique_params": row["unique params"],
                      "gmacs": round(row["GMACs"], 6), "kind": kind}
    return cache[key]


def _checkpoint_eval(run_dir: str) -> dict:
    """ckpt_top1, ckpt_top5 and agree from the engine's re-evaluation of the final checkpoint."""
    ev = read_record(run_dir)
    try:
        ck = ev["checkpoint_eval"]
        return {"ckpt_top1": round(100 - float(ck["top1_err"]), 4), "ckpt_top5": round(100 - float(ck["top5_err"]), 4),
                "agree": bool(ev["agree"]) if ev.get("agree") is not None else ""}
    except (KeyError, TypeError, ValueError):  # an older run (no file): the columns stay empty
        return {}


def disagrees(row: dict) -> bool:
    if row.get("ckpt_top1") is None:
        return False
    # the epsilon: two 4-decimal top-1s exactly 0.01 apart differ by a hair more in floats
    far = row.get("final_top1") is not None and abs(row["final_top1"] - row["ckpt_top1"]) > AGREE_POINTS + 1e-9
    return row.get("agree") is False or far
def _trial_row(folder: str, cache: dict) -> dict:
    """A trial described from its own record (never from today's config files), with the numbers
    of its run only when its checkpoints come from the settings it records."""
    st = read_status(folder)
    values = st.get("values", {})
    row = {"group": st.get("group"), "trial": st.get("name"), "seed": st.get("seed"),
           "status": st.get("status", "pending"), "error": st.get("error", ""),
           **{plan_key(k): v for k, v in values.items() if k != "trial"}}
    refused = []
    try:  # a record whose config no longer loads is shown without a description
        cfg = stored_config(st)
        row.update(_describe(cfg, cache), max_epoch=cfg.SOLVER.MAX_EPOCH)
        held = folder_identity(folder)
        refused = idn.differences(held, idn.identity(cfg), "sweep")[0] if held else []
    except SpinError:
        pass
    if refused:
        row.update(status="mismatch", error=f"its checkpoints come from other settings than its {STATUS} "
                                            f"({idn.describe(refused)}); rerun the sweep with --rerun-changed")
        return row
    row.update(_numbers(folder))
    if row["status"] == "done" and row.get("max_epoch") and row["epochs"] < row["max_epoch"]:
        row["status"] = "incomplete"
    return row


def _numbers(folder: str) -> dict:
    try:
        metrics = read_metrics(folder)
    except SpinError:
        metrics = []
    out = {"epochs": int(metrics[-1]["epoch"]) if metrics else 0,
           "train_time_s": round(sum(m.get("train_time") or 0 for m in metrics), 2)}
    evals = [m for m in metrics if m.get("val_top1_err") is not None]
    if evals:
        out.update(final_top1=round(100 - evals[-1]["val_top1_err"], 4),
                   best_top1=round(100 - min(m["val_top1_err"] for m in evals), 4),
                   final_top5=round(100 - evals[-1]["val_top5_err"], 4),
                   best_top5=round(100 - min(m["val_top5_err"] for m in evals), 4))
    out.update(_checkpoint_eval(folder))
    return out


def collect(out: str) -> tuple[list[dict], list[str]]:
    """(rows, grid keys) of every trial under ``out``, ordered by group, trial, seed."""
    paths = sorted(glob.glob(os.path.join(out, "*", "*", STATUS)))
    if not paths:
        raise RunFolderError(f"{out!r} holds no sweep trials (no */*/{STATUS}); give the --out of spin sweep")
    rows, keys, cache = [], [], {}
    for path in paths:
        row = _trial_row(os.path.dirname(path), cache)
        keys += [k for k in map(plan_key, read_status(os.path.dirname(path)).get("values", {}))
                 if k not in keys and k != "trial"]
        rows.append(row)
    rows.sort(key=lambda r: (str(r["group"]), str(r["trial"]), r["seed"] or 0))
    return rows, keys


def _mean_std(xs: list) -> tuple[Optional[float], Optional[float]]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per (group, trial): mean ± std over seeds of the finished trials."""
    points = defaultdict(list)
    for r in rows:
        points[(r["group"], r["trial"])].append(r)
    out = []
    for (group, trial), rs in points.items():
        done = [r for r in rs if r["status"] == "done"]
        m1, s1 = _mean_std([r.get("final_top1") for r in done])
        mb, sb = _mean_std([r.get("best_top1") for r in done])
        mc, sc = _mean_std([r.get("ckpt_top1") for r in done])
        ckpt = primary_metric(done) == "ckpt_top1"
        out.append({"group": group, "trial": trial, "n": len(done), "of": len(rs), "kind": rs[0].get("kind", ""),
                    "top1_mean": mc if ckpt else m1, "top1_std": sc if ckpt else s1,
                    "top1_source": "checkpoint" if ckpt else "in-loop",
                    "final_mean": m1, "final_std": s1, "best_mean": mb, "best_std": sb, "ckpt_mean": mc, "ckpt_std": sc,
                    "unique_params": rs[0].get("unique_params"), "params": rs[0].get("params"),
                    "gmacs": rs[0].get("gmacs"), "rows": rs})
    out.sort(key=lambda p: (str(p["group"]), -(p["top1_mean"] if p["top1_mean"] is not None else -1)))
    return out


def _pm(m, s) -> str:
    return "-" if m is None else f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"


def _disagreement_note(points: list[dict]) -> list[str]:
    bad = [r for p in points for r in p["rows"] if r["status"] == "done" and disagrees(r)]
    if not bad:
        return []
    listed = "; ".join(f"{r['group']}/{r['trial']}-s{r['seed']} (in-loop {_pm(r.get('final_top1'), None)}, "
                       f"checkpoint {_pm(r['ckpt_top1'], None)}, agree {r.get('agree')})" for r in bad)
    return [f"⚠ in-loop ≠ checkpoint: {listed}. The final checkpoint, reloaded into a fresh model, does not "
            f"score what the run measured (agree False or more than {AGREE_POINTS} points apart).", ""]


def summary_markdown(points: list[dict], comparisons: Optional[list[dict]] = None) -> str:
    lines = ["Val top-1 (%), mean ± std over seeds (n = finished seeds of all), sorted within each group. top-1 "
             "is the final checkpoint re-evaluated in a fresh model (source checkpoint) where every finished "
             "seed has checkpoint_eval.json, else the run's last in-loop validation (source in-loop); best "
             "top-1 is the best in-loop epoch. Differences inside the seed spread are ties.", ""]
    lines += _disagreement_note(points)
    for group in dict.fromkeys(p["group"] for p in points):
        lines += [f"## {group}", "", "| trial | kind | unique params | GMACs | top-1 | source | best top-1 | n |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in (q for q in points if q["group"] == group):
            up = f"{p['unique_params']:,}" if isinstance(p["unique_params"], int) else "-"
            gm = f"{p['gmacs']:.4f}" if isinstance(p["gmacs"], float) else "-"
            source = p["top1_source"] if p["top1_mean"] is not None else "-"
            lines.append(f"| {p['trial']} | {p['kind']} | {up} | {gm} | {_pm(p['top1_mean'], p['top1_std'])} | "
                         f"{source} | {_pm(p['best_mean'], p['best_std'])} | {p['n']}/{p['of']} |")
        lines.append("")
    if comparisons:
        lines.append(comparisons_markdown(comparisons))
    return "\n".join(lines)


def plot_accuracy_vs_params(points: list[dict], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    colors = {"vanilla": "tab:blue", "WS": "tab:orange", "WFWS": "tab:green"}
    shown = set()
    drawn = [p for p in points if p["final_mean"] is not None and p["unique_params"]]
    crowd = defaultdict(list)  # many trials of one size (a mapping grid): one label for them all
    for p in drawn:
        crowd[p["unique_params"]].append(p)
    for p in drawn:
        kind = p["kind"] or "?"
        ax.errorbar(p["unique_params"], p["final_mean"], yerr=p["final_std"], fmt="o", capsize=3,
                    color=colors.get(kind, "tab:gray"), label=kind if kind not in shown else None)
        shown.add(kind)
        same = crowd[p["unique_params"]]
        if len(same) <= 3:
            ax.annotate(f"{p['group']}/{p['trial']}", (p["unique_params"], p["final_mean"]), fontsize=6,
                        xytext=(3, 2), textcoords="offset points", alpha=0.8)
        elif p is max(same, key=lambda q: q["final_mean"]):
            ax.annotate(f"{len(same)} trials of this size", (p["unique_params"], p["final_mean"]), fontsize=6,
                        xytext=(3, 6), textcoords="offset points", alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("unique parameters")
    ax.set_ylabel("final val top-1 (%), mean ± std over seeds")
    ax.set_title("accuracy against unique parameters")
    ax.grid(alpha=0.3)
    if shown:
        ax.legend()
    save_png(fig, path)


def plot_per_key(rows: list[dict], keys: list[str], out: str) -> list[str]:
    """<group>_<KEY>.png: mean ± std final top-1 against each grid key of each group."""
    from matplotlib.figure import Figure

    written = []
    for group in dict.fromkeys(r["group"] for r in rows):
        rs = [r for r in rows if r["group"] == group and r["status"] == "done" and r.get("final_top1") is not None]
        gkeys = [k for k in keys if any(k in r for r in rs)]
        for key in gkeys:
            others = [k for k in gkeys if k != key]
            xs = list(dict.fromkeys(str(r[key]) for r in rs))
            series = defaultdict(lambda: defaultdict(list))
            for r in rs:
                label = ", ".join(f"{k.split('.')[-1]}={r[k]}" for k in others) or "top-1"
                series[label][str(r[key])].append(r["final_top1"])
            fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
            ax = fig.subplots()
            for label, by_x in series.items():
                px = [x for x in xs if by_x.get(x)]
                ms = [_mean_std(by_x[x]) for x in px]
                ax.errorbar([xs.index(x) for x in px], [m for m, _ in ms], yerr=[s for _, s in ms], marker="o",
                            capsize=3, label=label)
            ax.set_xticks(range(len(xs)), xs, rotation=20)
            ax.set_xlabel(key)
            ax.set_ylabel("final val top-1 (%)")
            ax.set_title(f"{group}: top-1 by {key.split('.')[-1]}")
            ax.grid(alpha=0.3)
            if len(series) > 1:
                ax.legend(fontsize="small")
            path = os.path.join(out, f"{group}_{key.split('.')[-1]}.png")
            save_png(fig, path)
            written.append(path)
    return written


def _write_csv(path: str, fields: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def write_report(out: str) -> dict:
    """results.csv, summary.md, summary.json, the plots and (with comparisons) comparisons.csv in
    ``out``; returns the rows, points, comparison results and the plots' paths."""
    rows, keys = collect(out)
    _write_csv(os.path.join(out, "results.csv"), FIELDS[:3] + keys + FIELDS[3:], rows)
    points = summarize(rows)
    comparisons = verdicts(rows, load_comparisons(out))
    if comparisons:
        _write_csv(os.path.join(out, "comparisons.csv"), COMPARISON_FIELDS,
                   [{k: round(v, 4) if isinstance(v, float) else v for k, v in c.items()} for c in comparisons])
    elif os.path.exists(os.path.join(out, "comparisons.csv")):  # the sweep no longer has comparisons
        os.remove(os.path.join(out, "comparisons.csv"))
    text = summary_markdown(points, comparisons)
    atomic_write(os.path.join(out, "summary.md"), lambda f: f.write(text.encode()))
    plot_accuracy_vs_params(points, os.path.join(out, "accuracy_vs_params.png"))
    plots = plot_per_key(rows, keys, out)
    text = json.dumps({"points": [{k: v for k, v in p.items() if k != "rows"} for p in points],
                       "comparisons": comparisons}, indent=1)
    atomic_write(os.path.join(out, "summary.json"), lambda f: f.write(text.encode()))
    return {"rows": rows, "points": points, "comparisons": comparisons,
            "plots": [os.path.join(out, "accuracy_vs_params.png")] + plots}
