"""The one check of a config's values (SlowFast's ``assert_and_infer_cfg``), run before a job
writes anything. It reports every problem it finds, one line each. What needs a module to
resolve (the plan against the model's blocks, timm's augmentation strings, the data folder, a
checkpoint's keys) is resolved by the job right after, still before the first write, and each
module raises its own error type for its own values."""
from __future__ import annotations

import math
import os

from yacs.config import CfgNode

from ..paths import folder_problem
from ..sharing import SharingError
from .defaults import CHOICES, FAMILY_SECTIONS, MODEL_FAMILIES, get_cfg
from .parser import ConfigError

def check_cfg(cfg: CfgNode, job: str = "train", procs_per_machine: int = 1, parent_checkpoint: bool = False) -> None:
    """Raise one ConfigError listing every problem of ``cfg`` for ``job`` (one per line).
    ``parent_checkpoint``: a sweep trial whose TRAIN.CHECKPOINT_FILE_PATH its parent will write."""
    problems: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            problems.append(msg)

    for key, allowed in CHOICES.items():
        if key == "MODEL.MODEL_NAME":  # aliases or a named builder: the family lookup says which
            continue
        sec, _, name = key.rpartition(".")
        value = (cfg[sec] if sec else cfg)[name]
        norm, known = str(value).lower(), {a.lower() for a in allowed}
        prefix, _, rest = norm.partition("/")  # a timm name (wds/NAME): its prefix decides
        need(norm in known or (key.endswith(".DATASET") and bool(rest) and f"{prefix}/name" in known),
             f"unknown {key} {value!r}; allowed: {', '.join(allowed)}")

    # ------------------------------------------------------------------ model and plan
    from ..models.factory import family_of, fusion_from_cfg, plan_from_cfg, relax_from_cfg

    desc, default = None, get_cfg()
    try:
        desc = family_of(cfg)
    except ConfigError as e:
        problems.append(str(e))
    family = desc and desc.name
    if desc is not None:
        sec = desc.section
        arch = cfg[sec]
        if desc.stacks is None:
            need(arch.DEPTH >= 1, f"{sec}.DEPTH must be >= 1, got {arch.DEPTH}")
            deep = arch.DEPTH >= 1
        else:  # a hierarchical family's own check names a bad stage depth
            stacks = desc.stacks(cfg)
            deep = bool(stacks) and all(isinstance(d, int) and d >= 1 for _, d in stacks)
        # the plan keys' own rules, where the model build enforces them (a plan needs a depth)
        for resolve in ((plan_from_cfg,) if deep else ()) + (fusion_from_cfg, relax_from_cfg):
            try:
                resolve(cfg)
            except SharingError as e:
                problems.append(str(e))
        problems += _foreign_keys(cfg, family, default)
        problems += desc.check(cfg)  # what this misses, the build check below still catches
        if desc.width_key:
            need(arch[desc.width_key] >= 1, f"{sec}.{desc.width_key} must be >= 1, got {arch[desc.width_key]}")
    need(cfg.MODEL.NUM_CLASSES >= 1, f"MODEL.NUM_CLASSES must be >= 1, got {cfg.MODEL.NUM_CLASSES}")
    need(0 <= cfg.MODEL.DROPOUT_RATE < 1, f"MODEL.DROPOUT_RATE must be in [0, 1), got {cfg.MODEL.DROPOUT_RATE}")
    need(0 <= cfg.MODEL.DROP_PATH_RATE < 1,
         f"MODEL.DROP_PATH_RATE must be in [0, 1), got {cfg.MODEL.DROP_PATH_RATE}")
    need(0 < cfg.MODEL_EMA.DECAY < 1, f"MODEL_EMA.DECAY must be in (0, 1), got {cfg.MODEL_EMA.DECAY}")
    need(cfg.DATA.NUM_FRAMES == 1, f"DATA.NUM_FRAMES must be 1 (spin trains on images), got {cfg.DATA.NUM_FRAMES}")
    need(str(cfg.MODEL.ARCH).lower() == "2d", f"MODEL.ARCH must be 2d (spin trains on images), got {cfg.MODEL.ARCH!r}")
    need(list(cfg.DATA.INPUT_CHANNEL_NUM) == [3] and all(type(c) is int for c in cfg.DATA.INPUT_CHANNEL_NUM),
         f"DATA.INPUT_CHANNEL_NUM must be [3] (images are read as RGB), got {cfg.DATA.INPUT_CHANNEL_NUM}")

    # ------------------------------------------------------------------ data
    d = cfg.DATA
    for key in ("TRAIN_CROP_SIZE", "TEST_CROP_SIZE"):
        need(d[key] >= 1, f"DATA.{key} must be >= 1, got {d[key]}")
    for key in ("MEAN", "STD"):
        need(len(d[key]) == 3, f"DATA.{key} needs 3 values (R, G, B), got {list(d[key])}")
    need(all(s > 0 for s in d.STD), f"DATA.STD values must be > 0, got {list(d.STD)}")
    need(0 < d.VAL_CROP_RATIO <= 1, f"DATA.VAL_CROP_RATIO must be in (0, 1], got {d.VAL_CROP_RATIO}")
    sc, ar = list(d.TRAIN_JITTER_SCALES_RELATIVE), list(d.TRAIN_JITTER_ASPECT_RELATIVE)
    need(len(sc) == 2 and 0 < sc[0] <= sc[1] <= 1,
         f"DATA.TRAIN_JITTER_SCALES_RELATIVE must be [min, max] with 0 < min <= max <= 1, got {sc}")
    need(len(ar) == 2 and 0 < ar[0] <= ar[1],
         f"DATA.TRAIN_JITTER_ASPECT_RELATIVE must be [min, max] with 0 < min <= max, got {ar}")
    need(d.TRAIN_IMAGES_PER_CLASS >= 0,
         f"DATA.TRAIN_IMAGES_PER_CLASS must be >= 0 (0: all), got {d.TRAIN_IMAGES_PER_CLASS}")
    for key in ("TRAIN_NUM_SAMPLES", "VAL_NUM_SAMPLES"):
        need(d[key] >= 0, f"DATA.{key} must be >= 0 (0: the count the source records), got {d[key]}")
    for key in ("TRAIN_SPLIT", "VAL_SPLIT"):
        need(bool(str(d[key]).strip()), f"DATA.{key} is empty; name a split (train, val, validation, ...)")
    need(cfg.DATA_LOADER.NUM_WORKERS >= 0,
         f"DATA_LOADER.NUM_WORKERS must be >= 0, got {cfg.DATA_LOADER.NUM_WORKERS}")
    a, m = cfg.AUG, cfg.MIXUP
    need(0 <= a.RE_PROB <= 1, f"AUG.RE_PROB must be in [0, 1], got {a.RE_PROB}")
    need(a.RE_COUNT >= 1, f"AUG.RE_COUNT must be >= 1, got {a.RE_COUNT}")
    need(a.COLOR_JITTER >= 0, f"AUG.COLOR_JITTER must be >= 0, got {a.COLOR_JITTER}")
    for key in ("ALPHA", "CUTMIX_ALPHA"):
        need(m[key] >= 0, f"MIXUP.{key} must be >= 0, got {m[key]}")
    for key in ("PROB", "SWITCH_PROB"):
        need(0 <= m[key] <= 1, f"MIXUP.{key} must be in [0, 1], got {m[key]}")
    need(0 <= m.LABEL_SMOOTH_VALUE < 1, f"MIXUP.LABEL_SMOOTH_VALUE must be in [0, 1), got {m.LABEL_SMOOTH_VALUE}")
    need(not (m.ENABLE and cfg.MODEL.LOSS_FUNC == "cross_entropy"),
         "MIXUP.ENABLE makes soft targets: set MODEL.LOSS_FUNC soft_cross_entropy (or disable mixup)")

    # ------------------------------------------------------------------ solver and run
    s = cfg.SOLVER
    need(s.MAX_EPOCH >= 1, f"SOLVER.MAX_EPOCH must be >= 1, got {s.MAX_EPOCH}")
    for key in ("BASE_LR", "WEIGHT_DECAY", "WARMUP_START_LR", "COSINE_END_LR", "MOMENTUM", "DAMPENING"):
        need(s[key] >= 0 and math.isfinite(s[key]), f"SOLVER.{key} must be a finite number >= 0, got {s[key]}")
    need(cfg.BN.WEIGHT_DECAY >= 0, f"BN.WEIGHT_DECAY must be >= 0, got {cfg.BN.WEIGHT_DECAY}")
    need(s.WARMUP_EPOCHS >= 0, f"SOLVER.WARMUP_EPOCHS must be >= 0, got {s.WARMUP_EPOCHS}")
    need(s.CLIP_GRAD_L2NORM is None or s.CLIP_GRAD_L2NORM > 0,
         f"SOLVER.CLIP_GRAD_L2NORM must be > 0 (or None: no clipping), got {s.CLIP_GRAD_L2NORM}")
    t = cfg.TRAIN
    for key in ("EVAL_PERIOD", "CHECKPOINT_PERIOD"):
        need(t[key] >= 1, f"TRAIN.{key} must be >= 1 (every N epochs; the last epoch always), got {t[key]}")
    need(cfg.LOG_PERIOD >= 0, f"LOG_PERIOD must be >= 0 (0: no per-iteration lines), got {cfg.LOG_PERIOD}")
    need(t.MAX_ITERS_PER_EPOCH >= 0, f"TRAIN.MAX_ITERS_PER_EPOCH must be >= 0, got {t.MAX_ITERS_PER_EPOCH}")
    need(cfg.NUM_GPUS >= 0, f"NUM_GPUS must be >= 0 (0: the CPU), got {cfg.NUM_GPUS}")
    need(cfg.NUM_SHARDS >= 1, f"NUM_SHARDS must be >= 1, got {cfg.NUM_SHARDS}")
    need(0 <= cfg.SHARD_ID < max(cfg.NUM_SHARDS, 1),
         f"SHARD_ID must be in [0, NUM_SHARDS {cfg.NUM_SHARDS}), got {cfg.SHARD_ID}")
    for sec in ("TRAIN", "TEST"):
        bs = cfg[sec].BATCH_SIZE
        if bs < 1:
            problems.append(f"{sec}.BATCH_SIZE must be >= 1, got {bs}")
        elif cfg.NUM_GPUS > 0 and bs % cfg.NUM_GPUS:
            problems.append(
                f"{sec}.BATCH_SIZE {bs} is not divisible by NUM_GPUS {cfg.NUM_GPUS}; the batch size "
                f"is per machine and split over its GPUs, so pick a multiple of {cfg.NUM_GPUS}")
        elif bs % procs_per_machine:
            problems.append(f"{sec}.BATCH_SIZE {bs} is not divisible by the {procs_per_machine} "
                            f"processes on this machine; pick a multiple of {procs_per_machine}")
    if job == "train":
        need(t.ENABLE or cfg.TEST.ENABLE, "TRAIN.ENABLE and TEST.ENABLE are both False: the job would do "
                                          "nothing; enable one")
    if job in ("train", "test"):
        bad = folder_problem(cfg.OUTPUT_DIR or ".", "OUTPUT_DIR")
        need(bad is None, bad or "")
    need(t.GRAD_ACCUM_STEPS >= 1, f"TRAIN.GRAD_ACCUM_STEPS must be >= 1 (1: a step per batch), got {t.GRAD_ACCUM_STEPS}")
    problems += _distill_problems(cfg, default, job, parent_checkpoint)
    for key, used in (("TRAIN.CHECKPOINT_FILE_PATH", job in ("train", "fuse")),
                      ("TEST.CHECKPOINT_FILE_PATH", job == "test" or (job == "train" and cfg.TEST.ENABLE))):
        sec, _, name = key.partition(".")
        path = cfg[sec][name]
        need(not (used and path and not os.path.isfile(path)),
             f"{key} {path!r} does not exist; give the path of a .pyth/.pth/.safetensors file")
    if not problems and family is not None:
        # Last, once every value is in range: build the model itself (on the meta device, no
        # memory) and run it at the crop sizes, so what only the model or timm rejects, and shapes
        # that fail only at the first forward, are config errors before the job writes anything.
        from ..models.factory import build_problem

        bad = build_problem(cfg)
        need(bad is None, bad or "")
    if problems:
        raise ConfigError("\n".join(problems))


def _distill_problems(cfg: CfgNode, default: CfgNode, job: str, parent_checkpoint: bool) -> list[str]:
    d, out = cfg.DISTILL, []
    if not d.ENABLE:
        stray = [f"DISTILL.{k}" for k in d if k != "ENABLE" and d[k] != default.DISTILL[k]]
        if stray:
            out.append(f"{', '.join(stray)} set but DISTILL.ENABLE is False: nothing reads "
                       f"{'them' if len(stray) > 1 else 'it'}; set DISTILL.ENABLE True, or drop "
                       f"{'them' if len(stray) > 1 else 'it'}")
        return out
    if not 0 <= d.ALPHA <= 1:
        out.append(f"DISTILL.ALPHA must be in [0, 1] (the weight of the KD term), got {d.ALPHA}")
    if not (d.TAU > 0 and math.isfinite(d.TAU)):
        out.append(f"DISTILL.TAU must be a finite temperature > 0, got {d.TAU}")
    for key in ("HIDDEN_WEIGHT", "ATTN_WEIGHT"):
        if not (d[key] >= 0 and math.isfinite(d[key])):
            out.append(f"DISTILL.{key} must be a finite number >= 0, got {d[key]}")
    if (d.HIDDEN_WEIGHT or d.ATTN_WEIGHT) and not list(d.LAYERS):
        out.append("DISTILL.HIDDEN_WEIGHT / ATTN_WEIGHT need DISTILL.LAYERS: the student blocks to distil (e.g. [-1])")
    if list(d.TEACHER_LAYERS) and len(d.TEACHER_LAYERS) != len(d.LAYERS):
        out.append(f"DISTILL.TEACHER_LAYERS has {len(d.TEACHER_LAYERS)} entries but DISTILL.LAYERS {len(d.LAYERS)}: "
                   f"give one teacher layer per student layer, or [] for the same layers")
    path = d.TEACHER or cfg.TRAIN.CHECKPOINT_FILE_PATH
    if not path:
        if not parent_checkpoint:
            out.append("DISTILL.ENABLE needs a teacher: set DISTILL.TEACHER to its checkpoint file (default: "
                       "TRAIN.CHECKPOINT_FILE_PATH, the vanilla checkpoint a WFWS run starts from)")
        return out
    key = "DISTILL.TEACHER" if d.TEACHER else "TRAIN.CHECKPOINT_FILE_PATH (the default teacher)"
    ckdir = os.path.join(os.path.abspath(cfg.OUTPUT_DIR or "."), "checkpoints")
    absolute = os.path.abspath(path)
    if absolute == os.path.abspath(cfg.OUTPUT_DIR or ".") or absolute.startswith(ckdir + os.sep):
        out.append(f"{key} {path!r} is this run's own OUTPUT_DIR or one of its checkpoints: the student would "
                   f"distil from itself, and its next checkpoints replace the file; give the checkpoint of "
                   f"another run (the vanilla one)")
    elif os.path.isdir(path):
        out.append(f"{key} {path!r} is a folder; give the teacher's checkpoint file (.pyth/.pth/.safetensors)")
    elif job == "train" and d.TEACHER and not os.path.isfile(path):
        out.append(f"{key} {path!r} does not exist; give the teacher's checkpoint file (.pyth/.pth/.safetensors)")
    return out


def changed_arch_keys(cfg: CfgNode, sec: str, default: CfgNode) -> list[str]:
    """The architecture keys of section ``sec`` that differ from ``default``'s, as ``SEC.KEY``."""
    return [f"{sec}.{k}" for k in cfg[sec] if cfg[sec][k] != default[sec][k]]


def _foreign_keys(cfg: CfgNode, family: str, default: CfgNode) -> list[str]:
    """Keys of another family's architecture section that differ from their defaults: the chosen
    family never reads them, so a run (or a sweep axis) over them would silently change nothing.
    Defaults are fine: published YAMLs carry whole schemas."""
    readers = {fam: [n for n, f in MODEL_FAMILIES.items() if f == fam] for fam in FAMILY_SECTIONS}
    out = []
    for fam, sec in FAMILY_SECTIONS.items():
        if fam == family:
            continue
        stray = changed_arch_keys(cfg, sec, default)
        if stray:
            out.append(f"{', '.join(stray)} set, but MODEL.MODEL_NAME {cfg.MODEL.MODEL_NAME} does not read {sec}.* "
                       f"(its architecture is {FAMILY_SECTIONS[family]}.*; {sec}.* is read by MODEL.MODEL_NAME "
                       f"{' / '.join(readers[fam])}); drop {'these keys' if len(stray) > 1 else 'it'} or change "
                       f"MODEL.MODEL_NAME")
    return out
