"""The distillation losses, on tensors only (no model, no config): what ``DISTILL.*`` trains with,
for image classifiers (logits (B, C)) and language models (logits (B, T, V), every position a
row) alike.

* :func:`soft_kd` — Hinton's soft-target KD: tau^2 * KL(softmax(t / tau) || softmax(s / tau)),
  averaged over rows (``batchmean``). DeiT's ``soft`` divides the summed KL by ``s.numel()``
  instead (rows x classes), which weakens it by the class count; spin keeps the textbook scale so
  that DISTILL.ALPHA means the same at 10 and at 1000 classes.
* :func:`hard_kd` — DeiT's hard-label distillation: cross-entropy against the teacher's argmax.
* :func:`relation_kd` — MiniViT's (MiniLM's) relation distillation of hidden states or
  attention: KL between the rows of softmax(X X^T / sqrt(d)) of teacher and student, (B, N, d)
  token sequences each (the token counts must agree; the widths need not).
* :func:`attention_kd` — KL between attention maps (B, heads, N, N) given as probabilities.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.float().reshape(-1, x.shape[-1])


def soft_kd(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """tau^2 * mean over rows of KL(p_t || p_s), p = softmax(logits / tau) over the last dim."""
    s = F.log_softmax(_rows(student) / tau, dim=-1)
    t = F.log_softmax(_rows(teacher) / tau, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * (tau * tau)


def hard_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's top-1 class, mean over rows."""
    return F.cross_entropy(_rows(student), _rows(teacher).argmax(-1))


def relation_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(R_t || R_s) per row of R = softmax(X X^T / sqrt(d)), X (B, N, d); mean over B * N rows."""
    if student.shape[:-1] != teacher.shape[:-1]:
        raise ValueError(f"relation distillation needs the same (batch, tokens): student "
                         f"{tuple(student.shape)}, teacher {tuple(teacher.shape)}")

    def log_relation(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return F.log_softmax(x @ x.transpose(-1, -2) / math.sqrt(x.shape[-1]), dim=-1)

    s, t = log_relation(student), log_relation(teacher)
    return F.kl_div(_rows(s), _rows(t), reduction="batchmean", log_target=True)


def attention_kd(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(A_t || A_s) per query row of attention probabilities (B, H, N, N); mean over rows."""
    if student.shape != teacher.shape:
        raise ValueError(f"attention distillation needs maps of one shape: student {tuple(student.shape)}, "
                         f"teacher {tuple(teacher.shape)}")
    s, t = _rows(student).clamp_min(eps).log(), _rows(teacher).clamp_min(eps).log()
    return F.kl_div(s, t, reduction="batchmean", log_target=True)
