"""What a sweep is: named groups of trials, each trial a normal ``spin train`` run.

From the command line (one group, named ``grid``)::

    spin sweep --cfg BASE.yaml --grid KEY V1,V2 [--grid KEY2 W1,W2] [--seeds 3] --out DIR [KEY VALUE ...]

or from a sweep file (several groups, e.g. one per ablation; paths relative to the file)::

    base: ../configs/mnist/ConvMixer-study.yaml     # or a list of files, merged in order
    opts: [SOLVER.MAX_EPOCH, 8]                      # every trial
    seeds: 3
    groups:
      scope:                                         # a grid: the cartesian product of its values
        opts: [WEIGHT_SHARE.ENABLE, True, WEIGHT_SHARE.SHARE_RATE, 2]
        grid:
          WEIGHT_SHARE.SCOPE: [pointwise, depthwise, both, norm]
      fusion:                                        # or named trials
        trials:
          vanilla: [WEIGHT_SHARE.ENABLE, False]
          wfws-mean:
            parent: vanilla                          # starts from its final checkpoint (same seed)
            opts: [WEIGHT_SHARE.ENABLE, True, WEIGHT_SHARE.REDUCTION_FN, mean]
    comparisons:                                     # claims the report gives a verdict on
      - scope/SCOPE=pointwise > scope/SCOPE=norm     # left top-1 higher (or <: lower)
      - {a: fusion/wfws-mean, claim: "<", b: fusion/vanilla, name: fusion costs accuracy}

Trials are the product x seeds (``RNG_SEED`` 0..seeds-1); trial ``name`` of group ``g`` with seed
``k`` trains in DIR/g/name-s<k>. A grid trial is named from its values (``SCOPE=both``). A child
gets its parent's final checkpoint as TRAIN.CHECKPOINT_FILE_PATH with CHECKPOINT_EPOCH_RESET and
waits for it; a parent is named ``trial`` (same group) or ``group/trial``. A comparison names
trials ``group/trial`` without the seed; see report.py for its verdict. The published plan keys
(``CONVMIXER.WEIGHT_SHARE.X``) are read as ``WEIGHT_SHARE.X`` here too, so a trial's name, its
grid values (results.csv's columns) and its identity are those of the current name.
"""
from __future__ import annotations

import difflib
import itertools
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import yaml
from yacs.config import CfgNode

from ..config import ConfigError, get_cfg, load_config, plan_key, plan_opts
from ..config.parser import all_keys
from ..engine.checkpoint import checkpoint_path
from ..errors import SpinError


class SweepError(ConfigError):
    """A sweep file or grid that cannot be expanded into trials."""


@dataclass
class Trial:
    group: str
    name: str
    seed: int
    cfg_files: list
    opts: list                      # KEY VALUE overrides, the grid values and RNG_SEED included
    values: dict = field(default_factory=dict)  # the grid values (or the trial's own name)
    parent: Optional[str] = None    # "group/name" of the parent (same seed)
    out: str = ""
    start_from: str = ""            # the parent's final checkpoint

    @property
    def run_opts(self) -> list:
        """The overrides the trial runs with: its own, then its parent's final checkpoint."""
        extra = ["TRAIN.CHECKPOINT_FILE_PATH", self.start_from, "TRAIN.CHECKPOINT_EPOCH_RESET", "True"]
        return self.opts + (extra if self.start_from else [])

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}-s{self.seed}"

    @property
    def parent_key(self) -> Optional[str]:
        return f"{self.parent}-s{self.seed}" if self.parent else None


def _short(key: str) -> str:
    return key.split(".")[-1]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "x"


def parse_values(text: str) -> list:
    """'a,b,c' -> ['a', 'b', 'c']; a YAML list ('[[0,1],[1,0]]', '[1, 2]') -> its items."""
    text = text.strip()
    if text.startswith("["):
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SweepError(f"grid values {text!r} are not a valid YAML list ({e})") from None
        if not isinstance(values, list):
            raise SweepError(f"grid values {text!r} must be a list")
        return values
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise SweepError(f"empty grid values {text!r}; give V1,V2,...")
    return values


def _as_opt(value) -> str:
    """A YAML value as the command line gives it (yacs evaluates it as a Python literal)."""
    return value if isinstance(value, str) else repr(value) if not isinstance(value, (list, tuple)) \
        else "[" + ", ".join(_as_opt(v) if not isinstance(v, str) else repr(v) for v in value) + "]"


def _opts(x, where: str) -> list:
    if x is None:
        return []
    if not isinstance(x, list) or len(x) % 2:
        raise SweepError(f"{where}: opts must be a list of KEY, VALUE pairs, got {x!r}")
    return plan_opts([_as_opt(v) for v in x], where)


def _check_key(key: str, where: str) -> None:
    node = get_cfg()
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            close = difflib.get_close_matches(key, all_keys(get_cfg()), n=1, cutoff=0.6)
            raise SweepError(f"unknown config key {key} in {where}"
                             + (f"; did you mean {close[0]}?" if close else ""))
        node = node[part]


# Keys the sweep sets for every trial itself: a grid or override of them would be silently replaced.
RESERVED = {"OUTPUT_DIR": "the sweep puts each trial in DIR/<group>/<trial>-s<seed>; choose DIR with --out",
            "RNG_SEED": "the sweep sets RNG_SEED 0..seeds-1 per trial; choose the number with --seeds / seeds:"}


def check_not_reserved(keys, where: str) -> None:
    for key in list(keys)[::2] if not isinstance(keys, dict) else keys:
        if key in RESERVED:
            raise SweepError(f"{key} in {where}: {RESERVED[key]}")


def grid_trials(group: str, cfg_files: list, opts: list, grid: dict, seeds: int) -> list[Trial]:
    if not grid:
        raise SweepError(f"group {group!r} has an empty grid; give KEY: [values]")
    names: dict = {}
    for key in grid:
        names.setdefault(plan_key(key), []).append(key)
    for key, given in names.items():
        if len(given) > 1:
            raise SweepError(f"the grid of group {group!r} names {key} twice ({' and '.join(given)}); give all its "
                             f"values under {key}")
    grid, opts = {plan_key(k): v for k, v in grid.items()}, plan_opts(opts, f"the overrides of group {group!r}")
    for key in grid:
        _check_key(key, f"the grid of group {group!r}")
    check_not_reserved(grid, f"the grid of group {group!r}")
    check_not_reserved(opts, f"the overrides of group {group!r}")
    keys = list(grid)
    trials = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        name = _safe("_".join(f"{_short(k)}={_as_opt(v).replace(' ', '')}" for k, v in values.items()))
        extra = [x for k, v in values.items() for x in (k, _as_opt(v))]
        trials += [Trial(group, name, s, cfg_files, opts + extra + ["RNG_SEED", str(s)], values)
                   for s in range(seeds)]
    return trials


def load_sweep_file(path: str) -> tuple[dict, list[Trial]]:
    """Read a sweep file; returns (its settings, the trials without output folders)."""
    if not os.path.isfile(path):
        raise SweepError(f"sweep file {path!r} does not exist")
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SweepError(f"sweep file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("groups"), dict) or not spec["groups"]:
        raise SweepError(f"sweep file {path} needs 'groups:' with at least one group (see spin sweep --help)")
    unknown = set(spec) - {"base", "opts", "seeds", "groups", "comparisons", "description"}
    if unknown:
        raise SweepError(f"sweep file {path}: unknown entries {sorted(unknown)}; allowed: base, opts, seeds, "
                         f"groups, comparisons, description")
    here = os.path.dirname(os.path.abspath(path))
    base = spec.get("base") or []
    base = [base] if isinstance(base, str) else list(base)
    cfg_files = [b if os.path.isabs(b) else os.path.normpath(os.path.join(here, b)) for b in base]
    seeds = spec.get("seeds", 1)
    if not isinstance(seeds, int) or seeds < 1:
        raise SweepError(f"sweep file {path}: seeds must be an integer >= 1, got {seeds!r}")
    common = _opts(spec.get("opts"), f"{path} opts")
    trials: list[Trial] = []
    for group, g in spec["groups"].items():
        if not isinstance(g, dict) or ("grid" in g) == ("trials" in g):
            raise SweepError(f"group {group!r} needs exactly one of 'grid:' or 'trials:'")
        opts = common + _opts(g.get("opts"), f"group {group} opts")
        if "grid" in g:
            if not isinstance(g["grid"] or {}, dict):
                raise SweepError(f"group {group!r}: 'grid:' maps each config key to its values, e.g. "
                                 f"'grid: {{WEIGHT_SHARE.SHARE_RATE: [1, 2]}}', not a "
                                 f"{type(g['grid']).__name__}")
            grid = {str(k): (v if isinstance(v, list) else [v]) for k, v in (g["grid"] or {}).items()}
            trials += grid_trials(group, cfg_files, opts, grid, seeds)
            continue
        if not isinstance(g["trials"] or {}, dict):
            raise SweepError(f"group {group!r}: 'trials:' maps each trial's name to its overrides, e.g. "
                             f"'trials: {{vanilla: [KEY, VALUE], wfws: {{parent: vanilla, opts: [KEY, VALUE]}}}}', "
                             f"not a list")
        for name, t in (g["trials"] or {}).items():
            t = {"opts": t} if isinstance(t, list) or t is None else t
            if not isinstance(t, dict) or set(t) - {"opts", "parent"}:
                raise SweepError(f"trial {group}/{name}: give a list of KEY, VALUE pairs or "
                                 f"{{opts: [...], parent: name}}")
            parent = t.get("parent")
            if parent and "/" not in parent:
                parent = f"{group}/{parent}"
            extra = _opts(t.get("opts"), f"trial {group}/{name}")
            check_not_reserved(opts + extra, f"trial {group}/{name}")
            trials += [Trial(group, _safe(str(name)), s, cfg_files, opts + extra + ["RNG_SEED", str(s)],
                             {"trial": str(name)}, parent) for s in range(seeds)]
    comparisons = parse_comparisons(spec.get("comparisons"), f"sweep file {path}",
                                    {f"{t.group}/{t.name}" for t in trials})
    return {"seeds": seeds, "cfg_files": cfg_files, "description": spec.get("description", ""),
            "comparisons": comparisons}, trials


COMPARISON_FORM = "write 'GROUP/TRIAL > GROUP/TRIAL' (the left top-1 higher; '<' lower)"


def _comparison_parts(entry) -> tuple[str, str, str, str]:
    """(a, claim, b, name) of 'A > B' or {a: A, claim: '>', b: B, name: ...}."""
    if isinstance(entry, dict):
        if set(entry) - {"a", "b", "claim", "name"} or not {"a", "b", "claim"} <= set(entry):
            raise SweepError(f"comparison {entry!r} needs a, b and claim (and may have a name); {COMPARISON_FORM}")
        a, claim, b = (str(entry[k]).strip() for k in ("a", "claim", "b"))
        return a, claim, b, str(entry.get("name") or f"{a} {claim} {b}")
    if not isinstance(entry, str):
        raise SweepError(f"comparison {entry!r} is not a string; {COMPARISON_FORM}")
    parts = entry.split()
    if len(parts) != 3:  # without spaces around the operator
        parts = [p.strip() for p in re.split(r"([<>])", entry)]
    if len(parts) != 3:
        raise SweepError(f"comparison {entry!r} is not two trials and an operator; {COMPARISON_FORM}")
    a, claim, b = parts
    return a, claim, b, f"{a} {claim} {b}"


def _trial_name(side: str, entry, names: Optional[set]) -> str:
    """'group/trial' as the sweep names it (grid names are made safe the same way)."""
    group, _, trial = side.partition("/")
    name = f"{group}/{_safe(trial)}" if trial else side
    if names is not None and name not in names:
        close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
        raise SweepError(f"comparison {entry!r}: {side!r} is not a trial of this sweep; "
                         + (f"did you mean {close[0]}?" if close else "name it GROUP/TRIAL, without the seed"))
    return name


def parse_comparisons(entries, where: str, names: Optional[set] = None) -> list[dict]:
    """The ``comparisons:`` of a sweep as {name, a, claim, b}; every trial checked against ``names``
    when given. One line per problem."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise SweepError(f"{where}: comparisons must be a list, e.g. [a/x > a/y]; {COMPARISON_FORM}")
    out, problems = [], []
    for entry in entries:
        try:
            a, claim, b, name = _comparison_parts(entry)
            if claim not in (">", "<"):
                raise SweepError(f"comparison {entry!r}: operator {claim!r} is neither > nor <; {COMPARISON_FORM}")
            a, b = _trial_name(a, entry, names), _trial_name(b, entry, names)
            if a == b:
                raise SweepError(f"comparison {entry!r} compares {a} with itself; name two different trials")
            out.append({"name": name, "a": a, "claim": claim, "b": b})
        except SweepError as e:
            problems.append(f"{where}: {e}")
    if problems:
        raise SweepError("\n".join(problems))
    return out


def max_epoch(cfg_files, opts) -> Optional[int]:
    """SOLVER.MAX_EPOCH of a trial's config (None when the config does not load)."""
    try:
        return load_config(list(cfg_files), list(opts)).SOLVER.MAX_EPOCH
    except ConfigError:
        return None


def check_trials(trials: list[Trial]) -> None:
    """Load and check every trial's config (its plan resolved against the model's depth) before
    the sweep writes anything. One line per problem, naming the trials that have it."""
    from ..config import check_cfg

    problems: dict[str, list[str]] = {}
    for t in trials:
        try:  # t.opts: a child's parent checkpoint does not exist yet
            cfg = load_config(list(t.cfg_files), list(t.opts))
            check_cfg(cfg, "train", parent_checkpoint=bool(t.parent))
        except SpinError as e:
            for line in str(e).splitlines():
                problems.setdefault(line.strip(), []).append(t.key)
    if problems:
        raise SweepError("\n".join(
            f"trial{'s' if len(keys) > 1 else ''} {', '.join(keys[:3])}"
            f"{f' (+{len(keys) - 3} more)' if len(keys) > 3 else ''}: {msg}" for msg, keys in problems.items()))


def finalize(trials: list[Trial], out: str) -> list[Trial]:
    """Output folders; parents resolved to their final checkpoints and ordered first (a parent
    whose config does not load gets epoch 1: ``check_trials`` reports it)."""
    by_key = {t.key: t for t in trials}
    if len(by_key) != len(trials):
        raise SweepError("two trials share a name; give distinct trial names / grid values")
    for t in trials:
        t.out = os.path.join(out, t.group, f"{t.name}-s{t.seed}")
    for t in trials:
        if t.parent:
            parent = by_key.get(t.parent_key)
            if parent is None:
                raise SweepError(f"trial {t.key} names parent {t.parent!r}, which is not a trial of this sweep")
            epochs = max_epoch(parent.cfg_files, parent.opts) or 1  # a broken parent fails; so will t
            t.start_from = checkpoint_path(parent.out, epochs - 1)
    ordered, seen = [], set()

    def visit(t, chain=()):
        if t.key in chain:
            raise SweepError(f"trials {' -> '.join(chain + (t.key,))} form a cycle of parents")
        if t.key in seen:
            return
        if t.parent:
            visit(by_key[t.parent_key], chain + (t.key,))
        seen.add(t.key)
        ordered.append(t)

    for t in trials:
        visit(t)
    for t in ordered:
        t.opts = t.opts + ["OUTPUT_DIR", t.out]
    return ordered
