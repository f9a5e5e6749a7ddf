"""The training and test jobs: config in, model trained / evaluated, files written under
OUTPUT_DIR (stdout.log, config.yaml, checkpoints/, checkpoints/metrics.csv, tensorboard/).

Everything a run needs is resolved before its first write: the config check, the data folders,
the model and its plan, the optimizer, the augmentation, the checkpoint to start from. Only then
does the run take OUTPUT_DIR's lock and write.
"""
from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from ..config import check_cfg
from ..data import DataError, build_dataset, build_loader, data_notes, is_iterable, num_images, set_epoch
from ..models import build_model
from ..share_transform import sharing_of, unique_parameters
from . import checkpoint as cu
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_buffers
from .curves import plot_runs
from .distill import build_distillation, load_teacher
from .loop import evaluate, train_one_epoch
from .log import MetricsCSV, TensorBoard, format_eta, log_epoch, log_json_stats, memory_gb, setup_logging
from .optim import construct_optimizer, get_lr_at_epoch
from .runfolder import RunLock, record_config, remove_temp_files
from .verify import verify_run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def amp_settings(cfg, device: torch.device):
    """(autocast dtype or None, GradScaler). fp16 + GradScaler on CUDA; bf16 on the CPU. The
    scaler is a no-op when disabled, so the step has one path."""
    if not cfg.TRAIN.MIXED_PRECISION:
        return None, torch.amp.GradScaler(device.type, enabled=False)
    want = {"float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.TRAIN.AMP_DTYPE.lower()]
    dtype = want if device.type == "cuda" else torch.bfloat16
    return dtype, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


class SoftTargetLoss(nn.Module):
    """MODEL.LOSS_FUNC soft_cross_entropy: cross-entropy against soft targets — mixup's, or, for
    hard labels (no mixup, or evaluation), one-hot targets smoothed by MIXUP.LABEL_SMOOTH_VALUE."""

    def __init__(self, smoothing: float):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dtype == torch.long:
            n = logits.shape[-1]
            soft = torch.full_like(logits, self.smoothing / n, dtype=torch.float32)
            target = soft.scatter_(1, target[:, None], 1.0 - self.smoothing + self.smoothing / n)
        return torch.sum(-target * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def build_loss(cfg) -> nn.Module:
    if cfg.MODEL.LOSS_FUNC == "soft_cross_entropy":
        return SoftTargetLoss(cfg.MIXUP.LABEL_SMOOTH_VALUE)
    return nn.CrossEntropyLoss()


def build_mixup(cfg, num_classes: int):
    m = cfg.MIXUP
    if not m.ENABLE:
        return None
    from timm.data import Mixup

    # mode "batch": one lambda per batch, pairs each sample with the flipped batch (SlowFast's).
    return Mixup(mixup_alpha=m.ALPHA, cutmix_alpha=m.CUTMIX_ALPHA, prob=m.PROB,
                 switch_prob=m.SWITCH_PROB, mode="batch", label_smoothing=m.LABEL_SMOOTH_VALUE,
                 num_classes=num_classes)


def _datasets(cfg, train: bool):
    train_set = build_dataset(cfg, "train") if train else None
    val_set = build_dataset(cfg, "val")
    classes = list(getattr(val_set, "classes", []))
    named = [getattr(s, "classes", None) for s in (train_set, val_set) if not getattr(s, "integer_labels", False)]
    if len(named) == 2 and named[0] and named[1] and list(named[0]) != list(named[1]):
        only_t = [c for c in named[0] if c not in named[1]][:5]
        only_v = [c for c in named[1] if c not in named[0]][:5]
        raise DataError(f"the train and val splits name different classes ({len(named[0])} / {len(named[1])}; only in "
                        f"train: {only_t}, only in val: {only_v}, or another order): their labels would not agree; "
                        f"give both splits the same classes")
    if classes and len(classes) > cfg.MODEL.NUM_CLASSES:
        raise DataError(f"the data set has {len(classes)} classes but MODEL.NUM_CLASSES is "
                        f"{cfg.MODEL.NUM_CLASSES}; set MODEL.NUM_CLASSES {len(classes)}")
    return train_set, val_set, classes


def _prepare(model: nn.Module, cfg, info: DistInfo):
    model = model.to(info.device)
    if cfg.TRAIN.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model


def _wrap(model: nn.Module, cfg, info: DistInfo) -> nn.Module:
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        # choose_first fusion reads only the first member of each group: the others get no grad
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=sharing_of(model)[1] == "choose_first")
    if cfg.TRAIN.COMPILE:
        model = torch.compile(model)
    return model


def _eval_model(wrapped: nn.Module, core: nn.Module, val_set, info: DistInfo) -> nn.Module:
    """What evaluates: the wrapped model, except for an iterable val set under DDP. Rank 0 alone
    evaluates that (see spin.data), and DDP's first forward after training broadcasts buffers,
    a collective the other ranks would never join; the plain module on rank 0 computes what the
    wrapped one would (rank 0's buffers are the ones DDP broadcasts)."""
    return core if info.distributed and is_iterable(val_set) else wrapped


def _val_loader(cfg, val_set, info: DistInfo):
    return build_loader(cfg, val_set, False, max(1, cfg.TEST.BATCH_SIZE // info.local_world_size),
                        info.rank, info.world_size)


def _reduce(info: DistInfo):
    """Sums evaluation counts over ranks (each evaluates a disjoint shard)."""
    return (lambda v: all_reduce_sum(v, info.device)) if info.distributed else None


def _plot_curves(output_dir: str, log) -> None:
    """OUTPUT_DIR/curves.png, atomically; a failure to draw is reported, never fatal to the run."""
    try:
        plot_runs([output_dir], os.path.join(output_dir, "curves.png"))
    except Exception as e:  # noqa: BLE001  (a picture must not stop a 300-epoch run)
        log.warning(f"could not draw curves.png: {type(e).__name__}: {e}")


def train(cfg, info: Optional[DistInfo] = None) -> dict:
    info = info or DistInfo()
    check_cfg(cfg, "train", info.local_world_size)
    seed_everything(cfg.RNG_SEED)
    train_set, val_set, classes = _datasets(cfg, train=True)
    model = _prepare(build_model(cfg), cfg, info)
    plan, fusion = sharing_of(model)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = construct_optimizer(model, cfg)
    amp_dtype, scaler = amp_settings(cfg, info.device)
    ema = None
    if cfg.MODEL_EMA.ENABLE:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.MODEL_EMA.DECAY)
    messages: list[str] = []
    teacher, teacher_rec = load_teacher(cfg, classes) if cfg.DISTILL.ENABLE else (None, None)
    earlier = cu.latest_checkpoint(cfg.OUTPUT_DIR)
    if earlier and not cfg.TRAIN.AUTO_RESUME:
        raise cu.CheckpointError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} holds checkpoints of an earlier run ({os.path.basename(earlier)}) "
            f"and TRAIN.AUTO_RESUME is False: a fresh run there would mix with them; choose a new OUTPUT_DIR, "
            f"or set TRAIN.AUTO_RESUME True to continue that run")
    start_epoch = cu.load_train_checkpoint(cfg, model, optimizer, scaler, ema and ema.module,
                                           say=messages.append, classes=classes, teacher=teacher_rec)
    per_proc = cfg.TRAIN.BATCH_SIZE // info.local_world_size
    train_loader = build_loader(cfg, train_set, True, per_proc, info.rank, info.world_size)
    if len(train_loader) == 0:
        raise DataError(f"{num_images(train_set)} training images give no full batch of {per_proc} per "
                        f"process; lower TRAIN.BATCH_SIZE")
    val_loader = _val_loader(cfg, val_set, info)
    mixup = build_mixup(cfg, cfg.MODEL.NUM_CLASSES)
    loss_fn = build_loss(cfg)
    # after the EMA copy: the student's taps (hidden / attention KD) hook the trained model only
    distill = build_distillation(cfg, loss_fn, None if teacher is None else _prepare(teacher, cfg, info), model)
    extra = {"classes": classes, **({"distill_teacher": teacher_rec} if teacher_rec else {})}

    lock = RunLock(cfg.OUTPUT_DIR) if info.is_master else None
    stale = lock.acquire() if lock else None
    tb, check = None, None
    try:
        ckdir = cu.checkpoint_dir(cfg.OUTPUT_DIR)
        csv = MetricsCSV(os.path.join(ckdir, "metrics.csv"))
        if info.is_master:  # the first writes of this run
            left = remove_temp_files(cfg.OUTPUT_DIR, ckdir)
            diff = record_config(cfg.OUTPUT_DIR, cfg.dump())
            os.makedirs(ckdir, exist_ok=True)
            csv.keep_until(start_epoch)
            if cfg.TENSORBOARD.ENABLE:
                tb = TensorBoard(cfg.TENSORBOARD.LOG_DIR or os.path.join(cfg.OUTPUT_DIR, "tensorboard"),
                                 purge_step=start_epoch + 1)
        log = setup_logging(cfg.OUTPUT_DIR, info.is_master, cfg.LOG_JSON_TO_CONSOLE)
        if info.is_master:
            if stale:
                log.info(f"took over the lock of a run that is gone (pid {stale.get('pid')})")
            if left:
                log.info(f"removed {len(left)} temp file(s) a killed run left: {', '.join(left)}")
            if diff:
                log.info("the config differs from this folder's previous run (kept in config_history/):\n"
                         + diff.rstrip())
        for m in messages + data_notes(cfg, train_set, val_set, info.world_size):
            log.info(m)
        if fusion and start_epoch == 0 and not cfg.TRAIN.CHECKPOINT_FILE_PATH:
            log.warning("WFWS model without TRAIN.CHECKPOINT_FILE_PATH: its D sets start random; the "
                        "SPIN recipe starts them from a pretrained vanilla checkpoint")
        if teacher_rec:
            d = cfg.DISTILL
            log.info(f"distilling from {teacher_rec['path']} (sha256 {teacher_rec['sha256'][:12]}..., "
                     f"{sum(p.numel() for p in teacher.parameters()):,} parameters): {d.TYPE} KD, alpha {d.ALPHA}"
                     f"{f', tau {d.TAU}' if d.TYPE == 'soft' else ''}"
                     f"{f', hidden {d.HIDDEN_WEIGHT}' if d.HIDDEN_WEIGHT else ''}"
                     f"{f', attention {d.ATTN_WEIGHT}' if d.ATTN_WEIGHT else ''}")
        log.info(f"model {cfg.MODEL.MODEL_NAME}: {n_params:,} parameters ({unique_parameters(model):,} "
                 f"unique), plan sets {list(plan.layer_to_set) if plan else 'none'}, fusion {fusion}; "
                 f"device {info.device}, {info.world_size} process(es); train {num_images(train_set) or '?'} / val "
                 f"{num_images(val_set) or '?'} images, {len(classes)} classes")
        core = model
        model = _wrap(model, cfg, info)
        evaluated = _eval_model(model, core, val_set, info)
        max_epoch = cfg.SOLVER.MAX_EPOCH
        reduce = _reduce(info)
        best = min((float(r["val_top1_err"]) for r in csv.rows() if r.get("val_top1_err")), default=None)
        val, last_ck = {}, cu.latest_checkpoint(cfg.OUTPUT_DIR)
        ema_val = None
        for epoch in range(start_epoch, max_epoch):
            # Each epoch is a function of (state at its start, seed, epoch): a resumed run repeats it.
            seed = cfg.RNG_SEED * 100_003 + epoch * 1_009 + info.rank
            seed_everything(seed)
            set_epoch(train_loader, epoch, seed)
            stats = train_one_epoch(
                model, train_loader, optimizer, loss_fn, info.device, epoch, max_epoch,
                lr_at=lambda e: get_lr_at_epoch(cfg, e), scaler=scaler, amp_dtype=amp_dtype,
                clip_grad=cfg.SOLVER.CLIP_GRAD_L2NORM, mixup_fn=mixup,
                max_iters=cfg.TRAIN.MAX_ITERS_PER_EPOCH, log_period=cfg.LOG_PERIOD,
                channels_last=cfg.TRAIN.CHANNELS_LAST, progress=info.is_master,
                after_step=(lambda: ema.update(core)) if ema is not None else None,
                distill=distill, accum_steps=cfg.TRAIN.GRAD_ACCUM_STEPS)
            record = {"epoch": epoch + 1, "train_loss": stats["loss"], "lr": stats["lr"],
                      "dt": stats["dt"], "dt_data": stats["dt_data"], "train_time": stats["time"],
                      "train_img_s": stats["img_s"], "eta": format_eta(stats["time"] * (max_epoch - epoch - 1)),
                      "mem": memory_gb(info.device), "skipped_images": stats["skipped_images"]}
            if "top1_err" in stats:
                record["train_top1_err"] = stats["top1_err"]
            if distill is not None:  # img/s with the teacher's forward (train_img_s) and without
                record.update(teacher_time=stats["teacher_time"], train_img_s_student=stats["img_s_student"])
            last = epoch + 1 == max_epoch
            if (epoch + 1) % cfg.TRAIN.EVAL_PERIOD == 0 or last:
                val = evaluate(evaluated, val_loader, info.device, cfg.TRAIN.CHANNELS_LAST, reduce)
                best = val["top1_err"] if best is None else min(best, val["top1_err"])
                record.update(val_loss=val["loss"], val_top1_err=val["top1_err"],
                              val_top5_err=val["top5_err"], val_samples=val["samples"], min_top1_err=best)
                if ema is not None:
                    if info.distributed:
                        broadcast_buffers(ema.module)
                    ev = ema_val = evaluate(ema.module, val_loader, info.device, cfg.TRAIN.CHANNELS_LAST, reduce)
                    record.update(ema_val_top1_err=ev["top1_err"], ema_val_top5_err=ev["top5_err"])
            if info.is_master:  # the row first: a resume drops rows of epochs after its checkpoint
                log_epoch(record, max_epoch, csv, tb)
                if "val_top1_err" in record:  # at each evaluation and at the end
                    _plot_curves(cfg.OUTPUT_DIR, log)
            if (epoch + 1) % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or last:
                if info.is_master:
                    last_ck = cu.save_checkpoint(cu.checkpoint_path(cfg.OUTPUT_DIR, epoch), core, epoch,
                                                 cfg, optimizer, scaler, extra=extra,
                                                 ema=ema and ema.module)
                barrier()
                last_ck = cu.checkpoint_path(cfg.OUTPUT_DIR, epoch)  # every rank: it verifies it
        if start_epoch >= max_epoch:  # already trained (e.g. run.sh again): report, do not retrain
            log.info(f"{last_ck} already finished SOLVER.MAX_EPOCH {max_epoch}; evaluating it "
                     f"(raise MAX_EPOCH or change OUTPUT_DIR to train more)")
            val = evaluate(evaluated, val_loader, info.device, cfg.TRAIN.CHANNELS_LAST, reduce)
            log_json_stats({"_type": "val_epoch", "epoch": f"{max_epoch}/{max_epoch}",
                            "top1_err": val["top1_err"], "top5_err": val["top5_err"],
                            "loss": val["loss"], "samples": val["samples"]})
            if ema is not None:
                ema_val = evaluate(ema.module, val_loader, info.device, cfg.TRAIN.CHANNELS_LAST, reduce)
        if val and last_ck:  # every reported number is reproduced from the saved file (verify.py)
            check = verify_run(cfg.OUTPUT_DIR, last_ck, val, cu.epochs_done(last_ck), val_loader, info.device,
                               cfg.TRAIN.CHANNELS_LAST, reduce, ema_val, info.is_master,
                               prepare=lambda m: _prepare(m, cfg, info), live=core,
                               live_ema=ema.module if ema is not None else None)
            ck_val = check["checkpoint_eval"]
            log_json_stats({"_type": "checkpoint_eval", "checkpoint": check["checkpoint"],
                            "epoch": check["epoch"], "top1_err": ck_val["top1_err"],
                            "top5_err": ck_val["top5_err"], "loss": ck_val["loss"],
                            "samples": ck_val["samples"], "agree": check["agree"]})
    finally:
        if distill is not None:
            distill.close()
        if tb is not None:
            tb.close()
        if lock:
            lock.release()
    return {"val": val, "checkpoint_eval": check["checkpoint_eval"] if check else None,
            "parameters": n_params, "unique_parameters": unique_parameters(core),
            "checkpoint": last_ck and os.path.abspath(last_ck), "output_dir": os.path.abspath(cfg.OUTPUT_DIR),
            "tensorboard": tb.log_dir if tb is not None else None, "start_epoch": start_epoch}


def test(cfg, info: Optional[DistInfo] = None) -> dict:
    """Evaluate TEST.CHECKPOINT_FILE_PATH (else the newest checkpoint in OUTPUT_DIR, else
    TRAIN.CHECKPOINT_FILE_PATH) on TEST.DATASET's val split."""
    info = info or DistInfo()
    check_cfg(cfg, "test", info.local_world_size)
    path = (cfg.TEST.CHECKPOINT_FILE_PATH or cu.latest_checkpoint(cfg.OUTPUT_DIR)
            or cfg.TRAIN.CHECKPOINT_FILE_PATH)
    if not path:
        raise cu.CheckpointError("no checkpoint to test: set TEST.CHECKPOINT_FILE_PATH (or train "
                                 "first so OUTPUT_DIR/checkpoints has one)")
    _, val_set, classes = _datasets(cfg, train=False)
    model, _, ck = cu.build_model_from_checkpoint(path, cfg=cfg)
    cu.check_eval_classes(ck, classes, path)
    model = _prepare(model, cfg, info)
    model = _eval_model(_wrap(model, cfg, info), model, val_set, info)
    log = setup_logging(cfg.OUTPUT_DIR, info.is_master, cfg.LOG_JSON_TO_CONSOLE)
    res = evaluate(model, _val_loader(cfg, val_set, info), info.device, cfg.TRAIN.CHANNELS_LAST,
                   _reduce(info), info.is_master)
    log_json_stats({"_type": "test_final", "checkpoint": path, "top1_err": res["top1_err"],
                    "top5_err": res["top5_err"], "loss": res["loss"], "samples": res["samples"]})
    log.info(f"test: top-1 {100 - res['top1_err']:.2f}%  top-5 {100 - res['top5_err']:.2f}%  "
             f"loss {res['loss']:.4f}  on {res['samples']} images of {cfg.TEST.DATASET} ({path})")
    return dict(res, checkpoint=path)
