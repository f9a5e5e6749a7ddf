"""The engine's promise that the number a run reports is what its saved checkpoint does.

At the end of every run the final checkpoint is read back from disk (weights_only) into a model
built afresh from the config stored in it, and evaluated on the run's own val loader. The fresh
model shares no object with the one that trained: a stale cache, buffer or hook there cannot leak
into its number. OUTPUT_DIR/checkpoint_eval.json keeps both numbers; when they disagree the run
fails with :class:`ConsistencyError` (the checkpoint stays, its number is the one to trust), so
no report, sweep table or plot ever shows an in-loop number that the artifact does not reproduce.
Any model family or fusion gets this for free: it needs nothing but the checkpoint format.
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Callable, Optional

import torch

from ..errors import SpinError
from . import checkpoint as cu
from .loop import evaluate
from .runfolder import atomic_write

FILE = "checkpoint_eval.json"
# A stale weight moves the loss by whole percents; eager vs. compiled kernels, or another
# summation order, move it by ~1e-6 relative and can flip a sample whose two top logits tie.
LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-5
TOP1_FRACTION = 1e-3
LOGIT_RTOL = 1e-4  # of the logits' scale: float noise is ~1e-6


class ConsistencyError(SpinError, RuntimeError):
    """A reported number that the saved artifact does not reproduce: a bug, never a bad input."""


def agree(a: dict, b: dict) -> bool:
    """Two evaluations of one model on one data set (``evaluate``'s dicts) tell the same result."""
    if a["samples"] != b["samples"]:
        return False
    if not math.isclose(a["loss"], b["loss"], rel_tol=LOSS_RTOL, abs_tol=LOSS_ATOL):
        return False
    flips = abs(a["top1_err"] - b["top1_err"]) / 100.0 * a["samples"]
    return flips <= max(1.0, TOP1_FRACTION * a["samples"]) + 1e-6


def fresh_models(path: str, keys=("model_state",)) -> dict:
    """The checkpoint's model rebuilt from its stored config, once per state in ``keys``
    (``model_ema_state`` for the EMA model; a state the file lacks is left out). Reads the file once."""
    model, _, ck = cu.build_model_from_checkpoint(path)
    out = {"model_state": model} if "model_state" in keys else {}
    for key in keys:
        if key != "model_state" and key in ck:  # e.g. no EMA state: EMA switched on at a resume
            other = copy.deepcopy(model)
            cu.load_model_weights(other, ck[key], source=f"{path} ({key})")
            out[key] = other
    return out


def fresh_model(path: str, state_key: str = "model_state") -> Optional[torch.nn.Module]:
    """One state of ``path`` in a fresh model (None when the file has no such state)."""
    return fresh_models(path, (state_key,)).get(state_key)


def _numbers(res: dict) -> dict:
    return {k: res[k] for k in ("top1_err", "top5_err", "loss", "samples")}


@torch.no_grad()
def logit_gap(a: torch.nn.Module, b: torch.nn.Module, images: torch.Tensor) -> float:
    """max |logits_a - logits_b| / (1 + max |logits_b|) on one batch, both in eval mode."""
    a.eval(), b.eval()
    la, lb = a(images).float(), b(images).float()
    return float((la - lb).abs().max() / (1.0 + lb.abs().max()))


def check_checkpoint(path: str, in_loop: dict, evaluate_fresh: Callable[[torch.nn.Module], dict],
                     epoch: int, in_loop_ema: Optional[dict] = None, probe: Optional[Callable] = None) -> dict:
    """Evaluate ``path`` afresh (``evaluate_fresh(model)`` runs the run's own val pass) and compare
    with the run's in-loop numbers; ``probe(fresh_model, state_key)``, if given, returns the logit
    gap between the run's live model and the fresh one on a val batch. Returns the record of
    checkpoint_eval.json."""
    record = {"checkpoint": os.path.abspath(path), "epoch": int(epoch)}
    wanted = (("", "model_state", in_loop), ("ema_", "model_ema_state", in_loop_ema))
    models = fresh_models(path, [key for _, key, mine in wanted if mine is not None])
    for prefix, key, mine in wanted:
        fresh = models.get(key)
        if mine is None or fresh is None:
            continue
        disk = _numbers(evaluate_fresh(fresh))
        record[prefix + "in_loop"], record[prefix + "checkpoint_eval"] = _numbers(mine), disk
        ok = agree(record[prefix + "in_loop"], disk)
        if probe is not None:
            gap = record[prefix + "logit_gap"] = probe(fresh, key)
            ok = ok and gap <= LOGIT_RTOL
        record[prefix + "agree"] = ok
    return record


def write_record(output_dir: str, record: dict) -> str:
    path = os.path.join(output_dir, FILE)
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=1).encode()))
    return path


def read_record(output_dir: str) -> Optional[dict]:
    """OUTPUT_DIR/checkpoint_eval.json, or None when the run has none (not finished, or older)."""
    try:
        with open(os.path.join(output_dir, FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def raise_if_disagree(record: dict) -> None:
    for prefix, what in (("", "model"), ("ema_", "EMA model")):
        if record.get(prefix + "agree", True):
            continue
        mine, disk = record[prefix + "in_loop"], record[prefix + "checkpoint_eval"]
        gap = record.get(prefix + "logit_gap")
        raise ConsistencyError(
            f"the run's own evaluation of the {what} (top-1 {100 - mine['top1_err']:.2f}%, loss "
            f"{mine['loss']:.4f}) differs from its saved checkpoint's (top-1 {100 - disk['top1_err']:.2f}%, "
            f"loss {disk['loss']:.4f}{f', relative logit gap {gap:.2e}' if gap is not None else ''}, "
            f"{record['checkpoint']}): the in-loop number is wrong (a spin bug; please report it); "
            f"trust the checkpoint's (spin test)")


def verify_run(output_dir: str, path: str, in_loop: dict, epoch: int, val_loader, device,
               channels_last: bool, reduce=None, in_loop_ema: Optional[dict] = None,
               is_master: bool = True, prepare: Callable = lambda m: m,
               live: Optional[torch.nn.Module] = None, live_ema: Optional[torch.nn.Module] = None) -> dict:
    """The end-of-run check: evaluate ``path`` afresh, compare its numbers with the in-loop ones and
    its logits with the live models' (``live``, ``live_ema``: the unwrapped models that trained) on
    the first val batch, write checkpoint_eval.json (master), raise ConsistencyError on a mismatch."""
    def run(model):
        return evaluate(prepare(model), val_loader, device, channels_last, reduce)

    # a rank without val batches (an iterable val set is evaluated by rank 0 alone) probes nothing
    first = next(iter(val_loader), None) if live is not None else None
    probe, images = None, first[0] if first is not None else None
    if images is not None:  # (B, 3, H, W), the loader's first batch
        images = images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)

        def probe(fresh, key):
            return logit_gap(live if key == "model_state" else live_ema, prepare(fresh), images)

    record = check_checkpoint(path, in_loop, run, epoch, in_loop_ema, probe)
    if reduce is not None:  # each rank probed its own batch: all of them must agree
        flags = [k for k in ("agree", "ema_agree") if k in record]
        sums = reduce([1.0] + [float(record[k]) for k in flags])
        for k, total in zip(flags, sums[1:]):
            record[k] = bool(total >= sums[0])
    if is_master:
        write_record(output_dir, record)
    raise_if_disagree(record)
    return record
