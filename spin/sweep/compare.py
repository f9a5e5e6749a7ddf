"""Verdicts on a sweep's ``comparisons:``, each a claim 'A > B' (A's top-1 above B's) or 'A < B'.

The seeds give each trial a few top-1 values; the difference of the means gets a 95% two-sided
t-interval: paired (on the per-seed differences) when both trials finished the same seeds, which
removes what a seed does to both, else Welch's (unequal variances). The claim ``holds`` if the
interval excludes 0 on its side, is ``reversed`` if it excludes 0 on the other, and is a ``tie``
otherwise; ``n/a`` (with the reason) with fewer than 2 values a side.

The sweep writes its comparisons to DIR/comparisons.yaml, so that ``spin sweep --report DIR``
judges them from DIR alone.
"""
from __future__ import annotations

import math
import os
import statistics
from typing import Optional

import yaml

from ..engine.runfolder import atomic_write
from .spec import SweepError, parse_comparisons

COMPARISONS = "comparisons.yaml"
FIELDS = ["comparison", "claim", "a", "b", "metric", "n_a", "n_b", "paired", "mean_a", "mean_b", "diff", "ci_low",
          "ci_high", "verdict", "reason"]


def save_comparisons(out: str, comparisons: list[dict]) -> None:
    path = os.path.join(out, COMPARISONS)
    if comparisons:
        text = yaml.safe_dump(comparisons, sort_keys=False)
        atomic_write(path, lambda f: f.write(text.encode()))
    elif os.path.exists(path):  # the sweep file dropped them: the report must not judge stale claims
        os.remove(path)


def load_comparisons(out: str) -> list[dict]:
    path = os.path.join(out, COMPARISONS)
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            entries = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SweepError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix it, or delete it to "
                         f"drop the comparisons") from None
    # the trials are not checked here: one missing from DIR gets an n/a row, not a refused report
    return parse_comparisons(entries, path)


def primary_metric(done: list[dict]) -> str:
    """The final checkpoint's top-1 when every finished trial has it, else the in-loop final top-1."""
    return "ckpt_top1" if done and all(r.get("ckpt_top1") is not None for r in done) else "final_top1"


def _t(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_interval(diffs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the per-seed differences; a zero spread gives a zero-width interval."""
    mean = statistics.fmean(diffs)
    half = _t(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def welch_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(mean a - mean b, low, high) with Welch-Satterthwaite degrees of freedom."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:  # the degrees of freedom are 0/0 here; no spread means no doubt about the diff
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = _t(df) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def verdict(claim: str, low: float, high: float) -> str:
    above, below = low > 0, high < 0
    if not (above or below):
        return "tie"
    return "holds" if above == (claim == ">") else "reversed"


def _values(rows: list[dict], trial: str, metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in rows if f"{r['group']}/{r['trial']}" == trial and r.get(metric) is not None}


def judge(a: dict[int, float], b: dict[int, float], claim: str) -> dict:
    """The interval and verdict of 'a claim b' from {seed: top-1} of each side."""
    res = {"n_a": len(a), "n_b": len(b), "paired": "yes" if a and a.keys() == b.keys() else "no",
           "mean_a": statistics.fmean(a.values()) if a else None,
           "mean_b": statistics.fmean(b.values()) if b else None}
    if res["paired"] == "yes" and len(a) < 2:
        return {**res, "verdict": "n/a", "reason": f"{len(a)} paired seed; need 2"}
    short = [f"{side} has {len(v)} finished seed{'s' if len(v) != 1 else ''}" for side, v in (("a", a), ("b", b))
             if len(v) < 2]
    if short:
        return {**res, "verdict": "n/a", "reason": f"{', '.join(short)}; need 2 a side"}
    if res["paired"] == "yes":
        diff, low, high = paired_interval([a[s] - b[s] for s in sorted(a)])
    else:
        diff, low, high = welch_interval(list(a.values()), list(b.values()))
    return {**res, "diff": diff, "ci_low": low, "ci_high": high, "verdict": verdict(claim, low, high), "reason": ""}


def verdicts(rows: list[dict], comparisons: list[dict]) -> list[dict]:
    """One row per comparison, over the finished trials of ``rows`` (results.csv's rows)."""
    done = [r for r in rows if r["status"] == "done"]
    present = {f"{r['group']}/{r['trial']}" for r in rows}
    out = []
    for c in comparisons:
        base = {"comparison": c["name"], "claim": c["claim"], "a": c["a"], "b": c["b"]}
        missing = [t for t in (c["a"], c["b"]) if t not in present]
        if missing:
            out.append({**base, "verdict": "n/a", "reason": f"no trial {' or '.join(missing)} in the sweep folder"})
            continue
        sides = [r for r in done if f"{r['group']}/{r['trial']}" in (c["a"], c["b"])]
        metric = primary_metric(sides)  # one metric for both sides, never checkpoint against in-loop
        a, b = _values(done, c["a"], metric), _values(done, c["b"], metric)
        out.append({**base, "metric": metric, **judge(a, b, c["claim"])})
    return out


def _num(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def comparisons_markdown(results: list[dict]) -> str:
    lines = ["## Comparisons", "",
             "Each claim against a 95% t-interval of mean(a) − mean(b) in top-1 points: paired on the per-seed "
             "differences when both finished the same seeds, else Welch's; holds / reversed when the interval "
             "excludes 0 on the claimed / the other side, tie when it holds 0.", "",
             "| claim | top-1 | n a / b | paired | mean a | mean b | diff | 95% CI | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ci = f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if r.get("ci_low") is not None else "-"
        metric = {"ckpt_top1": "checkpoint", "final_top1": "in-loop"}.get(r.get("metric"), "-")
        verdict_text = r["verdict"] + (f" ({r['reason']})" if r.get("reason") else "")
        claim = f"{r['a']} {r['claim']} {r['b']}"
        claim = claim if r["comparison"] == claim else f"{r['comparison']}: {claim}"
        lines.append(f"| {claim} | {metric} | {r.get('n_a', 0)} / "
                     f"{r.get('n_b', 0)} | {r.get('paired', '-')} | {_num(r.get('mean_a'))} | "
                     f"{_num(r.get('mean_b'))} | {_num(r.get('diff'))} | {ci} | {verdict_text} |")
    return "\n".join(lines + [""])
