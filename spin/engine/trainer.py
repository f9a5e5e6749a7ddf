"""The training and test jobs: config in, model trained / evaluated, files written under
OUTPUT_DIR (stdout.log, config.yaml, checkpoints/, checkpoints/metrics.csv, tensorboard/)."""
from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from ..config import ConfigError
from ..data import DataError, build_dataset, build_loader
from ..models import build_model
from . import checkpoint as cu
from .distributed import DistInfo, all_reduce_sum, barrier
from .engine import evaluate, train_one_epoch
from .logging import MetricsCSV, TensorBoard, format_eta, log_json_stats, memory_gb, setup_logging
from .optim import construct_optimizer, get_lr_at_epoch

LOSSES = ("cross_entropy", "soft_cross_entropy")


def check_cfg(cfg, procs_per_machine: int) -> None:
    """Config errors that yacs' type checks cannot see, raised before anything is written."""
    for sec in ("TRAIN", "TEST"):
        bs = cfg[sec].BATCH_SIZE
        if bs < 1:
            raise ConfigError(f"{sec}.BATCH_SIZE must be >= 1, got {bs}")
        if cfg.NUM_GPUS > 0 and bs % cfg.NUM_GPUS:
            raise ConfigError(
                f"{sec}.BATCH_SIZE {bs} is not divisible by NUM_GPUS {cfg.NUM_GPUS}; the batch size "
                f"is per machine and split over its GPUs, so pick a multiple of {cfg.NUM_GPUS}")
        if bs % procs_per_machine:
            raise ConfigError(
                f"{sec}.BATCH_SIZE {bs} is not divisible by the {procs_per_machine} processes on "
                f"this machine; pick a multiple of {procs_per_machine}")
    if cfg.MODEL.LOSS_FUNC not in LOSSES:
        raise ConfigError(f"unknown MODEL.LOSS_FUNC {cfg.MODEL.LOSS_FUNC!r}; allowed: {', '.join(LOSSES)}")
    if cfg.SOLVER.MAX_EPOCH < 1:
        raise ConfigError(f"SOLVER.MAX_EPOCH must be >= 1, got {cfg.SOLVER.MAX_EPOCH}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def amp_settings(cfg, device: torch.device):
    """(autocast dtype or None, GradScaler). fp16 + GradScaler on CUDA; bf16 on the CPU."""
    if not cfg.TRAIN.MIXED_PRECISION:
        return None, torch.amp.GradScaler(device.type, enabled=False)
    want = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(cfg.TRAIN.AMP_DTYPE)
    if want is None:
        raise ConfigError(f"unknown TRAIN.AMP_DTYPE {cfg.TRAIN.AMP_DTYPE!r}; allowed: float16, bfloat16")
    dtype = want if device.type == "cuda" else torch.bfloat16
    return dtype, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def build_loss(cfg, mixup: bool):
    if mixup:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
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
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.TRAIN.COMPILE:
        model = torch.compile(model)
    return model


def _load_optimizer(optimizer, ck: dict, path: str) -> None:
    try:
        optimizer.load_state_dict(ck["optimizer_state"])
    except (ValueError, KeyError) as e:
        raise cu.CheckpointError(
            f"the optimizer state in {path} does not fit this model's parameters ({e}); set "
            f"TRAIN.CHECKPOINT_EPOCH_RESET True to start a new schedule from its weights") from None


def _resume(cfg, model, optimizer, scaler, log) -> int:
    """Load the newest checkpoint (AUTO_RESUME) or TRAIN.CHECKPOINT_FILE_PATH; returns the epoch
    to start at."""
    latest = cu.latest_checkpoint(cfg.OUTPUT_DIR) if cfg.TRAIN.AUTO_RESUME else None
    if latest:
        ck = cu.load_checkpoint(latest)
        cu.load_model_weights(model, ck["model_state"], source=latest, allow_missing=())
        if "optimizer_state" in ck:
            _load_optimizer(optimizer, ck, latest)
        if "scaler_state" in ck and scaler.is_enabled():
            scaler.load_state_dict(ck["scaler_state"])
        log.info(f"resumed from {latest} (epoch {ck['epoch'] + 1} done)")
        return int(ck["epoch"]) + 1
    path = cfg.TRAIN.CHECKPOINT_FILE_PATH
    if not path:
        return 0
    ck = cu.load_checkpoint(path)
    cu.load_model_weights(model, ck["model_state"], source=path)
    if cfg.TRAIN.CHECKPOINT_EPOCH_RESET or "epoch" not in ck:
        log.info(f"initialised weights from {path}; starting at epoch 1")
        return 0
    if "optimizer_state" in ck:
        _load_optimizer(optimizer, ck, path)
    log.info(f"continuing {path} after its epoch {ck['epoch'] + 1}")
    return int(ck["epoch"]) + 1


def _val_loader(cfg, val_set, info: DistInfo):
    return build_loader(cfg, val_set, False, max(1, cfg.TEST.BATCH_SIZE // info.local_world_size),
                        info.rank, info.world_size)


def _reduce(info: DistInfo):
    """Sums evaluation counts over ranks (each evaluates a disjoint shard)."""
    return (lambda v: all_reduce_sum(v, info.device)) if info.distributed else None


def _log_val(val: dict, epoch: int, max_epoch: int, **extra) -> None:
    log_json_stats({"_type": "val_epoch", "epoch": f"{epoch}/{max_epoch}", "top1_err": val["top1_err"],
                    "top5_err": val["top5_err"], "loss": val["loss"], "samples": val["samples"],
                    **extra})


def train(cfg, info: Optional[DistInfo] = None) -> dict:
    info = info or DistInfo()
    check_cfg(cfg, info.local_world_size)
    log = setup_logging(cfg.OUTPUT_DIR, info.is_master)
    seed_everything(cfg.RNG_SEED)
    train_set, val_set, classes = _datasets(cfg, train=True)
    model = _prepare(build_model(cfg), cfg, info)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = construct_optimizer(model, cfg)
    amp_dtype, scaler = amp_settings(cfg, info.device)
    start_epoch = _resume(cfg, model, optimizer, scaler, log)
    if model.fusion and start_epoch == 0 and not cfg.TRAIN.CHECKPOINT_FILE_PATH:
        log.warning("WFWS model without TRAIN.CHECKPOINT_FILE_PATH: its D sets start random; the "
                    "SPIN recipe starts them from a pretrained vanilla ConvMixer checkpoint")
    if info.is_master:
        os.makedirs(cu.checkpoint_dir(cfg.OUTPUT_DIR), exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
        log.info(f"model {cfg.MODEL.MODEL_NAME}: {n_params:,} parameters, plan sets "
                 f"{list(model.plan.layer_to_set)}, fusion {model.fusion}; device {info.device}, "
                 f"{info.world_size} process(es); train {len(train_set)} / val {len(val_set)} images, "
                 f"{len(classes)} classes")
    core = model
    model = _wrap(model, cfg, info)
    per_proc = cfg.TRAIN.BATCH_SIZE // info.local_world_size
    train_loader = build_loader(cfg, train_set, True, per_proc, info.rank, info.world_size)
    val_loader = _val_loader(cfg, val_set, info)
    if len(train_loader) == 0:
        raise DataError(f"{len(train_set)} training images give no full batch of {per_proc} per "
                        f"process; lower TRAIN.BATCH_SIZE")
    mixup = build_mixup(cfg, cfg.MODEL.NUM_CLASSES)
    loss_fn = build_loss(cfg, mixup is not None)
    tb = None
    if cfg.TENSORBOARD.ENABLE and info.is_master:
        tb = TensorBoard(cfg.TENSORBOARD.LOG_DIR or os.path.join(cfg.OUTPUT_DIR, "tensorboard"))
    csv = MetricsCSV(os.path.join(cu.checkpoint_dir(cfg.OUTPUT_DIR), "metrics.csv"))
    max_epoch = cfg.SOLVER.MAX_EPOCH
    reduce = _reduce(info)
    val, best, last_ck = {}, None, cu.latest_checkpoint(cfg.OUTPUT_DIR)
    for epoch in range(start_epoch, max_epoch):
        # Each epoch is a function of (state at its start, seed, epoch): a resumed run repeats it.
        seed = cfg.RNG_SEED * 100_003 + epoch * 1_009 + info.rank
        seed_everything(seed)
        train_loader.sampler.set_epoch(epoch)
        train_loader.generator.manual_seed(seed)
        stats = train_one_epoch(
            model, train_loader, optimizer, loss_fn, info.device, epoch, max_epoch,
            lr_at=lambda e: get_lr_at_epoch(cfg, e), scaler=scaler, amp_dtype=amp_dtype,
            clip_grad=cfg.SOLVER.CLIP_GRAD_L2NORM, mixup_fn=mixup,
            max_iters=cfg.TRAIN.MAX_ITERS_PER_EPOCH, log_period=cfg.LOG_PERIOD,
            channels_last=cfg.TRAIN.CHANNELS_LAST, tensorboard=tb, progress=info.is_master)
        eta = stats["time"] * (max_epoch - epoch - 1)
        log_json_stats({"_type": "train_epoch", "epoch": f"{epoch + 1}/{max_epoch}",
                        "loss": stats["loss"], "lr": stats["lr"], "dt": stats["dt"],
                        "dt_data": stats["dt_data"], "time": stats["time"],
                        "eta": format_eta(eta), "mem": memory_gb(info.device),
                        "skipped_images": int(stats["skipped_images"]),
                        **({"top1_err": stats["top1_err"]} if "top1_err" in stats else {})})
        last = epoch + 1 == max_epoch
        if (epoch + 1) % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or last:
            if info.is_master:
                last_ck = cu.save_checkpoint(cu.checkpoint_path(cfg.OUTPUT_DIR, epoch), core, epoch,
                                             cfg, optimizer, scaler, extra={"classes": classes})
            barrier()
        row = {"epoch": epoch + 1, "train_loss": stats["loss"], "lr": stats["lr"],
               "train_time": stats["time"], "skipped_images": int(stats["skipped_images"])}
        if (epoch + 1) % cfg.TRAIN.EVAL_PERIOD == 0 or last:
            val = evaluate(model, val_loader, info.device, cfg.TRAIN.CHANNELS_LAST, reduce)
            best = val["top1_err"] if best is None else min(best, val["top1_err"])
            _log_val(val, epoch + 1, max_epoch, min_top1_err=best, mem=memory_gb(info.device))
            row.update(val_loss=val["loss"], val_top1_err=val["top1_err"],
                       val_top5_err=val["top5_err"])
            if tb is not None:
                tb.scalars({"Val/Top1_err": val["top1_err"], "Val/Top5_err": val["top5_err"],
                            "Val/loss": val["loss"]}, epoch + 1)
        if info.is_master:
            csv.write(row)
    if start_epoch >= max_epoch:  # already trained (e.g. run.sh again): report, do not retrain
        log.info(f"{cu.latest_checkpoint(cfg.OUTPUT_DIR)} already finished SOLVER.MAX_EPOCH "
                 f"{max_epoch}; evaluating it (raise MAX_EPOCH or change OUTPUT_DIR to train more)")
        val = evaluate(model, val_loader, info.device, cfg.TRAIN.CHANNELS_LAST, reduce)
        _log_val(val, max_epoch, max_epoch)
    if tb is not None:
        tb.close()
    return {"val": val, "parameters": n_params, "unique_parameters": core.unique_parameters(),
            "checkpoint": last_ck and os.path.abspath(last_ck), "output_dir": os.path.abspath(cfg.OUTPUT_DIR),
            "tensorboard": tb.log_dir if tb is not None else None, "start_epoch": start_epoch}


def test(cfg, info: Optional[DistInfo] = None) -> dict:
    """Evaluate TEST.CHECKPOINT_FILE_PATH (else the newest checkpoint in OUTPUT_DIR, else
    TRAIN.CHECKPOINT_FILE_PATH) on TEST.DATASET's val split."""
    info = info or DistInfo()
    check_cfg(cfg, info.local_world_size)
    log = setup_logging(cfg.OUTPUT_DIR, info.is_master)
    path = (cfg.TEST.CHECKPOINT_FILE_PATH or cu.latest_checkpoint(cfg.OUTPUT_DIR)
            or cfg.TRAIN.CHECKPOINT_FILE_PATH)
    if not path:
        raise cu.CheckpointError("no checkpoint to test: set TEST.CHECKPOINT_FILE_PATH (or train "
                                 "first so OUTPUT_DIR/checkpoints has one)")
    _, val_set, _ = _datasets(cfg, train=False)
    model = build_model(cfg)
    cu.load_model_weights(model, cu.load_checkpoint(path)["model_state"], source=path)
    model = _wrap(_prepare(model, cfg, info), cfg, info)
    res = evaluate(model, _val_loader(cfg, val_set, info), info.device, cfg.TRAIN.CHANNELS_LAST,
                   _reduce(info), info.is_master)
    log_json_stats({"_type": "test_final", "checkpoint": path, "top1_err": res["top1_err"],
                    "top5_err": res["top5_err"], "loss": res["loss"], "samples": res["samples"]})
    log.info(f"test: top-1 {100 - res['top1_err']:.2f}%  top-5 {100 - res['top5_err']:.2f}%  "
             f"loss {res['loss']:.4f}  on {res['samples']} images of {cfg.TEST.DATASET} ({path})")
    return dict(res, checkpoint=path)
