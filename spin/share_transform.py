"""``spin.share``: parameter sharing as a model transform, for isotropic and hierarchical networks.

``share(model, share_rate=2, ...)`` takes a model whose trunk is a stack of D structurally identical
blocks (``model.blocks``, or ``blocks="path.to.stack"``) and returns it with block i reading set
p(i) of a :class:`~spin.sharing.SharingPlan` for every block parameter in scope. The model keeps
its class, forward and timm contract; blocks run their own forward code.

Hierarchical models (Swin, models with stages) have one stack per stage, and the stages differ in
width: ``blocks`` may then be a list of stack paths, or a glob whose ``*`` matches one path part
(``"layers.*.blocks"``, ``"stages.*.blocks"``) and expands to every matching nn.Sequential /
nn.ModuleList in model order. Each stack is shared within itself, never across stacks: the plan
keywords apply to each stack (``num_sets=1``: one set per stage, MiniViT's weight multiplexing),
or ``plan=`` is a list of plans, one per stack. Stack k's tensors live at ``shared.{k}.<as
below>`` (``model.shared`` is then a :class:`SharedStacks`, one :class:`SharedSets` per stack);
a single path without ``*`` keeps the one-stack keys ``shared.<as below>``.
:func:`shared_stacks_of` lists a model's stacks' sets (:func:`shared_sets_of` answers for a
one-stack model), :func:`sharing_of` gives a :class:`~spin.sharing.StagePlans` for several.

* WS (no fusion): the N sets live at ``shared.sets.{g}.<block-relative name>`` (e.g.
  ``shared.sets.0.attn.qkv.weight``); set g starts as a copy of its first member layer, and the
  per-layer copies leave the blocks. Out-of-scope parameters keep their keys.
* WFWS (``fusion``): the D per-layer parameters stay where they are (``blocks.{i}.<name>``, the
  vanilla keys, so any vanilla checkpoint loads) and are fused into set p(i) on every forward,
  grouped by the plan's mapping; weighted fusions learn ``shared.coeffs.{i}.<name>``, a (1,) or
  (C_out,) coefficient per layer and in-scope weight (tensors of 2+ dims; biases, norms and layer
  scales use the plain mean). :func:`fuse` exports the WS model with equal logits.
* Relaxed sharing (``relax="lora"`` with ``relax_rank`` r, or ``relax="scale"``): layer i reads
  its set plus a per-layer delta (``spin.fusion``: W + B_i A_i, or per-channel scale / shift) kept
  at ``shared.relax_params.{i}.<name>_lora_a|_lora_b|_scale|_shift`` and kept by the export. ``share``
  initialises the deltas from the model it transforms (truncated SVD of W_i - W_{p(i)}, or the
  least-squares scale), so a relaxed model starts as close to the original as the rank allows.

How a block reads its set: a forward pre-hook puts the tensor of its set on the block's submodule
as a plain attribute (``qkv.weight``), which Python finds before nn.Module's parameter lookup. WS
puts the shared Parameter itself there (re-pointed at every forward, so .to(), load_state_dict and
deepcopy cannot leave it stale); WFWS and relaxed sharing put the computed tensor there for the
block's forward only (a forward hook that runs even when the forward raises takes it away), so
outside a forward ``blocks[i]...weight`` is the stored per-layer parameter again. In grad mode a
call of the whole stack fuses each group once, for this call only (its members share the fused
tensor; the memo is dropped when the call ends, also on an exception); a block called on its own
(gradient checkpointing's recompute, ``forward_intermediates``) fuses its group itself, so
checkpointing and gradient accumulation get their own fresh graphs. Eval works the same way: every
forward fuses afresh, so an evaluation always sees the weights as they are now, whatever changed
them (any optimizer, fused ones included, EMA, load_state_dict, in-place edits). Fusions outlive
a forward only inside an explicit no-grad ``with spin.cached(model):`` block, whose caller promises
that no weight changes in it (deployment: ``spin.fuse`` removes the fusion altogether).

Buffers (BatchNorm running statistics, Swin's relative position index and attention mask) stay
per layer whatever the scope.

Compilers: ``torch.export`` and ``torch.compile`` run the hooks and trace what they compute.
TorchScript and ``torch.fx.symbolic_trace`` cannot keep them (a scripted or traced WS model would
lose its sets, a WFWS one its fusion), so both are refused with a :class:`SharingError`. timm's
``group_matcher`` (layer-wise LR decay) maps ``shared.sets.{g}`` (``shared.{k}.sets.{g}``) to the
deepest layer of its stack that reads set g.
"""
from __future__ import annotations

import contextlib
import copy
import fnmatch
import numbers
import re
from typing import Callable, Optional, Sequence, Union

import torch
import torch.fx
import torch.nn as nn

from .fusion import coefficient_shape, fuse_group, parse_fusion
from .relax import fit_init, parse_relax, relax_apply, relax_shapes, zero_init
from .sharing import (SharingError, SharingPlan, StagePlans, build_plan, parse_scope, refuse_beside_plan,
                      scope_patterns)

__all__ = ["SharedSets", "SharedStacks", "cached", "family_of", "fit_relax_deltas", "fuse", "layer_weights",
           "param_tree", "refuse_wfws_prune", "register_family", "share", "shared_sets_of", "shared_stacks_of",
           "sharing_of", "single_stack_key", "stack_plans", "unique_parameters",
           "SharedBlocks", "bank_of", "init_relax"]  # the last three: former names

# Model class (or its qualified name) -> (family, its named scope parts when they differ from
# spin.sharing.SCOPES[family]).
_FAMILIES: dict[Union[type, str], tuple[str, Optional[dict]]] = {}
_KEY = "_spin_layer"  # a block's (SharedSets, layer index, [(module, attribute, name)])
_STACKS = (nn.Sequential, nn.ModuleList)


def register_family(model_cls: Union[type, str], family: str, parts: Optional[dict] = None) -> None:
    """Declare that ``model_cls`` (and its subclasses) has blocks of ``family``; ``parts`` maps its
    named scope parts to block-relative glob patterns where its block names differ from the
    family's (timm's ConvMixer beside spin's). ``model_cls`` may be the class's qualified name
    (``"package.module.Class"``), so that classes of an optional package register without
    importing it (``import spin`` stays free of transformers)."""
    _FAMILIES[model_cls] = (family, parts)


def _family_entry(model: nn.Module) -> tuple[Optional[str], Optional[dict]]:
    for cls in type(model).__mro__:
        for key in (cls, f"{cls.__module__}.{cls.__qualname__}"):
            if key in _FAMILIES:
                return _FAMILIES[key]
    return None, None


def family_of(model: nn.Module) -> Optional[str]:
    return _family_entry(model)[0]


def param_tree(tensors: dict[str, torch.Tensor]) -> nn.Module:
    """{'attn.qkv.weight': t, ...} -> a module holding Parameter(t) at that dotted name."""
    root = nn.Module()
    for name, t in tensors.items():
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if part not in mod._modules:
                mod.add_module(part, nn.Module())
            mod = mod._modules[part]
        mod.register_parameter(leaf, nn.Parameter(t))
    return root


class SharedSets(nn.Module):
    """The shared sets (WS) or fusion coefficients (WFWS) of a shared model, at ``model.shared``,
    and the rule for the tensor each block reads (:meth:`layer_tensor`)."""

    def __init__(self, stack: nn.Module, plan: SharingPlan, fusion: Optional[str],
                 names: Sequence[str], blocks_path: str, family: Optional[str],
                 sets: Optional[list[dict[str, torch.Tensor]]] = None, relax: Optional[str] = None,
                 relax_rank: int = 0):
        super().__init__()
        self.plan, self.fusion, self.names = plan, fusion, tuple(names)
        self.relax, self.relax_rank = relax, relax_rank
        self.blocks_path, self.family = blocks_path, family
        # References, not submodules (the keys stay): the stack, and per layer / set / coefficient
        # holder the (module, attribute) of each name, read from _parameters on every use.
        object.__setattr__(self, "_stack", stack)
        object.__setattr__(self, "_stored", [_slots(b, names) for b in stack])
        self._pass: Optional[dict] = None  # this stack call's fusions
        self._scoped: Optional[dict] = None  # the fusions of an open spin.cached() block
        self._coeff_names: tuple = ()
        if fusion is None:
            self.sets = nn.ModuleList([param_tree(s) for s in sets])
            object.__setattr__(self, "_sets", [_slots(h, names) for h in self.sets])
        else:
            first = dict(stack[0].named_parameters())
            shapes = {n: coefficient_shape(fusion, first[n].shape[0]) for n in names if first[n].dim() >= 2}
            if any(shapes.values()):
                self.coeffs = nn.ModuleList([param_tree({n: torch.ones(s) for n, s in shapes.items()})
                                             for _ in range(plan.depth)])
                self._coeff_names = tuple(shapes)
                object.__setattr__(self, "_coeffs", [_slots(h, shapes) for h in self.coeffs])
        self._relax_of: dict = {}  # name -> {suffix: shape}
        if relax:
            first = dict(stack[0].named_parameters()) if fusion else {n: t for n, t in sets[0].items()}
            self._relax_of = {n: relax_shapes(relax, tuple(first[n].shape), relax_rank) for n in names}
            self._relax_of = {n: v for n, v in self._relax_of.items() if v}
            flat = {f"{n}_{suffix}": shape for n, v in self._relax_of.items() for suffix, shape in v.items()}
            self.relax_params = nn.ModuleList([param_tree(zero_init(relax, flat)) for _ in range(plan.depth)])
            object.__setattr__(self, "_relax", [
                {n: _slots(h, [f"{n}_{x}" for x in v]) for n, v in self._relax_of.items()}
                for h in self.relax_params])

    def extra_repr(self) -> str:
        return (f"blocks={self.blocks_path}, depth={self.plan.depth}, sets={self.plan.num_sets}, "
                f"map={list(self.plan.layer_to_set)}, "
                f"fusion={self.fusion}, relax={self.relax}{self.relax_rank or ''}, "
                f"scope={'+'.join(self.plan.scope) or 'default'}")

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling anything.
        raise SharingError(_NOT_TRACEABLE.format(what="TorchScript cannot compile"))

    @property
    def static(self) -> bool:
        """True when every block reads a Parameter itself (WS, no relax): it stays on the block
        between forwards (re-pointed at each one)."""
        return self.fusion is None and self.relax is None

    def stored(self, layer: int, name: str) -> torch.Tensor:
        """Layer's own parameter ``name`` (from _parameters, not getattr: the attribute may hold
        an injected tensor of a block whose forward was cut short)."""
        return _read(self._stored[layer][name])

    def set_tensor(self, g: int, name: str) -> torch.Tensor:
        """Set g's tensor: the shared Parameter (WS) or the fusion of its group (WFWS)."""
        if self.fusion is None:
            return _read(self._sets[g][name])
        members = self.plan.groups[g]
        weights = [_read(self._stored[l][name]) for l in members]
        coeffs = [_read(self._coeffs[l][name]) for l in members] if name in self._coeff_names else None
        # A memo lives only as long as a scope in which no weight can change: one call of the
        # stack (the optimizer steps between calls), or a no-grad spin.cached() block whose caller
        # promises the same. Nothing is keyed on tensor versions, which fused optimizers skip.
        memo = self._scoped if self._scoped is not None and not torch.is_grad_enabled() else self._pass
        if memo is None:  # a block called on its own (checkpointing, intermediates)
            return fuse_group(weights, self.fusion, coeffs)
        if (g, name) not in memo:  # the first member this scope: fuse once
            memo[(g, name)] = fuse_group(weights, self.fusion, coeffs)
        return memo[(g, name)]

    def relax_of(self, i: int, name: str) -> dict:
        """Layer i's relax parameters of ``name`` by suffix (lora_a, lora_b, scale, shift)."""
        return {f"{x}": _read(slot) for x, slot in zip(self._relax_of.get(name, {}),
                                                       self._relax[i].get(name, {}).values())}

    def layer_tensor(self, i: int, name: str) -> torch.Tensor:
        base = self.set_tensor(self.plan.layer_to_set[i], name)
        if self.relax is None or name not in self._relax_of:
            return base
        return relax_apply(self.relax, base, self.relax_of(i, name))

    @torch.no_grad()
    def fit_deltas(self, originals: Callable[[int, str], torch.Tensor]) -> None:
        """Fit every layer's delta to bring its set back to ``originals(i, name)`` (the model's own
        weights): truncated SVD of the residual (lora), least-squares scale or shift (scale)."""
        for i in range(self.plan.depth):
            for name in self._relax_of:
                fit_init(self.relax_of(i, name), originals(i, name),
                          self.set_tensor(self.plan.layer_to_set[i], name))

    def inject_all(self) -> None:
        for block in self._stack:
            _inject(block, ())

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.static:  # .to()/.half() may replace the shared Parameters: re-point blocks
            self.inject_all()
        if self._scoped is not None:
            self._scoped.clear()
        return out

    def batchnorm_parameters(self) -> list:
        """The shared sets' parameters that belong to BatchNorm layers (BN.WEIGHT_DECAY applies)."""
        if self.fusion is not None:  # the stored copies stay in their BatchNorm modules
            return []
        return [_read(self._sets[g][n]) for g in range(self.plan.num_sets) for n in self.bn_names]

    def export_drops(self) -> int:
        """Parameters that the WS export drops: WFWS's D - N extra copies and its coefficients."""
        if self.fusion is None:
            return 0
        per_layer = sum(self.stored(0, n).numel() for n in self.names)
        coeffs = sum(p.numel() for p in self.coeffs.parameters()) if hasattr(self, "coeffs") else 0
        return coeffs + (self.plan.depth - self.plan.num_sets) * per_layer


class SharedStacks(nn.ModuleList):
    """``model.shared`` of a model shared per stack (``blocks=`` a list or a glob): the
    :class:`SharedSets` of each block stack, in the order of ``blocks``; stack k's keys are
    ``shared.{k}.sets...``, ``shared.{k}.coeffs...``, ``shared.{k}.relax_params...``."""

    __repr__ = nn.Module.__repr__  # ModuleList's compact repr leaves extra_repr out

    def extra_repr(self) -> str:
        return "stacks: " + ", ".join(s.blocks_path for s in self)


def single_stack_key(key: str) -> str:
    """A state-dict key with a per-stack index dropped (``shared.2.coeffs.0.w`` ->
    ``shared.coeffs.0.w``), so rules written for one stack's keys read every stack's."""
    return re.sub(r"^shared\.\d+\.", "shared.", key)


def _slots(root: nn.Module, names) -> dict:
    return {n: (root.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in names}


def _read(slot) -> torch.Tensor:
    return slot[0]._parameters[slot[1]]


_NOT_TRACEABLE = ("{what} the forward hooks through which the blocks of a shared model read their sets; "
                  "use torch.export.export(model, (x,)) (for deployment: spin export), or the vanilla model")


def _refuse_symbolic(args) -> None:
    """torch.fx.symbolic_trace runs hooks with Proxy inputs; the GraphModule it builds would not
    (a WS graph without its sets, a WFWS graph of the unfused weights). torch.export and
    torch.compile trace real or fake tensors and keep what the hooks compute."""
    if args and isinstance(args[0], torch.fx.Proxy):
        raise SharingError(_NOT_TRACEABLE.format(what="torch.fx cannot trace"))


def _open_pass(stack: nn.Module, args) -> None:
    _refuse_symbolic(args)
    stack.__dict__[_KEY]._pass = {}


def _close_pass(stack: nn.Module, args, output) -> None:
    stack.__dict__[_KEY]._pass = None


def _inject(block: nn.Module, args) -> None:
    _refuse_symbolic(args)
    shared, i, targets = block.__dict__[_KEY]
    # Hugging Face's layer checkpointing (transformers 5: GradientCheckpointingLayer) checkpoints the
    # block's forward inside these hooks: its backward recompute runs without them and would read the
    # stored, unfused weights, so a WFWS or relaxed block would get wrong gradients. WS blocks keep
    # their set Parameter on the block between forwards, and recompute correctly.
    if not shared.static and getattr(block, "gradient_checkpointing", False) is True and block.training \
            and torch.is_grad_enabled():
        raise SharingError(
            f"Hugging Face gradient checkpointing recomputes {type(block).__name__} without the hooks through which "
            f"its WFWS or relaxed block reads its fused set (wrong gradients); turn it off "
            f"(model.activation_checkpointing_disable(); transformers 4: gradient_checkpointing_disable()), or "
            f"checkpoint a plain WS model (no fusion, no relax)")
    if shared.fusion is not None:
        _refuse_replaced(shared._root)
    for mod, attr, name in targets:
        object.__setattr__(mod, attr, shared.layer_tensor(i, name))


def _refuse_replaced(root: nn.Module) -> None:
    # Every stack, not just the running one: pruning a staged model drops whole stages, whose
    # blocks then never run to notice.
    for shared in shared_stacks_of(root):
        try:
            here = root.get_submodule(shared.blocks_path)
        except AttributeError:
            here = None
        if here is not shared._stack:
            raise SharingError(
                f"the block stack {shared.blocks_path} of this WFWS model was replaced or dropped "
                f"(prune_intermediate_layers, a slice): its fused sets read every member layer, and the dropped "
                f"ones are no longer in the model; prune spin.fuse(model), its WS export, instead")


def _release(block: nn.Module, args, output) -> None:
    for mod, attr, _ in block.__dict__[_KEY][2]:
        mod.__dict__.pop(attr, None)


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def _candidates(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, _STACKS) and len(m) > 1 and len({type(b) for b in m}) == 1]


def _stack_paths(model: nn.Module, blocks) -> tuple[list[str], bool]:
    """The stack paths ``blocks`` names (a glob expanded in model order), and whether it names
    them as a list or glob: the layout with one SharedSets per stack, whatever the count, so a
    model's keys do not change with its number of stages."""
    if isinstance(blocks, str) and "*" not in blocks:
        return [blocks], False
    if isinstance(blocks, str):
        patterns = [blocks]
    elif isinstance(blocks, (list, tuple)) and blocks and all(isinstance(b, str) for b in blocks):
        patterns = list(blocks)
    else:
        raise SharingError(f"blocks is the dotted path of the block stack inside the model (e.g. 'blocks', "
                           f"'trunk.layers'), a list of them, or a glob such as 'layers.*.blocks', got {blocks!r}")
    paths: list[str] = []
    stacks = [n for n, m in model.named_modules() if isinstance(m, _STACKS)]
    for pattern in patterns:
        if "*" not in pattern:
            paths.append(pattern)
            continue
        rx = re.compile("[^.]*".join(re.escape(part) for part in pattern.split("*")))
        hit = [n for n in stacks if rx.fullmatch(n)]
        if not hit:
            found = _candidates(model)
            raise SharingError(f"blocks={pattern!r} matches no nn.Sequential or nn.ModuleList of "
                               f"{type(model).__name__} ('*' stands for one part of a dotted path); name the stacks"
                               + (f" (candidates: {', '.join(found[:6])})" if found else ""))
        paths += hit
    for a in paths:
        inner = next((b for b in paths if b != a and b.startswith(a + ".")), None)
        if paths.count(a) > 1 or inner:
            raise SharingError(f"blocks names {a} {'twice' if inner is None else 'and ' + inner + ' inside it'}; "
                               f"name each block stack once, none inside another")
    return paths, True


def _find_stack(model: nn.Module, blocks: str) -> nn.Module:
    try:
        stack = model.get_submodule(blocks)
    except AttributeError:
        stack = None
    if not isinstance(stack, _STACKS) or len(stack) == 0:
        found = _candidates(model)
        raise SharingError(
            f"no uniform block stack at {type(model).__name__}.{blocks}: sharing needs an "
            f"nn.Sequential or nn.ModuleList of identical blocks; pass blocks='path.to.stack'"
            + (f" (candidates: {', '.join(found[:5])})" if found else ""))
    kinds = {type(b).__name__ for b in stack}
    if len(kinds) > 1:
        raise SharingError(f"{blocks} holds blocks of different types ({', '.join(sorted(kinds))}); "
                           f"sharing needs structurally identical blocks")
    return stack


def _in_scope(stack: nn.Module, tokens: tuple[str, ...], family: Optional[str], blocks: str,
              parts: Optional[dict] = None) -> list[str]:
    """Block-relative names of the parameters in scope, checked to exist with one shape per block."""
    params = dict(stack[0].named_parameters())
    names: list[str] = []
    for token in tokens or ("",):
        patterns = scope_patterns((token,) if token else (), family, parts)
        hit = [n for n in params if any(_matches(n, p) for p in patterns)]
        if not hit:
            raise SharingError(
                f"sharing scope {token or 'default'!r} ({', '.join(patterns)}) matches no parameter "
                f"of the {type(stack[0]).__name__} blocks at {blocks}; their parameters: "
                f"{', '.join(list(params)[:12])}{' ...' if len(params) > 12 else ''}")
        names += [n for n in hit if n not in names]
    for i, block in enumerate(stack):
        own = dict(block.named_parameters())
        for n in names:
            if n not in own or own[n].shape != params[n].shape:
                got = tuple(own[n].shape) if n in own else "no such parameter"
                raise SharingError(
                    f"blocks differ: {blocks}.{i}.{n} is {got} but {blocks}.0.{n} is "
                    f"{tuple(params[n].shape)}; sharing needs structurally identical blocks")
    return names


def _install(stack: nn.Module, plan: SharingPlan, fusion: Optional[str], names: list[str], blocks: str,
             family: Optional[str], sets: Optional[list[dict[str, torch.Tensor]]] = None,
             relax: Optional[str] = None, relax_rank: int = 0) -> SharedSets:
    """One stack's sets and hooks; :func:`_attach` puts them on the model."""
    if fusion is None:  # the per-layer copies leave the blocks; the sets hold them once
        for block in stack:
            for n in names:
                mod_name, _, leaf = n.rpartition(".")
                delattr(block.get_submodule(mod_name) if mod_name else block, leaf)
    shared = SharedSets(stack, plan, fusion, names, blocks, family, sets, relax, relax_rank)
    shared.bn_names = tuple(n for n in names if isinstance(stack[0].get_submodule(n.rpartition(".")[0]),
                                                         nn.modules.batchnorm._BatchNorm))
    for i, block in enumerate(stack):
        targets = []
        for n in names:
            mod_name, _, leaf = n.rpartition(".")
            targets.append((block.get_submodule(mod_name) if mod_name else block, leaf, n))
        object.__setattr__(block, _KEY, (shared, i, targets))
        block.register_forward_pre_hook(_inject)
        if not shared.static:
            block.register_forward_hook(_release, always_call=True)
    if shared.static:
        shared.inject_all()
    else:  # a call of the whole stack fuses each group once (its members share the tensor)
        object.__setattr__(stack, _KEY, shared)
        stack.register_forward_pre_hook(_open_pass)
        stack.register_forward_hook(_close_pass, always_call=True)
    return shared


def _attach(model: nn.Module, stacks: list[SharedSets], per_stack: bool) -> None:
    for k, shared in enumerate(stacks):
        shared.prefix = f"shared.{k}." if per_stack else "shared."  # its state-dict keys' prefix
        object.__setattr__(shared, "_root", model)  # a reference, not a submodule
    model.add_module("shared", SharedStacks(stacks) if per_stack else stacks[0])
    if callable(getattr(type(model), "group_matcher", None)):
        model.__dict__["group_matcher"] = SharedGroupMatcher(model)


def _uninstall(model: nn.Module) -> tuple[list[SharedSets], bool]:
    """Take every stack's sets and hooks off ``model``: (its SharedSets, whether per stack)."""
    stacks, per_stack = shared_stacks_of(model), isinstance(model.shared, SharedStacks)
    for shared in stacks:
        for module in [*shared._stack, shared._stack]:
            for hooks in (module._forward_pre_hooks, module._forward_hooks):
                for k in [k for k, fn in hooks.items() if fn in (_inject, _release, _open_pass, _close_pass)]:
                    del hooks[k]
                    module._forward_hooks_always_called.pop(k, None)
            if module is not shared._stack:
                _release(module, (), None)
            module.__dict__.pop(_KEY, None)
    model.__dict__.pop("group_matcher", None)
    del model.shared
    return stacks, per_stack


class SharedGroupMatcher:
    """timm's ``model.group_matcher`` (parameter groups for layer-wise LR decay) for a shared model:
    its class's matcher, with each shared tensor in the group of a layer that reads it: layer i's
    coefficients and deltas (``shared.coeffs.{i}``, ``shared.relax_params.{i}``) with layer i, set g
    (``shared.sets.{g}``) with the deepest layer that reads it, so layer decay scales no set below
    the rate of any layer it serves; per stack, each within its own stack (``shared.{k}.sets.{g}``
    with the deepest of its members in stack k). An instance attribute, set by :func:`share`."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, coarse: bool = False) -> dict:
        model = self.model
        matcher = type(model).group_matcher(model, coarse)
        owners = []
        for shared in shared_stacks_of(model):
            at = re.escape(shared.prefix)
            owners += [(rf"^{at}sets\.{g}\.", f"{shared.blocks_path}.{max(members)}.")
                       for g, members in enumerate(shared.plan.groups)]
            owners += [(rf"^{at}(?:coeffs|relax_params)\.{i}\.", f"{shared.blocks_path}.{i}.")
                       for i in range(shared.plan.depth)]
        specs = {name: [(spec, None)] if isinstance(spec, str) else list(spec)
                 for name, spec in matcher.items() if spec is not None}
        extra: dict = {name: [] for name in specs}
        for pattern, probe in owners:
            hit = next(((name, m, suffix) for name, group in specs.items() for regex, suffix in group
                        if (m := re.match(regex, probe))), None)
            if hit is not None:  # the layer's own ordinal: its regex groups, then the spec's suffix
                name, m, suffix = hit
                extra[name].append((pattern, m.groups() + tuple(suffix or ())))
        return {name: (extra[name] + specs[name] if extra.get(name) else spec) for name, spec in matcher.items()}


@contextlib.contextmanager
def cached(model: nn.Module):
    """Inside the block, no-grad forwards of a WFWS model reuse each group's fusion instead of
    recomputing it per forward (``torch.nn.utils.parametrize.cached``'s contract): the caller
    promises that no weight of ``model`` changes inside it. Grad-mode forwards ignore it. Leaving
    the block drops every memo, so nothing derived survives a change made after it."""
    holders = [m for m in model.modules() if "_scoped" in m.__dict__ and m.__dict__["_scoped"] is None]
    for m in holders:
        m._scoped = {}
    try:
        yield model
    finally:
        for m in holders:
            m._scoped = None


def refuse_wfws_prune(model: nn.Module) -> None:
    """For a model's ``prune_intermediate_layers``: a WFWS model cannot drop blocks (its fused sets
    read every member layer, and its state dict would no longer rebuild it)."""
    if any(shared.fusion is not None for shared in shared_stacks_of(model)):
        raise SharingError("prune_intermediate_layers would drop member layers of this WFWS model's fused sets "
                           "(its state dict could not rebuild it); prune spin.fuse(model), its WS export, instead")


def shared_stacks_of(model: nn.Module) -> list[SharedSets]:
    """The SharedSets of each block stack of a model transformed by :func:`share`, in the order of
    its ``blocks``; [] for a vanilla model."""
    shared = getattr(model, "shared", None)
    if isinstance(shared, SharedSets):
        return [shared]
    return list(shared) if isinstance(shared, SharedStacks) else []


def shared_sets_of(model: nn.Module) -> Optional[SharedSets]:
    """The SharedSets of a model transformed by :func:`share` on one block stack, else None. A
    model shared on several stacks has no one answer: that is an error (not None, which would
    read as vanilla), pointing to :func:`shared_stacks_of`."""
    stacks = shared_stacks_of(model)
    if len(stacks) > 1:
        paths = ", ".join(s.blocks_path for s in stacks)
        raise SharingError(f"this model shares {len(stacks)} block stacks ({paths}), each with its own sets; use "
                           f"spin.share_transform.shared_stacks_of(model) for them all")
    return stacks[0] if stacks else None


SharedBlocks, bank_of = SharedSets, shared_sets_of  # their former names


def _stack_plans(paths: list[str], depths: list[int], plan, scope, **plan_kwargs) -> list[SharingPlan]:
    """One plan per stack: ``plan`` (a plan, or a list of them, one per stack) or the plan keywords
    applied to each stack; each checked against its stack's depth."""
    if plan is None:
        plans = []
        for path, depth in zip(paths, depths):
            try:
                plans.append(build_plan(depth, scope=scope, **plan_kwargs))
            except SharingError as e:  # say which stack, when there are several
                raise (SharingError(f"stack {path} ({depth} blocks): {e}") if len(paths) > 1 else e) from None
        return plans
    if isinstance(plan, SharingPlan) and len(paths) > 1:
        raise SharingError(f"plan= is one SharingPlan, but blocks names {len(paths)} stacks ({', '.join(paths)}); give "
                           f"a list of {len(paths)} plans (one per stack, in that order), or the plan keywords")
    plans = [plan] if isinstance(plan, SharingPlan) else list(plan)
    if len(plans) != len(paths):
        raise SharingError(f"plan= has {len(plans)} plans, but blocks names {len(paths)} stacks ({', '.join(paths)}); "
                           f"give one SharingPlan per stack, in that order")
    for path, depth, p in zip(paths, depths, plans):
        if p.depth != depth:
            raise SharingError(f"the plan {'' if len(paths) == 1 else 'for ' + path + ' '}is for depth {p.depth} but "
                               f"{path} has {depth} blocks")
    return [SharingPlan(p.layer_to_set, parse_scope(scope)) if scope is not None else p for p in plans]


def stack_plans(model: nn.Module, blocks: Union[str, Sequence[str]] = "blocks", plan=None, scope=None,
                **plan_kwargs) -> list[SharingPlan]:
    """The plan of each stack ``blocks`` names, as :func:`share` resolves them from ``plan`` or
    the plan keywords (none given: every stack unshared)."""
    refuse_beside_plan(plan, scope=scope, **plan_kwargs)
    paths, _ = _stack_paths(model, blocks)
    return _stack_plans(paths, [len(_find_stack(model, path)) for path in paths], plan, scope, **plan_kwargs)


def share(
    model: nn.Module,
    share_rate: int = 1,
    *,
    num_sets: int = 0,
    distribution: Union[str, Sequence[int]] = "uniform",
    mapping: Union[str, Sequence[int]] = "sequential",
    seed: int = 0,
    scope: Union[str, Sequence[str], None] = None,
    fusion: Optional[str] = None,
    relax: Optional[str] = None,
    relax_rank: int = 0,
    fit_relax: bool = True,
    plan: Union[SharingPlan, Sequence[SharingPlan], None] = None,
    blocks: Union[str, Sequence[str]] = "blocks",
    family: Optional[str] = None,
    inplace: bool = False,
) -> nn.Module:
    """Share the parameters in ``scope`` across the layers of ``model``'s block stack, or of each
    of its stacks (``blocks`` a list of paths or a glob such as ``"layers.*.blocks"``: each stack
    is shared within itself).

    The plan comes from the keywords (as :func:`spin.build_plan`, for each stack) or from
    ``plan=`` (per stack: a list of plans, one per stack). ``scope``
    defaults to the family's (DeiT ``attn+mlp``, ConvNeXt ``dwconv+pwconv``, ConvMixer
    ``pointwise``, MLP-Mixer ``token+channel``, Swin ``attn+rpb+mlp``; every block parameter for
    other models). ``relax``
    (lora with ``relax_rank``, or scale) adds per-layer deltas, fitted to the model's own weights
    (``fit_relax=False``: at their from-scratch init, B = 0 / scale 1, so the model is plain WS).
    Returns a transformed copy (the input is untouched unless ``inplace``); see the module docstring.
    """
    if not isinstance(model, nn.Module):
        raise SharingError(f"spin.share takes a torch.nn.Module, got a {type(model).__name__}")
    for name, value in (("inplace", inplace), ("fit_relax", fit_relax)):
        if not isinstance(value, bool):
            raise SharingError(f"{name} must be True or False, got {value!r}")
    if not isinstance(relax_rank, numbers.Integral) or isinstance(relax_rank, bool):
        raise SharingError(f"relax_rank must be an integer, got {relax_rank!r}")
    refuse_beside_plan(plan, share_rate=share_rate, num_sets=num_sets, distribution=distribution, mapping=mapping,
                       seed=seed, scope=scope)
    fusion, relax = parse_fusion(fusion), parse_relax(relax, relax_rank)
    if relax_rank and relax != "lora":
        raise SharingError(f"relax_rank {relax_rank} is read only by relax='lora'; add it, or drop relax_rank")
    if plan is None and fusion is None and share_rate is not True and share_rate == 1 and not num_sets \
            and isinstance(mapping, str) and isinstance(distribution, str):
        raise SharingError("nothing to share: give share_rate >= 2, num_sets, an explicit mapping or "
                           "distribution, or plan= (or fusion= for a WFWS model)")
    paths, per_stack = _stack_paths(model, blocks)
    if shared_stacks_of(model):
        raise SharingError("this model is already shared; share a vanilla model (spin.fuse(model) "
                           "exports a WFWS model as WS; one call shares every stack blocks= names)")
    if hasattr(model, "shared"):
        raise SharingError(f"{type(model).__name__} already has an attribute 'shared'; spin.share "
                           f"stores the sets there")
    own_family, parts = _family_entry(model)
    if family is not None and family != own_family:
        parts = None  # a family named by the caller: its vocabulary, not the class's
    family = family or own_family
    stacks = [_find_stack(model, path) for path in paths]
    kinds = {type(stack[0]).__name__: path for path, stack in zip(paths, stacks)}
    if len(kinds) > 1:  # one scope is resolved for all: it must name the same parts everywhere
        raise SharingError(f"blocks={blocks!r} names stacks of different block types "
                           f"({', '.join(f'{p}: {k}' for k, p in kinds.items())}); one call shares stacks of one "
                           f"block type: narrow blocks= to those")
    plans = _stack_plans(paths, [len(stack) for stack in stacks], plan, scope, share_rate=share_rate,
                         num_sets=num_sets, distribution=distribution, mapping=mapping, seed=seed)
    names = [_in_scope(stack, p.scope, family, path, parts) for stack, p, path in zip(stacks, plans, paths)]
    if not inplace:
        model = copy.deepcopy(model)
        stacks = [model.get_submodule(path) for path in paths]
    installed, fits = [], []
    for stack, p, path, n in zip(stacks, plans, paths, names):
        sets = originals = None
        with torch.no_grad():
            if relax and fit_relax:  # the model's own per-layer weights, which the deltas are fitted to
                originals = [{k: stack[i].get_parameter(k).detach().clone() for k in n} for i in range(p.depth)]
            if fusion is None:
                sets = [{k: stack[members[0]].get_parameter(k).detach().clone() for k in n} for members in p.groups]
        installed.append(_install(stack, p, fusion, n, path, family, sets, relax, relax_rank))
        fits.append(originals)
    _attach(model, installed, per_stack)
    for shared, originals in zip(installed, fits):
        if originals is not None:
            shared.fit_deltas(lambda i, n, o=originals: o[i][n])
    return model


def fuse(model: nn.Module) -> nn.Module:
    """The WS export of a WFWS model: N sets holding the fused tensors (per stack), no
    coefficients, the per-layer copies gone; its eval logits equal the WFWS model's. Returns a
    new model."""
    stacks = shared_stacks_of(model)
    if not stacks or stacks[0].fusion is None:
        raise SharingError("fuse() needs a WFWS model (shared with a fusion); this model has none")
    with torch.no_grad():
        fused = [[{n: shared.set_tensor(g, n).detach().clone() for n in shared.names}
                  for g in range(shared.plan.num_sets)] for shared in stacks]
    out = copy.deepcopy(model)
    old, per_stack = _uninstall(out)
    new = [_install(out.get_submodule(o.blocks_path), o.plan, None, list(o.names), o.blocks_path, o.family, sets,
                    o.relax, o.relax_rank) for o, sets in zip(old, fused)]
    _attach(out, new, per_stack)
    for o, n in zip(old, new):
        if o.relax:  # the deltas are part of the export
            n.relax_params.load_state_dict(o.relax_params.state_dict())
    return out


def fit_relax_deltas(model: nn.Module) -> bool:
    """Fit a relaxed WFWS model's deltas to its stored per-layer weights (after loading a vanilla
    checkpoint into it): the relaxed model then starts as close to that checkpoint as the rank
    allows. Returns False when there is nothing to fit (no relax, or WS: no per-layer weights)."""
    fitted = False
    for shared in shared_stacks_of(model):
        if shared.relax and shared.fusion is not None:
            shared.fit_deltas(shared.stored)
            fitted = True
    return fitted


init_relax = fit_relax_deltas  # its former name


def unique_parameters(model: nn.Module) -> int:
    """Parameters of the model as exported (WFWS: after :func:`fuse`); any model."""
    return sum(p.numel() for p in model.parameters()) - sum(s.export_drops() for s in shared_stacks_of(model))


def layer_weights(model: nn.Module, scope=None) -> list[dict[str, torch.Tensor]]:
    """Per layer, the in-scope weights that layer has of its own: the stored copies of a vanilla
    or WFWS model (what a fusion combines), the set (with its delta) each layer reads in a WS
    model. ``scope`` (a vanilla model only; default: the family's) names what is in scope. One
    stack only: layers of stacks of different widths do not compare."""
    stacks = shared_stacks_of(model)
    if len(stacks) > 1:
        raise SharingError(f"layer_weights compares the layers of one block stack, and this model shares "
                           f"{len(stacks)} ({', '.join(s.blocks_path for s in stacks)}); compare one stage of it, "
                           f"e.g. a model shared with blocks={stacks[0].blocks_path!r}")
    if stacks:
        shared = stacks[0]
        read = shared.stored if shared.fusion else shared.layer_tensor
        return [{n: read(i, n) for n in shared.names} for i in range(shared.plan.depth)]
    stack = _find_stack(model, "blocks")
    family, parts = _family_entry(model)
    names = _in_scope(stack, parse_scope(scope), family, "blocks", parts)
    return [{n: block.get_parameter(n) for n in names} for block in stack]


def sharing_of(model: nn.Module):
    """(plan, fusion) of a model shared by :func:`share`, else (None, None); for a model shared
    on several stacks, (:class:`~spin.sharing.StagePlans`: one plan per stack, fusion)."""
    stacks = shared_stacks_of(model)
    if not stacks:
        return None, None
    plans = stacks[0].plan if len(stacks) == 1 else StagePlans([s.plan for s in stacks])
    return plans, stacks[0].fusion
