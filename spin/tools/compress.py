"""``spin compress``: a trained vanilla model to its shared, distilled, fused (and exported) form in
one folder, with a table that measures teacher and student the same way.

Steps, each writing under ``--out``:

1. ``analysis/`` (``--suggest N`` only): spin analyze's best contiguous plan with N sets;
2. ``train/``: the WFWS model initialised from the teacher's weights, fine-tuned with distillation
   from the teacher (``DISTILL.*``; the recipe is the teacher's stored one unless overridden) —
   a spin training run, so a rerun of the same command resumes it;
3. ``fused.pyth`` and ``fused.safetensors``: spin fuse of its final checkpoint (the WS model);
4. ``export/model.<fmt>`` (``--export pt2|onnx``): spin export of the fused file, logits verified;
5. ``compress.json`` / ``compress.md``: parameters, file size, top-1 and loss of the teacher and of
   the fused student evaluated by one function on one val loader, each rebuilt from its file in a
   fresh model, and their inference speed timed alternately in this process (a ratio, not a
   promise). The fused student must reproduce the training run's own checkpoint evaluation, or the
   command fails (exit 1) instead of reporting it.

Every input is checked, and the teacher built, before the first of these is written.
"""
from __future__ import annotations

import json
import os
import statistics
from typing import Optional, Sequence

import torch

from ..config import ConfigError, check_cfg, get_cfg, load_config, merge_opts
from ..data import build_dataset, build_loader
from ..engine import checkpoint as cu
from ..engine.distill import build_distillation, load_teacher
from ..engine.distributed import DistInfo, pick_device
from ..engine.loop import evaluate
from ..engine.runfolder import atomic_write
from ..engine.verify import ConsistencyError
from ..models.factory import family_of
from ..paths import check_folder
from ..share_transform import unique_parameters
from .bench import _timed
from .fuse import fuse_checkpoint, human_bytes

STUDENT_ONLY = ("WEIGHT_SHARE.", "DISTILL.", "SOLVER.", "TRAIN.GRAD_ACCUM_STEPS", "MODEL_EMA.")


def _split(opts: Sequence[str]) -> tuple[list, list]:
    """KEY VALUE pairs for both configs, and those only the student reads (plan, KD, recipe)."""
    if len(opts) % 2:
        raise ConfigError(f"overrides come as KEY VALUE pairs; {opts[-1]!r} has no value")
    both, student = [], []
    for k, v in zip(opts[::2], opts[1::2]):
        (student if k.startswith(STUDENT_ONLY) else both).extend([k, v])
    return both, student


def teacher_config(checkpoint: str, cfg_files: Sequence[str], opts: Sequence[str]):
    """The teacher's config: ``cfg_files`` (a weights-only file needs them) or the file's stored one."""
    if cfg_files:
        cfg = load_config(list(cfg_files), list(opts))
    else:
        ck = cu.load_checkpoint(checkpoint)
        if cu.stored_cfg(ck) is None:
            raise ConfigError(f"{checkpoint} stores no config (a timm or bare state-dict file); give the config "
                              f"that describes its architecture and data with --cfg FILE")
        cfg = cu.cfg_from_checkpoint(checkpoint, opts, ck)
    if cfg.WEIGHT_SHARE.ENABLE:
        raise ConfigError(f"spin compress starts from a vanilla model, but the config of {checkpoint} shares "
                          f"its layers (WEIGHT_SHARE.ENABLE True); give the vanilla checkpoint it came from")
    return cfg


def student_config(tcfg, checkpoint: str, out: str, share_rate: int, num_sets: int, fusion: str,
                   epochs: int, distill: bool, student_opts: Sequence[str], layer_map: Optional[list] = None):
    cfg = tcfg.clone()
    cfg.defrost()
    ws = cfg.WEIGHT_SHARE
    ws.ENABLE, ws.REDUCTION_FN = True, fusion
    if layer_map:
        ws.SHARING_MAPPING, ws.LAYER_MAP, ws.SHARE_RATE, ws.NUM_SETS = "custom", list(layer_map), 1, 0
    else:  # a set count replaces the rate (both given must agree, and only one was)
        ws.SHARE_RATE, ws.NUM_SETS = (1, num_sets) if num_sets else (share_rate, 0)
    t = cfg.TRAIN
    t.CHECKPOINT_FILE_PATH, t.CHECKPOINT_EPOCH_RESET, t.AUTO_RESUME = os.path.abspath(checkpoint), True, True
    cfg.DISTILL = get_cfg().DISTILL
    if distill:
        cfg.DISTILL.ENABLE, cfg.DISTILL.TEACHER = True, os.path.abspath(checkpoint)
    if epochs:
        cfg.SOLVER.MAX_EPOCH = epochs
        cfg.SOLVER.WARMUP_EPOCHS = min(cfg.SOLVER.WARMUP_EPOCHS, epochs / 10)
    cfg.OUTPUT_DIR = os.path.join(out, "train")
    merge_opts(cfg, list(student_opts))
    return cfg


def _speed(models: dict, x: torch.Tensor, rounds: int = 5) -> dict:
    """img/s of each model on batch ``x``: the median of ``rounds`` timed passes, the models taking
    turns so that a busy machine slows all of them alike."""
    times = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)  # warm-up
        for _ in range(rounds):
            for k, m in models.items():
                times[k].append(_timed(lambda: m(x), x.device, 1))
    return {k: x.shape[0] / statistics.median(v) for k, v in times.items()}


def _row(name: str, path: str, model, res: dict) -> dict:
    return {"model": name, "file": path, "parameters": sum(p.numel() for p in model.parameters()),
            "unique_parameters": unique_parameters(model), "file_bytes": os.path.getsize(path),
            # the model's tensors alone: a training checkpoint's file also holds its optimizer state
            "weight_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
            "top1": 100.0 - res["top1_err"], "top5": 100.0 - res["top5_err"], "loss": res["loss"],
            "samples": res["samples"]}


def markdown(result: dict) -> str:
    lines = [f"# spin compress: {result['teacher']}", "",
             f"plan: {result['plan']}, fusion {result['fusion']}, distillation {result['distill']}, "
             f"{result['epochs']} epochs; val: {result['rows'][0]['samples']} images ({result['data']}); speed: "
             f"batch {result['speed_batch']} on {result['device']}", "",
             "| model | parameters | unique | weights | file | top-1 | loss | img/s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['unique_parameters']:,} | "
                     f"{human_bytes(r['weight_bytes'])} | {human_bytes(r['file_bytes'])} | {r['top1']:.2f} | {r['loss']:.4f} | "
                     f"{r.get('img_s', float('nan')):.0f} |")
    t, s = result["rows"][0], result["rows"][-1]
    lines += ["", f"student / teacher: {s['unique_parameters'] / t['unique_parameters']:.3f}x parameters, "
                  f"{s['weight_bytes'] / t['weight_bytes']:.3f}x weight bytes, top-1 {s['top1'] - t['top1']:+.2f} points, "
                  f"{s['img_s'] / t['img_s']:.2f}x img/s"]
    if result.get("export"):
        e = result["export"]
        lines.append(f"export: {e['output']} ({e['format']}, {human_bytes(e['file_bytes'])}, max |logit diff| "
                     f"{e['max_abs_diff']:.2g})")
    return "\n".join(lines) + "\n"


def preflight(cfg, teacher) -> None:
    """What the training run would refuse at its start, refused before compress writes anything:
    the train split, the start file against the student, the distillation taps against both."""
    from ..engine.trainer import build_loss
    from ..models import build_model

    build_dataset(cfg, "train")
    student = build_model(cfg)
    ck = cu.load_checkpoint(cfg.TRAIN.CHECKPOINT_FILE_PATH)
    cu.load_model_weights(student, ck["model_state"], source=cfg.TRAIN.CHECKPOINT_FILE_PATH)
    loss = build_distillation(cfg, build_loss(cfg), teacher, student)
    if loss is not None:
        loss.close()


def compress(checkpoint: str, out: str, cfg_files: Sequence[str] = (), opts: Sequence[str] = (),
             share_rate: int = 2, num_sets: int = 0, fusion: str = "mean", suggest: int = 0, epochs: int = 0,
             distill: bool = True, export: str = "", say=print) -> dict:
    from ..engine.trainer import train
    from ..models.factory import model_depth, model_stacks

    if not os.path.isfile(checkpoint):
        raise ConfigError(f"--checkpoint {checkpoint!r} does not exist; give the trained vanilla model's "
                          f".pyth/.pth/.safetensors file")
    if not fusion or str(fusion).lower() in ("none", "null"):
        raise ConfigError("spin compress fuses the shared model at the end: give --fusion mean (or "
                          "scalar_weighted_mean, channel_weighted_mean, choose_first)")
    if export and export not in ("pt2", "onnx"):
        raise ConfigError(f"unknown --export {export!r}; allowed: pt2, onnx")
    if epochs < 0:
        raise ConfigError(f"--epochs must be >= 1 (0: the teacher's SOLVER.MAX_EPOCH), got {epochs}")
    check_folder(out, "--out")
    out = os.path.abspath(out)
    both, student_opts = _split(opts)
    tcfg = teacher_config(checkpoint, cfg_files, both)
    check_cfg(tcfg, "stats")
    if suggest and len(model_stacks(tcfg)) > 1:
        raise ConfigError(f"--suggest finds a plan for one block stack; {family_of(tcfg).name} has "
                          f"{len(model_stacks(tcfg))} stages: give --share-rate or --num-sets (each stage's)")
    if suggest and not 1 <= suggest <= model_depth(tcfg):
        raise ConfigError(f"--suggest {suggest}: give 1 <= N <= the depth {model_depth(tcfg)}")
    cfg = student_config(tcfg, checkpoint, out, share_rate, num_sets, fusion, epochs, distill, student_opts)
    check_cfg(cfg, "train")  # the plan, the recipe, the teacher path
    val = build_dataset(cfg, "val")
    classes = list(getattr(val, "classes", []))
    if cfg.NUM_GPUS > 1:
        raise ConfigError(f"spin compress trains in one process; NUM_GPUS {cfg.NUM_GPUS} needs torchrun: run its "
                          f"steps (spin train with DISTILL, spin fuse, spin export) or set NUM_GPUS 1")
    teacher, _ = load_teacher(cfg, classes)  # classes, inputs, keys: before anything is written
    preflight(cfg, teacher)
    if export == "onnx":
        from .export import _require_onnx

        _require_onnx()
    os.makedirs(out, exist_ok=True)

    if suggest:  # 1. the plan from the teacher's own layer similarity
        from .analyze import analyze

        res = analyze(teacher, build_loader(cfg, val, False, max(4, min(cfg.TEST.BATCH_SIZE, 256))), 256,
                      os.path.join(out, "analysis"), suggest)
        best = res["suggestions"][0]
        say(f"spin compress: plan from spin analyze --suggest {suggest}: layer map {best['layer_map']} "
            f"({best['name']}, mean within-group similarity {best['mean_within_similarity']:.3f})")
        cfg = student_config(tcfg, checkpoint, out, share_rate, num_sets, fusion, epochs, distill, student_opts,
                             layer_map=best["layer_map"])
        check_cfg(cfg, "train")

    say(f"spin compress: training the WFWS student in {cfg.OUTPUT_DIR} (a rerun resumes it)")
    device = pick_device(cfg.NUM_GPUS, 0)
    run = train(cfg, DistInfo(device=device))  # 2. train (resumable: the engine's AUTO_RESUME)
    final, own = run["checkpoint"], run["checkpoint_eval"]
    fused_path = os.path.join(out, "fused.pyth")  # 3. fuse
    fused = fuse_checkpoint(cfg, final, fused_path, safetensors=True, overwrite=True)
    exported = None
    if export:  # 4. export
        from .export import export_checkpoint

        exported = export_checkpoint(fused_path, export, os.path.join(out, "export", f"model.{export}"),
                                     overwrite=True)

    # 5. both models rebuilt from their files, one evaluation function, one loader
    tmodel, _, _ = cu.build_model_from_checkpoint(checkpoint, cfg=None if not cfg_files else tcfg)
    smodel, _, _ = cu.build_model_from_checkpoint(fused_path)
    loader = build_loader(cfg, val, False, cfg.TEST.BATCH_SIZE)
    rows = []
    for name, path, m in (("teacher (vanilla)", checkpoint, tmodel), ("student (fused WS)", fused_path, smodel)):
        rows.append(_row(name, path, m, evaluate(m.to(device), loader, device)))
    if abs((100.0 - own["top1_err"]) - rows[1]["top1"]) > 1e-6 or own["samples"] != rows[1]["samples"]:
        raise ConsistencyError(
            f"the fused student scores top-1 {rows[1]['top1']:.4f}% on {rows[1]['samples']} images but its WFWS "
            f"checkpoint {final} scored {100.0 - own['top1_err']:.4f}% on {own['samples']}: the fused file does not "
            f"hold the trained model; nothing was reported (compress.json not written)")
    batch = min(cfg.TEST.BATCH_SIZE, 64)
    x = torch.randn(batch, cfg.DATA.INPUT_CHANNEL_NUM[0], cfg.DATA.TEST_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE,
                    device=device)
    speed = _speed({"t": tmodel.eval(), "s": smodel.eval()}, x)
    rows[0]["img_s"], rows[1]["img_s"] = speed["t"], speed["s"]
    plan = (f"layer map {list(cfg.WEIGHT_SHARE.LAYER_MAP)}" if cfg.WEIGHT_SHARE.LAYER_MAP else
            f"{cfg.WEIGHT_SHARE.NUM_SETS} set(s) per block stack" if cfg.WEIGHT_SHARE.NUM_SETS else
            f"share rate {cfg.WEIGHT_SHARE.SHARE_RATE}")
    result = {"teacher": os.path.abspath(checkpoint), "family": family_of(cfg).name, "plan": plan,
              "fusion": fusion, "distill": (f"{cfg.DISTILL.TYPE} KD, alpha {cfg.DISTILL.ALPHA}, tau {cfg.DISTILL.TAU}"
                                            if cfg.DISTILL.ENABLE else "off"),
              "epochs": cfg.SOLVER.MAX_EPOCH, "data": f"{cfg.TEST.DATASET} {cfg.DATA.PATH_TO_DATA_DIR}",
              "device": str(device), "speed_batch": batch, "train_checkpoint": final, "fused": fused,
              "export": exported, "rows": rows}
    atomic_write(os.path.join(out, "compress.json"), lambda f: f.write(json.dumps(result, indent=1).encode()))
    text = markdown(result)
    atomic_write(os.path.join(out, "compress.md"), lambda f: f.write(text.encode()))
    return result
