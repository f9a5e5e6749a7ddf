"""One epoch of training and one evaluation pass, with explicit arguments (DeiT/torchvision
style). Neither knows which model it runs."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn as nn

from .logging import format_eta, log_json_stats, memory_gb
from .optim import set_lr


class NonFiniteLossError(FloatingPointError):
    pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


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
    tensorboard=None,
    progress: bool = False,
) -> dict:
    """Returns the epoch's mean loss, last lr, timings, skipped images and (without mixup) the
    train top-1 error. Raises NonFiniteLossError on a NaN/inf loss, before any update with it."""
    model.train()
    iters = len(loader) if not max_iters else min(max_iters, len(loader))
    bar = _progress(iters, f"epoch {epoch + 1}/{max_epoch}", progress)
    loss_sum = correct = seen = skipped = 0.0
    dt_data = dt_total = 0.0
    lr = lr_at(epoch)
    end = time.perf_counter()
    step = 0
    for step, (images, targets, n_skip) in enumerate(loader):
        if step >= iters:
            break
        skipped += n_skip
        if images is None:
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
        t_data = time.perf_counter() - end
        lr = lr_at(epoch + step / iters)
        set_lr(optimizer, lr)
        with autocast(device, amp_dtype):
            outputs = model(images)
            loss = loss_fn(outputs, targets)
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {epoch + 1}, iteration {step + 1}; training "
                f"stopped before using it. Lower SOLVER.BASE_LR, set SOLVER.CLIP_GRAD_L2NORM, or "
                f"check the data; the last checkpoint on disk is untouched")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        n = images.shape[0]
        loss_sum += loss.item() * n
        seen += n
        if mixup_fn is None:
            correct += (outputs.detach().argmax(1) == hard).sum().item()
        dt = time.perf_counter() - end
        dt_data += t_data
        dt_total += dt
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        if log_period and (step + 1) % log_period == 0:
            left = (iters - step - 1) + iters * (max_epoch - epoch - 1)
            log_json_stats({
                "_type": "train_iter", "epoch": f"{epoch + 1}/{max_epoch}",
                "iter": f"{step + 1}/{iters}", "loss": loss.item(), "lr": lr, "dt": dt,
                "dt_data": t_data, "dt_net": dt - t_data,
                "eta": format_eta(dt_total / (step + 1) * left), "mem": memory_gb(device),
            })
            if tensorboard is not None:
                gstep = epoch * iters + step
                tensorboard.scalars({"Train/loss": loss.item(), "Train/lr": lr}, gstep)
        end = time.perf_counter()
    if bar is not None:
        bar.close()
    done = max(1, min(step + 1, iters))
    stats = {"loss": loss_sum / max(seen, 1), "lr": lr, "dt": dt_total / done,
             "dt_data": dt_data / done, "time": dt_total, "iters": done, "samples": seen,
             "skipped_images": skipped}
    if mixup_fn is None and seen:
        stats["top1_err"] = 100.0 * (1 - correct / seen)
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, channels_last: bool = False,
             reduce: Optional[Callable[[list], list]] = None, progress: bool = False) -> dict:
    """Top-1/top-5 error (%) and cross-entropy loss on hard labels, without AMP. ``reduce`` sums
    the raw counts across processes (each rank sees a disjoint shard)."""
    model.eval()
    crit = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = top1 = top5 = n = skipped = 0.0
    bar = _progress(len(loader), "eval", progress)
    for images, targets, n_skip in loader:
        skipped += n_skip
        if bar is not None:
            bar.update(1)
        if images is None:
            continue
        images, targets = images.to(device), targets.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images).float()
        loss_sum += crit(logits, targets).item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hit = topk == targets[:, None]
        top1 += hit[:, 0].sum().item()
        top5 += hit.any(1).sum().item()
        n += targets.numel()
    if bar is not None:
        bar.close()
    if reduce is not None:
        loss_sum, top1, top5, n, skipped = reduce([loss_sum, top1, top5, n, skipped])
    n = max(n, 1)
    return {"top1_err": 100.0 * (1 - top1 / n), "top5_err": 100.0 * (1 - top5 / n),
            "loss": loss_sum / n, "samples": int(n), "skipped_images": int(skipped)}
