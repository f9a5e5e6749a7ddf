"""One epoch of training and one evaluation pass, with explicit arguments (DeiT/torchvision
style). Neither knows which model it runs; :class:`~spin.engine.log.MetricLogger` wraps the
loop (timing, progress bar, json_stats lines) and the body is the step."""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..data.folder import DataError
from ..errors import SpinError
from .log import MetricLogger
from .optim import set_lr


class NonFiniteLossError(SpinError, FloatingPointError):
    """A step or an evaluation produced a non-finite value; nothing holding it was saved."""


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    device: torch.device,
    epoch: int,
    max_epoch: int,
    lr_at: Callable[[float], float],
    scaler: Optional[torch.amp.GradScaler] = None,
    amp_dtype: Optional[torch.dtype] = None,
    clip_grad: Optional[float] = None,
    mixup_fn: Optional[Callable] = None,
    max_iters: int = 0,
    log_period: int = 10,
    channels_last: bool = False,
    after_step: Optional[Callable[[], None]] = None,
    progress: bool = False,
    distill: Optional[Callable] = None,
    accum_steps: int = 1,
) -> dict:
    """Returns the epoch's mean loss, last lr, timings, samples, skipped images and (without
    mixup) the train top-1 error. Raises NonFiniteLossError on a NaN/inf loss, before any update
    with it. ``scaler`` is a GradScaler, a no-op when disabled (one step path, as nanoGPT).
    ``distill``: a ``(images, outputs, targets) -> loss`` (DeiT's DistillationLoss, which runs the
    teacher; its ``seconds`` give ``teacher_time`` and the student-only ``img_s_student``) used
    instead of ``loss_fn``. ``accum_steps``: one optimizer step per that many batches (each loss
    divided by its group's size; DDP syncs gradients on the group's last batch only)."""
    model.train()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    iters = len(loader) if not max_iters else min(max_iters, len(loader))
    logger = MetricLogger(f"epoch {epoch + 1}/{max_epoch}", iters, log_period, device,
                          bar=progress, iters_after=iters * (max_epoch - epoch - 1))
    correct = backwards = 0
    teacher_start = distill.seconds if distill is not None else 0.0
    for step, (images, targets, n_skip) in enumerate(logger.log_every(loader)):
        logger.skipped += n_skip
        group_start = step - step % accum_steps
        in_group = min(accum_steps, iters - group_start)  # the epoch's last group may be shorter
        update = step + 1 == group_start + in_group
        if step == group_start:
            optimizer.zero_grad(set_to_none=True)
            backwards = 0
        if images is None:
            if update and backwards:  # the group's last batch was unreadable: step on what it has
                _step(model, optimizer, scaler, clip_grad, after_step)
            continue
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        hard = targets
        if mixup_fn is not None:
            if images.shape[0] % 2:  # timm's batch mixup pairs a batch with its flip: needs even
                images, targets, hard = images[:-1], targets[:-1], hard[:-1]
            images, targets = mixup_fn(images, targets)
        lr = lr_at(epoch + group_start / iters)
        set_lr(optimizer, lr)
        sync = contextlib.nullcontext() if update or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, amp_dtype):
                outputs = model(images)
                loss = loss_fn(outputs, targets) if distill is None else distill(images, outputs, targets)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss is {loss_value} at epoch {epoch + 1}, iteration {step + 1}; training "
                    f"stopped before using it. Lower SOLVER.BASE_LR, set SOLVER.CLIP_GRAD_L2NORM, or "
                    f"check the data; the last checkpoint on disk is untouched")
            scaler.scale(loss / in_group).backward()
        backwards += 1
        if update:
            _step(model, optimizer, scaler, clip_grad, after_step)
        if mixup_fn is None:
            correct += (outputs.detach().argmax(1) == hard).sum().item()
        logger.update(loss=loss_value, lr=lr, n=images.shape[0])
    stats = logger.summary()
    if not stats["samples"]:  # every image of the pass was unreadable: nothing was trained
        raise DataError(
            f"epoch {epoch + 1} saw no usable training image ({logger.skipped} unreadable, skipped; see the "
            f"warnings); nothing was trained on or saved. Replace the broken files of the train split")
    if mixup_fn is None:
        stats["top1_err"] = 100.0 * (1 - correct / stats["samples"])
    if distill is not None:
        stats["teacher_time"] = distill.seconds - teacher_start
        stats["img_s_student"] = stats["samples"] / max(stats["time"] - stats["teacher_time"], 1e-9)
    return stats


def _step(model: nn.Module, optimizer, scaler, clip_grad: Optional[float], after_step: Optional[Callable]) -> None:
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    if after_step is not None:  # e.g. the EMA update
        after_step()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, channels_last: bool = False,
             reduce: Optional[Callable[[list], list]] = None, progress: bool = False) -> dict:
    """Top-1/top-5 error (%) and cross-entropy loss on hard labels, without AMP. ``reduce`` sums
    the raw counts across processes (each rank sees a disjoint shard). Non-finite logits raise."""
    model.eval()
    crit = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = top1 = top5 = n = skipped = 0.0
    # every batch: an iterable set's loader length is an estimate (each worker ends on a partial batch)
    logger = MetricLogger("eval", len(loader), 0, device, bar=progress, stop_at_total=False)
    for images, targets, n_skip in logger.log_every(loader):
        skipped += n_skip
        if images is None:
            continue
        images, targets = images.to(device), targets.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images).float()
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteLossError(
                "evaluation produced non-finite logits: the model's weights or BatchNorm statistics "
                "are broken (NaN/inf); this state was not saved. Lower SOLVER.BASE_LR or set "
                "SOLVER.CLIP_GRAD_L2NORM, and resume from the last checkpoint")
        loss_sum += crit(logits, targets).item()
        k = min(5, logits.shape[1])
        hit = logits.topk(k, dim=1).indices == targets[:, None]
        top1 += hit[:, 0].sum().item()
        top5 += hit.any(1).sum().item()
        n += targets.numel()
        logger.update(n=targets.numel())
    if reduce is not None:
        loss_sum, top1, top5, n, skipped = reduce([loss_sum, top1, top5, n, skipped])
    if not n:  # counts stay exact: an evaluation of nothing has no error rate to report
        raise DataError(f"the evaluation saw no usable image ({int(skipped)} unreadable, skipped; see the "
                        f"warnings); replace the broken files of the val split")
    return {"top1_err": 100.0 * (1 - top1 / n), "top5_err": 100.0 * (1 - top5 / n),
            "loss": loss_sum / n, "samples": int(n), "skipped_images": int(skipped)}
