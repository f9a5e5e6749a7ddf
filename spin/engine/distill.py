"""Distillation (``DISTILL.*``): the teacher, built and checked before a run writes anything, and
the loss that trains the student against it — DeiT's ``DistillationLoss`` contract,
``loss(images, outputs, targets)``, with the teacher's forward inside it.

The teacher is a checkpoint file: a spin ``.pyth`` is rebuilt from its stored config; a file
without one (a timm ``.pth`` / ``.safetensors`` state dict) is built as the student's vanilla
counterpart (the run's config with WEIGHT_SHARE off) and must load strictly. It runs in eval mode
with ``requires_grad`` off, under the step's autocast, on the same (mixed) images as the student;
it is not a submodule of anything the run saves. A checkpoint records its file's SHA-256
(:func:`teacher_record`), and a resume refuses a teacher whose bytes changed
(:func:`spin.engine.checkpoint.load_train_checkpoint`).
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..distill_loss import attention_kd, hard_kd, relation_kd, soft_kd
from ..errors import SpinError
from . import checkpoint as cu


class DistillError(SpinError, ValueError):
    """A teacher that cannot teach this student (file, classes, inputs, layers); says the fix."""


def teacher_path(cfg) -> str:
    return cfg.DISTILL.TEACHER or cfg.TRAIN.CHECKPOINT_FILE_PATH


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def teacher_record(path: str) -> dict:
    """What a checkpoint keeps of its teacher: where it was and what its bytes were."""
    return {"path": os.path.abspath(path), "sha256": file_sha256(path), "bytes": os.path.getsize(path)}


def _without_distill(cfg):
    from ..config import get_cfg

    cfg.defrost()
    cfg.DISTILL = get_cfg().DISTILL  # a teacher is a model here, not a run: its own teacher is moot
    return cfg


def vanilla_counterpart(cfg):
    """The student's config with its sharing off: the architecture a WFWS run started from."""
    t = _without_distill(cfg.clone())
    t.WEIGHT_SHARE.ENABLE, t.WEIGHT_SHARE.REDUCTION_FN = False, None
    t.WEIGHT_SHARE.RELAX, t.WEIGHT_SHARE.RELAX_RANK = "none", 0
    return t


def _teacher_cfg(cfg, path: str, ck: dict):
    if cu.stored_cfg(ck) is not None:
        return _without_distill(cu.cfg_from_checkpoint(path, ck=ck)), "its stored config"
    return vanilla_counterpart(cfg), "the student's vanilla counterpart (the file stores no config)"


def load_teacher(cfg, classes=None) -> tuple[nn.Module, dict]:
    """(teacher on the CPU, eval, no grad; its :func:`teacher_record`). Raises DistillError (or the
    checkpoint's CheckpointError) for a teacher that cannot teach this student."""
    from ..config import check_cfg
    from ..models import build_model

    path = teacher_path(cfg)
    where = f"DISTILL.TEACHER {path}" if cfg.DISTILL.TEACHER else f"the teacher (TRAIN.CHECKPOINT_FILE_PATH {path})"
    ck = cu.load_checkpoint(path)
    tcfg, how = _teacher_cfg(cfg, path, ck)
    check_cfg(tcfg, "stats")
    teacher = build_model(tcfg)
    cu.load_model_weights(teacher, ck["model_state"], source=f"{where}, built from {how},",
                          fix="give a teacher of the student's architecture, or a spin .pyth (its stored config "
                              "builds it)")
    cu.fit_relax_to_file(teacher, ck)
    if tcfg.MODEL.NUM_CLASSES != cfg.MODEL.NUM_CLASSES:
        raise DistillError(f"{where} has {tcfg.MODEL.NUM_CLASSES} classes but the student "
                           f"{cfg.MODEL.NUM_CLASSES} (MODEL.NUM_CLASSES): its outputs cannot be distilled; give a "
                           f"teacher trained on the student's classes")
    stored = ((cu.checkpoint_identity(ck) or {}).get("classes") or {}).get("classes")
    if stored and classes and list(stored) != list(classes):
        raise DistillError(f"{where} was trained on other class names than the data's ({len(stored)} vs "
                           f"{len(classes)}, or another order): its output k is not the student's class k; give a "
                           f"teacher trained on these class folders")
    if cu.stored_cfg(ck) is not None:
        for key in ("MEAN", "STD", "INPUT_CHANNEL_NUM"):
            if list(tcfg.DATA[key]) != list(cfg.DATA[key]):
                raise DistillError(f"{where} was trained on inputs with DATA.{key} {list(tcfg.DATA[key])}, the "
                                   f"student gets {list(cfg.DATA[key])}: the teacher would see other images than "
                                   f"it learnt on; set DATA.{key} {list(tcfg.DATA[key])}")
    teacher.eval().requires_grad_(False)
    crop, chans = cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.INPUT_CHANNEL_NUM[0]
    try:
        with torch.no_grad():
            teacher(torch.zeros(1, chans, crop, crop))
    except Exception as e:  # noqa: BLE001  (whatever the teacher's layers reject)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DistillError(f"{where} cannot run on the student's {chans}x{crop}x{crop} training inputs "
                           f"({type(e).__name__}: {why}); give a teacher built for DATA.TRAIN_CROP_SIZE {crop} "
                           f"(its stored DATA.TRAIN_CROP_SIZE is {tcfg.DATA.TRAIN_CROP_SIZE})") from None
    return teacher, teacher_record(path)


# ---------------------------------------------------------------------------- hidden / attention taps
def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in forward order: ``model.blocks`` (isotropic), else every ``*.blocks``
    stack (Swin's ``layers.{i}.blocks``, timm's ``stages.{i}.blocks``), concatenated."""
    stack = getattr(model, "blocks", None)
    if isinstance(stack, (nn.Sequential, nn.ModuleList)):
        return list(stack)
    return [b for name, m in model.named_modules() if name.endswith("blocks")
            and isinstance(m, (nn.Sequential, nn.ModuleList)) for b in m]


def _layer(model: nn.Module, ref, who: str) -> nn.Module:
    if isinstance(ref, str) and not ref.lstrip("-").isdigit():
        try:
            return model.get_submodule(ref)
        except AttributeError:
            raise DistillError(f"DISTILL {who} layer {ref!r} is not a module of the {who}; give a block index "
                               f"or a module path such as blocks.11") from None
    blocks, k = blocks_of(model), int(ref)
    if not -len(blocks) <= k < len(blocks):
        raise DistillError(f"DISTILL {who} layer {k} is out of range: the {who} has {len(blocks)} blocks")
    return blocks[k]


def _tokens(x, fmt: str) -> torch.Tensor:
    """A block output as tokens (B, N, d): ViT/Mixer (B, N, d) as is, NCHW maps as (B, HW, C),
    NHWC maps (timm's Swin) as (B, HW, C)."""
    x = x[0] if isinstance(x, (tuple, list)) else x
    if x.dim() == 4:
        return x.flatten(1, 2) if fmt == "NHWC" else x.flatten(2).transpose(1, 2)
    return x


class _Taps:
    """Forward hooks that keep the chosen blocks' outputs (and attention maps) of one forward, in
    slot k for the k-th layer of the list (so pairs are by position in LAYERS / TEACHER_LAYERS,
    whatever order the forward reaches them in)."""

    def __init__(self, model: nn.Module, refs, who: str, hidden: bool, attn: bool):
        # The student's taps record its training forwards only (evaluations, and an EMA copy made
        # after the hooks, pass by); the teacher's record the forwards the loss makes (``on``).
        self.hidden, self.attn, self.handles, self.on = {}, {}, [], who == "student"
        self.who, self.force, self.model = who, False, model
        fmt = getattr(model, "output_fmt", "NCHW")
        for k, ref in enumerate(refs):
            block = _layer(model, ref, who)
            if hidden:
                self.handles.append(block.register_forward_hook(
                    self._keep(self.hidden, k, lambda out: _tokens(out, fmt))))
            if attn:
                qkv, heads = getattr(getattr(block, "attn", None), "qkv", None), getattr(
                    getattr(block, "attn", None), "num_heads", None)
                if not isinstance(qkv, nn.Module) or not heads:
                    raise DistillError(f"DISTILL.ATTN_WEIGHT needs attention blocks with attn.qkv and "
                                       f"attn.num_heads (ViT, Swin); the {who}'s layer {ref} is a "
                                       f"{type(block).__name__}; set DISTILL.ATTN_WEIGHT 0")
                self.handles.append(qkv.register_forward_hook(
                    self._keep(self.attn, k, lambda out, h=heads: _attention(out, h))))

    def _keep(self, into: dict, k: int, view: Callable):
        def hook(module, args, out) -> None:  # returns None: the forward's output stays as it is
            wanted = self.who == "teacher" or self.force or (module.training and torch.is_grad_enabled())
            if self.on and wanted:
                into[k] = view(out)  # a recompute (checkpointing) overwrites its own slot
        return hook

    def clear(self) -> None:
        self.hidden.clear()
        self.attn.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head from a qkv projection (B, N, 3C) -> (B, heads, N, N): the
    attention before any position bias or mask the block adds."""
    b, n, c3 = qkv.shape
    q, k, _ = qkv.float().reshape(b, n, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4)
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)


# ---------------------------------------------------------------------------- the loss
class DistillationLoss:
    """``(images, outputs, targets) -> loss``: (1 - alpha) * base(outputs, targets) + alpha * KD of
    the logits, + hidden_weight * relation KD of the tapped block outputs + attn_weight * KL of their
    attention maps. A plain object, not a module: nothing of the teacher is in any state dict.
    ``seconds`` accumulates the teacher's forward time (the logs report img/s with and without)."""

    def __init__(self, base: Callable, teacher: nn.Module, student: nn.Module, kind: str = "soft",
                 alpha: float = 0.5, tau: float = 1.0, hidden_weight: float = 0.0, attn_weight: float = 0.0,
                 layers=(-1,), teacher_layers=()):
        self.base, self.teacher, self.kind = base, teacher, kind
        self.alpha, self.tau, self.hidden_weight, self.attn_weight = alpha, tau, hidden_weight, attn_weight
        self.seconds, self.parts = 0.0, {}
        taps = bool(hidden_weight or attn_weight)
        layers = list(layers)
        teacher_layers = list(teacher_layers) or layers
        if taps and len(teacher_layers) != len(layers):
            raise DistillError(f"DISTILL.TEACHER_LAYERS has {len(teacher_layers)} entries but DISTILL.LAYERS "
                               f"{len(layers)}: give one teacher layer per student layer (or [] for the same)")
        self._s = _Taps(student, layers, "student", bool(hidden_weight), bool(attn_weight)) if taps else None
        self._t = _Taps(teacher, teacher_layers, "teacher", bool(hidden_weight), bool(attn_weight)) if taps else None

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        sync = images.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        with torch.no_grad():
            out = self.teacher(images)
        if sync:
            torch.cuda.synchronize(images.device)
        self.seconds += time.perf_counter() - start
        return out

    def __call__(self, images: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self._t is not None:
            self._t.clear()
            self._t.on = True
        try:
            teacher = self.teacher_logits(images)
        finally:
            if self._t is not None:
                self._t.on = False
        base = self.base(outputs, targets)
        kd = soft_kd(outputs, teacher, self.tau) if self.kind == "soft" else hard_kd(outputs, teacher)
        loss = (1 - self.alpha) * base + self.alpha * kd
        self.parts = {"base": base.detach(), "kd": kd.detach()}
        if self._s is not None:
            # the student's taps filled during its forward, before this call; one forward each
            pairs = (("hidden", self.hidden_weight, relation_kd, self._s.hidden, self._t.hidden),
                     ("attn", self.attn_weight, attention_kd, self._s.attn, self._t.attn))
            for name, weight, fn, s, t in pairs:
                if weight:
                    if sorted(s) != sorted(t) or not s:
                        raise DistillError(f"DISTILL: the {name} taps saw student layers {sorted(s)} and teacher "
                                           f"layers {sorted(t)} this step; every listed layer must run once per forward")
                    term = sum(self._term(fn, name, s[k], t[k], k) for k in t) / len(t)
                    loss = loss + weight * term
                    self.parts[name] = term.detach()
            self._s.clear()
        return loss

    @staticmethod
    def _term(fn: Callable, name: str, s: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
        try:
            return fn(s, t)
        except ValueError as e:
            raise DistillError(f"DISTILL pair {k} ({name}): {e}; choose layers of one token count (and heads) in "
                               f"student and teacher (DISTILL.LAYERS / TEACHER_LAYERS)") from None

    def dry_run(self, x: torch.Tensor) -> None:
        """One loss on ``x`` (eval mode, no grad, nothing updated), so a pair of layers whose shapes
        disagree is an error before the run writes anything, not at its first step."""
        if self._s is None:
            return
        student = self._s.model
        was = student.training
        student.eval()
        self._s.force = True
        try:
            with torch.no_grad():
                out = student(x)
                self(x, out, out.argmax(-1))
        finally:
            self._s.force = False
            self._s.clear()
            self.seconds, self.parts = 0.0, {}
            student.train(was)



    def close(self) -> None:
        for taps in (self._s, self._t):
            if taps is not None:
                taps.remove()


def build_distillation(cfg, base: Callable, teacher: Optional[nn.Module], student: nn.Module):
    """The run's loss: ``base`` (labels only, a (outputs, targets) callable) without a teacher."""
    if teacher is None:
        return None
    d = cfg.DISTILL
    loss = DistillationLoss(base, teacher, student, kind=d.TYPE.lower(), alpha=d.ALPHA, tau=d.TAU,
                            hidden_weight=d.HIDDEN_WEIGHT, attn_weight=d.ATTN_WEIGHT,
                            layers=list(d.LAYERS), teacher_layers=list(d.TEACHER_LAYERS))
    device = next(teacher.parameters()).device
    try:
        loss.dry_run(torch.zeros(2, cfg.DATA.INPUT_CHANNEL_NUM[0], cfg.DATA.TRAIN_CROP_SIZE,
                                 cfg.DATA.TRAIN_CROP_SIZE, device=device))
    except Exception:
        loss.close()
        raise
    return loss
