"""Language-model stacks: Hugging Face ``transformers`` GPT-2 and Llama, shared by ``spin.share``.

    model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=32, n_head=2))
    ws = spin.share(model, share_rate=2, blocks="transformer.h")            # Llama: blocks="model.layers"

The named scope parts of their blocks (default scope ``attn+mlp``, as for DeiT):

    GPT-2 (GPT2Block)      attn: attn.c_attn, attn.c_proj   mlp: mlp.c_fc, mlp.c_proj   norm: ln_1, ln_2
    Llama (decoder layer)  attn: self_attn.q_proj, k_proj, v_proj, o_proj
                           mlp: mlp.gate_proj, up_proj, down_proj   norm: input_layernorm, post_attention_layernorm

The classes register by their qualified names, so this module never imports ``transformers``
(install it with the ``lm`` extra); a model of any subclass of ``GPT2PreTrainedModel`` /
``LlamaPreTrainedModel`` (``GPT2LMHeadModel``, ``GPT2Model``, ``LlamaForCausalLM``, ``LlamaModel``,
...) finds its parts. :func:`next_token_kd` distils a (shared) student from its original model.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..distill_loss import soft_kd
from ..share_transform import register_family
from ..sharing import SharingError, register_scopes

GPT2_PARTS = {"attn": ("attn.c_attn.*", "attn.c_proj.*"), "mlp": ("mlp.c_fc.*", "mlp.c_proj.*"),
              "norm": ("ln_1.*", "ln_2.*")}
LLAMA_PARTS = {"attn": tuple(f"self_attn.{p}_proj.*" for p in "qkvo"),
               "mlp": tuple(f"mlp.{p}_proj.*" for p in ("gate", "up", "down")),
               "norm": ("input_layernorm.*", "post_attention_layernorm.*")}
for _family, _parts, _cls in (("gpt2", GPT2_PARTS, "transformers.models.gpt2.modeling_gpt2.GPT2PreTrainedModel"),
                              ("llama", LLAMA_PARTS, "transformers.models.llama.modeling_llama.LlamaPreTrainedModel")):
    register_scopes(_family, _parts, "attn+mlp")
    register_family(_cls, _family)


def next_token_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0,
                  attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next-token distillation: tau^2 * KL(p_teacher || p_student) of the next-token distributions
    (B, T, V), averaged over the positions that ``attention_mask`` (B, T; 1 = a real token) keeps
    (every position without one). Position t's logits predict token t + 1 in both models, so the
    rows are compared as they are, without a shift."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise SharingError(f"next_token_kd takes student and teacher logits of one shape (batch, tokens, vocab), got "
                           f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}; run both models on the "
                           f"same input_ids")
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(student_logits.shape[:2]):
            raise SharingError(f"attention_mask is {tuple(attention_mask.shape)} but the logits are "
                               f"{tuple(student_logits.shape)}; pass the (batch, tokens) mask of the input_ids")
        keep = attention_mask.bool()
        if not keep.any():
            raise SharingError("attention_mask keeps no position to distil; pass a mask with 1 at the real tokens")
        # Boolean indexing drops the padded rows before the softmax: they add nothing to the mean.
        student_logits, teacher_logits = student_logits[keep], teacher_logits[keep]
    return soft_kd(student_logits, teacher_logits, tau)
