"""Hugging Face language-model stacks (GPT-2, Llama) under spin.share: named parts, equal logits
against a hand-tied (ALBERT-style) reference in both attention implementations, generate() with
and without the KV cache, gradient checkpointing, SVD-fitted LoRA relax, next-token distillation.
Every model is built from a tiny config here: nothing is downloaded."""
import ast
import copy
import os

import pytest
import torch
import torch.nn as nn

transformers = pytest.importorskip("transformers")

import spin  # noqa: E402
from spin import SharingError  # noqa: E402
from spin.distill_loss import soft_kd  # noqa: E402
from spin.models.lm import next_token_kd  # noqa: E402
from spin.share_transform import family_of, shared_sets_of  # noqa: E402

STACK = {"gpt2": "transformer.h", "llama": "model.layers"}  # in the *LMHeadModel / *ForCausalLM
BASE_STACK = {"gpt2": "h", "llama": "layers"}  # in GPT2Model / LlamaModel
# no eos: greedy generation runs its max_new_tokens, so every variant yields sequences of one length
SPECIAL = dict(bos_token_id=1, eos_token_id=None, pad_token_id=0)


def gpt2(impl="sdpa", head=True, **kw):
    cfg = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=100, n_positions=32, **SPECIAL, **kw)
    cls = transformers.GPT2LMHeadModel if head else transformers.GPT2Model
    torch.manual_seed(0)
    return cls._from_config(cfg, attn_implementation=impl).eval()


def llama(impl="sdpa", head=True, **kw):
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                   **SPECIAL, **kw)
    cls = transformers.LlamaForCausalLM if head else transformers.LlamaModel
    torch.manual_seed(0)
    return cls._from_config(cfg, attn_implementation=impl).eval()


BUILD = {"gpt2": gpt2, "llama": llama}
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def tokens(batch=2, length=8, seed=1):
    return torch.randint(2, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def tied_reference(vanilla: nn.Module, shared: nn.Module) -> nn.Module:
    """ALBERT-style WS by hand: the vanilla model whose grouped blocks hold the very same
    nn.Parameter for every in-scope name, valued as the shared model's sets (WFWS: the fusions)."""
    ref, sets = copy.deepcopy(vanilla), shared_sets_of(shared)
    stack = ref.get_submodule(sets.blocks_path)
    with torch.no_grad():
        for g, members in enumerate(sets.plan.groups):
            for name in sets.names:
                tied = nn.Parameter(sets.set_tensor(g, name).detach().clone())
                mod, _, leaf = name.rpartition(".")
                for layer in members:
                    setattr(stack[layer].get_submodule(mod), leaf, tied)
    return ref


def logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def greedy(model, x, **kw):
    with torch.no_grad():
        return model.generate(x, max_new_tokens=5, do_sample=False, **kw)


def test_import_spin_needs_no_transformers():
    # lm.py registers its classes by qualified name; an import of transformers at its top level would
    # make every `import spin` pay for (or fail without) the optional extra
    path = os.path.join(os.path.dirname(spin.__file__), "models", "lm.py")
    tree = ast.parse(open(path).read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "transformers"]


@pytest.mark.parametrize("family,head", [("gpt2", True), ("gpt2", False), ("llama", True), ("llama", False)])
def test_named_parts_and_default_scope(family, head):
    m, blocks = BUILD[family](head=head), (STACK if head else BASE_STACK)[family]
    assert family_of(m) == family
    ws = spin.share(m, share_rate=2, blocks=blocks)
    names = shared_sets_of(ws).names
    if family == "gpt2":
        assert set(names) == {f"{p}.{k}" for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
                              for k in ("weight", "bias")}
        assert [n for n, _ in ws.get_submodule(blocks)[0].named_parameters()] == ["ln_1.weight", "ln_1.bias",
                                                                                   "ln_2.weight", "ln_2.bias"]
    else:
        assert set(names) == {f"self_attn.{p}_proj.weight" for p in "qkvo"} | \
            {f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    norm = {"gpt2": {"ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"},
            "llama": {"input_layernorm.weight", "post_attention_layernorm.weight"}}[family]
    assert set(shared_sets_of(spin.share(m, share_rate=2, blocks=blocks, scope="norm")).names) == norm
    # 4 layers at rate 2: the in-scope block parameters are stored twice instead of four times
    per_layer = sum(p.numel() for n, p in m.get_submodule(blocks)[0].named_parameters() if n in names)
    assert spin.unique_parameters(ws) == sum(p.numel() for p in m.parameters()) - 2 * per_layer
    with pytest.raises(SharingError, match=f"not a part of {family}.s blocks"):  # DeiT's, not theirs
        spin.share(m, share_rate=2, blocks=blocks, scope="ls")


def test_blocks_must_be_named_and_the_error_says_where():
    # spin.share looks for model.blocks; the error lists the stack to pass
    with pytest.raises(SharingError, match=r"candidates: transformer\.h"):
        spin.share(gpt2(), share_rate=2)
    with pytest.raises(SharingError, match=r"candidates: model\.layers"):
        spin.share(llama(), share_rate=2)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_equal_logits_to_a_hand_tied_reference(family, impl):
    vanilla = BUILD[family](impl, **(NO_DROPOUT if family == "gpt2" else {}))
    assert vanilla.config._attn_implementation == impl
    x = tokens()
    for fusion in (None, "mean"):
        shared = spin.share(vanilla, share_rate=2, blocks=STACK[family], fusion=fusion).eval()
        ref = tied_reference(vanilla, shared)
        stack = ref.get_submodule(STACK[family])
        first = shared_sets_of(shared).names[0]
        assert stack[0].get_parameter(first) is stack[1].get_parameter(first)  # literally tied
        assert stack[1].get_parameter(first) is not stack[2].get_parameter(first)
        torch.testing.assert_close(logits(shared, x), logits(ref, x), rtol=0, atol=1e-5)
        if fusion:
            torch.testing.assert_close(logits(spin.fuse(shared).eval(), x), logits(shared, x), rtol=0, atol=1e-5)
    # backward: WS set g's gradient is the tied parameter's (the sum over its layers); WFWS layer l's
    # is 1/2 of it (the mean's share), each block fusing its own group (HF loops over a ModuleList)
    ws = spin.share(vanilla, share_rate=2, blocks=STACK[family]).train()
    wfws = spin.share(vanilla, share_rate=2, blocks=STACK[family], fusion="mean").train()
    refs = [tied_reference(vanilla, model).train() for model in (ws, wfws)]
    for model in (ws, wfws, *refs):
        model(x, labels=x).loss.backward()
    sets = shared_sets_of(ws)
    tied = [ref.get_submodule(STACK[family]) for ref in refs]
    for g, members in enumerate(sets.plan.groups):
        for name in sets.names:
            want = tied[0][members[0]].get_parameter(name).grad
            torch.testing.assert_close(ws.shared.sets[g].get_parameter(name).grad, want, rtol=1e-4, atol=1e-6)
            want = tied[1][members[0]].get_parameter(name).grad / 2
            for layer in members:
                got = wfws.get_submodule(STACK[family])[layer].get_parameter(name).grad
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_with_and_without_the_cache(family):
    vanilla, x = BUILD[family](), tokens()
    for fusion in (None, "mean"):
        shared = spin.share(vanilla, share_rate=2, blocks=STACK[family], fusion=fusion).eval()
        out = greedy(shared, x, use_cache=True)
        assert out.shape == (2, x.shape[1] + 5) and torch.equal(out[:, :x.shape[1]], x)
        assert torch.equal(greedy(shared, x, use_cache=False), out)
        assert torch.equal(greedy(tied_reference(vanilla, shared), x, use_cache=True), out)
        if fusion:
            assert torch.equal(greedy(spin.fuse(shared).eval(), x, use_cache=True), out)
            with spin.cached(shared):  # one fusion per group for the whole generation
                assert torch.equal(greedy(shared, x, use_cache=True), out)
    # left padding: the attention mask reaches the shared blocks as it does the vanilla ones
    ws = spin.share(vanilla, share_rate=2, blocks=STACK[family])
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    padded = x.masked_fill(mask == 0, 0)
    assert torch.equal(greedy(ws, padded, attention_mask=mask),
                       greedy(tied_reference(vanilla, ws), padded, attention_mask=mask))


def test_gradient_checkpointing():
    x, vanilla = tokens(), gpt2(**NO_DROPOUT)

    def grads(model, checkpointing):
        model = copy.deepcopy(model).train()
        if checkpointing:  # transformers 5's name, else 4's
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model(x, labels=x).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    ws = spin.share(vanilla, share_rate=2, blocks="transformer.h")
    plain, ckpt = grads(ws, False), grads(ws, True)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=1e-7)
    # HF checkpoints the blocks' forward inside spin's hooks: the recompute would read unfused weights
    for kw in (dict(fusion="mean"), dict(relax="lora", relax_rank=2)):
        with pytest.raises(SharingError, match="checkpointing_disable"):
            grads(spin.share(vanilla, share_rate=2, blocks="transformer.h", **kw), True)
        grads(spin.share(vanilla, share_rate=2, blocks="transformer.h", **kw), False)  # fine without


def test_lora_relax_from_the_vanilla_model():
    # Relaxed Recursive Transformers' init: layer i = its set + the truncated SVD of W_i - W_p(i).
    # GPT-2's Conv1D stores (in, out) weights: the delta is the SVD of that matrix, any orientation
    vanilla, x = gpt2(), tokens(4, 16)
    assert isinstance(vanilla.transformer.h[0].attn.c_attn, transformers.pytorch_utils.Conv1D)
    want = logits(vanilla, x)
    errors = {}
    for rank in (0, 8, 16, 32):  # 32 = n_embd: the smaller side of every block matrix (full rank)
        kw = dict(relax="lora", relax_rank=rank) if rank else {}
        relaxed = spin.share(vanilla, share_rate=2, blocks="transformer.h", **kw).eval()
        errors[rank] = (logits(relaxed, x) - want).pow(2).mean().sqrt().item()
    assert errors[32] < 1e-5, errors  # full rank: the vanilla model again, up to float error
    assert errors[0] > errors[8] > errors[16] > errors[32], errors
    # the export keeps the deltas
    relaxed = spin.share(vanilla, share_rate=2, blocks="transformer.h", fusion="mean", relax="lora",
                         relax_rank=32).eval()
    torch.testing.assert_close(logits(spin.fuse(relaxed).eval(), x), want, rtol=0, atol=1e-5)


def test_next_token_kd_masks_positions():
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    torch.testing.assert_close(next_token_kd(s, t, 2.0), soft_kd(s.reshape(10, 11), t.reshape(10, 11), 2.0))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    loss = next_token_kd(s, t, 1.0, mask)
    torch.testing.assert_close(loss, soft_kd(s[mask.bool()], t[mask.bool()]))
    moved = s.clone()
    moved[0, :2] += 5.0  # padded positions: no influence on the loss
    torch.testing.assert_close(next_token_kd(moved, t, 1.0, mask), loss)
    assert next_token_kd(t, t).abs() < 1e-6
    with pytest.raises(SharingError, match="same input_ids"):
        next_token_kd(s, t[:, :4])
    with pytest.raises(SharingError, match="mask"):
        next_token_kd(s, t, 1.0, mask[:, :4])
    with pytest.raises(SharingError, match="no position"):
        next_token_kd(s, t, 1.0, torch.zeros_like(mask))


def test_distilling_a_ws_student_from_its_vanilla_teacher():
    # initializer_range 0.2: GPT-2's 0.02 gives near-uniform next-token distributions (KL ~1e-3 to
    # start with), too flat a teacher to see the student learn in a few steps
    teacher = gpt2(**NO_DROPOUT, initializer_range=0.2).eval()
    student = spin.share(teacher, share_rate=2, blocks="transformer.h").train()
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    held = tokens(8, 16, seed=99)
    mask = torch.ones_like(held)
    mask[:, :4] = 0  # as left padding would be

    def held_out_kl():
        with torch.no_grad():
            return next_token_kd(student(held).logits, teacher(held).logits, 1.0, mask).item()

    first = held_out_kl()
    for _ in range(15):
        x = torch.randint(2, 100, (4, 16), generator=gen)
        with torch.no_grad():
            target = teacher(x).logits
        loss = next_token_kd(student(x).logits, target, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = held_out_kl()
    assert last < 0.5 * first, (first, last)
    assert all(p.grad is None for p in teacher.parameters())
