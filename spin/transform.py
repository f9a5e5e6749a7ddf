"""``spin.share``: parameter sharing as a model transform, for any isotropic network.

``share(model, share_rate=2, ...)`` takes a model whose trunk is a stack of D structurally identical
blocks (``model.blocks``, or ``blocks="path.to.stack"``) and returns it with block i reading set
p(i) of a :class:`~spin.sharing.SharingPlan` for every block parameter in scope. The model keeps
its class, forward and timm contract; blocks run their own forward code.

* WS (no fusion): the N sets live at ``shared.sets.{g}.<block-relative name>`` (e.g.
  ``shared.sets.0.attn.qkv.weight``); set g starts as a copy of its first member layer, and the
  per-layer copies leave the blocks. Out-of-scope parameters keep their keys.
* WFWS (``fusion``): the D per-layer parameters stay where they are (``blocks.{i}.<name>``, the
  vanilla keys, so any vanilla checkpoint loads) and are fused into set p(i) on every forward,
  grouped by the plan's mapping; weighted fusions learn ``shared.coeffs.{i}.<name>``, a (1,) or
  (C_out,) coefficient per layer and in-scope weight (tensors of 2+ dims; biases, norms and layer
  scales use the plain mean). :func:`fuse` exports the WS model with equal logits.

How a block reads its set: a forward pre-hook puts the tensor of its set on the block's submodule
as a plain attribute (``qkv.weight``), which Python finds before nn.Module's parameter lookup. WS
puts the shared Parameter itself there (it stays between forwards); WFWS puts the fused tensor
there for the block's forward only, so outside a forward ``blocks[i]...weight`` is the stored
per-layer parameter again. In grad mode each block fuses its own group: nothing is cached across
blocks, so gradient checkpointing, gradient accumulation and an exception mid-forward are all safe
(cost: a group of r layers is fused r times, a few element-wise passes over the in-scope weights
per step). Without grad (eval, inference) each group is fused once and cached until one of its
tensors changes, so WFWS inference costs what WS does.

Buffers (BatchNorm running statistics) stay per layer whatever the scope.
"""
from __future__ import annotations

import copy
import fnmatch
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from .fusion import coefficient_shape, fuse_group, parse_fusion
from .sharing import SharingError, SharingPlan, build_plan, parse_scope, scope_patterns

# Model class -> family (its scope vocabulary in spin.sharing.SCOPES); filled by spin.models.
_FAMILIES: dict[type, str] = {}
_KEY = "_spin_layer"  # a block's (bank, layer index, [(module, attribute, name)])


def register_family(model_cls: type, family: str) -> None:
    """Declare that ``model_cls`` (and its subclasses) has blocks of ``family`` (named scopes)."""
    _FAMILIES[model_cls] = family


def family_of(model: nn.Module) -> Optional[str]:
    for cls in type(model).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
    return None


def _param_tree(tensors: dict[str, torch.Tensor]) -> nn.Module:
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


class SharedBlocks(nn.Module):
    """The shared sets (WS) or fusion coefficients (WFWS) of a shared model, at ``model.shared``,
    and the rule for the tensor each block reads (:meth:`layer_tensor`)."""

    def __init__(self, stack: nn.Module, plan: SharingPlan, fusion: Optional[str],
                 names: Sequence[str], blocks_path: str, family: Optional[str],
                 sets: Optional[list[dict[str, torch.Tensor]]] = None):
        super().__init__()
        self.plan, self.fusion, self.names = plan, fusion, tuple(names)
        self.blocks_path, self.family = blocks_path, family
        # References, not submodules (the keys stay): the stack, and per layer / set / coefficient
        # holder the (module, attribute) of each name, read from _parameters on every use.
        object.__setattr__(self, "_stack", stack)
        object.__setattr__(self, "_stored", [_slots(b, names) for b in stack])
        self._cache: dict = {}  # no-grad fusions, keyed by the tensors' versions
        self._pass: Optional[dict] = None  # this stack call's fusions (grad mode)
        self._coeff_names: tuple = ()
        if fusion is None:
            self.sets = nn.ModuleList([_param_tree(s) for s in sets])
            object.__setattr__(self, "_sets", [_slots(h, names) for h in self.sets])
        else:
            first = dict(stack[0].named_parameters())
            shapes = {n: coefficient_shape(fusion, first[n].shape[0]) for n in names if first[n].dim() >= 2}
            if any(shapes.values()):
                self.coeffs = nn.ModuleList([_param_tree({n: torch.ones(s) for n, s in shapes.items()})
                                             for _ in range(plan.depth)])
                self._coeff_names = tuple(shapes)
                object.__setattr__(self, "_coeffs", [_slots(h, shapes) for h in self.coeffs])

    def extra_repr(self) -> str:
        return (f"depth={self.plan.depth}, sets={self.plan.num_sets}, map={list(self.plan.layer_to_set)}, "
                f"fusion={self.fusion}, scope={'+'.join(self.plan.scope) or 'default'}")

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
        if torch.is_grad_enabled():
            if self._pass is None:  # a block called on its own (checkpointing, intermediates)
                return fuse_group(weights, self.fusion, coeffs)
            if (g, name) not in self._pass:  # the first member this stack call: fuse once
                self._pass[(g, name)] = fuse_group(weights, self.fusion, coeffs)
            return self._pass[(g, name)]
        key = tuple((t._version, t.data_ptr()) for t in weights + (coeffs or []))
        hit = self._cache.get((g, name))
        if hit is None or hit[0] != key:
            hit = (key, fuse_group(weights, self.fusion, coeffs))
            self._cache[(g, name)] = hit
        return hit[1]

    def layer_tensor(self, i: int, name: str) -> torch.Tensor:
        return self.set_tensor(self.plan.layer_to_set[i], name)

    def inject_all(self) -> None:
        for block in self._stack:
            _inject(block, ())

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.fusion is None:  # .to()/.half() may replace the shared Parameters: re-point blocks
            self.inject_all()
        self._cache.clear()
        return out

    def export_drops(self) -> int:
        """Parameters that the WS export drops: WFWS's D - N extra copies and its coefficients."""
        if self.fusion is None:
            return 0
        per_layer = sum(self.stored(0, n).numel() for n in self.names)
        coeffs = sum(p.numel() for p in self.coeffs.parameters()) if hasattr(self, "coeffs") else 0
        return coeffs + (self.plan.depth - self.plan.num_sets) * per_layer


def _slots(root: nn.Module, names) -> dict:
    return {n: (root.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in names}


def _read(slot) -> torch.Tensor:
    return slot[0]._parameters[slot[1]]


def _open_pass(stack: nn.Module, args) -> None:
    stack.__dict__[_KEY]._pass = {}


def _close_pass(stack: nn.Module, args, output) -> None:
    stack.__dict__[_KEY]._pass = None


def _inject(block: nn.Module, args) -> None:
    bank, i, targets = block.__dict__[_KEY]
    for mod, attr, name in targets:
        object.__setattr__(mod, attr, bank.layer_tensor(i, name))


def _release(block: nn.Module, args, output) -> None:
    for mod, attr, _ in block.__dict__[_KEY][2]:
        mod.__dict__.pop(attr, None)


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def _find_stack(model: nn.Module, blocks: str) -> nn.Module:
    try:
        stack = model.get_submodule(blocks)
    except AttributeError:
        stack = None
    if not isinstance(stack, (nn.Sequential, nn.ModuleList)) or len(stack) == 0:
        found = [n for n, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList))
                 and len(m) > 1 and len({type(b) for b in m}) == 1]
        raise SharingError(
            f"no uniform block stack at {type(model).__name__}.{blocks}: sharing needs an "
            f"nn.Sequential or nn.ModuleList of identical blocks; pass blocks='path.to.stack'"
            + (f" (candidates: {', '.join(found[:5])})" if found else ""))
    kinds = {type(b).__name__ for b in stack}
    if len(kinds) > 1:
        raise SharingError(f"{blocks} holds blocks of different types ({', '.join(sorted(kinds))}); "
                           f"sharing needs structurally identical blocks")
    return stack


def _in_scope(stack: nn.Module, tokens: tuple[str, ...], family: Optional[str], blocks: str) -> list[str]:
    """Block-relative names of the parameters in scope, checked to exist with one shape per block."""
    params = dict(stack[0].named_parameters())
    names: list[str] = []
    for token in tokens or ("",):
        patterns = scope_patterns((token,) if token else (), family)
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


def _install(model: nn.Module, stack: nn.Module, plan: SharingPlan, fusion: Optional[str],
             names: list[str], blocks: str, family: Optional[str],
             sets: Optional[list[dict[str, torch.Tensor]]] = None) -> SharedBlocks:
    if fusion is None:  # the per-layer copies leave the blocks; the sets hold them once
        for block in stack:
            for n in names:
                mod_name, _, leaf = n.rpartition(".")
                delattr(block.get_submodule(mod_name) if mod_name else block, leaf)
    bank = SharedBlocks(stack, plan, fusion, names, blocks, family, sets)
    model.add_module("shared", bank)
    for i, block in enumerate(stack):
        targets = []
        for n in names:
            mod_name, _, leaf = n.rpartition(".")
            targets.append((block.get_submodule(mod_name) if mod_name else block, leaf, n))
        object.__setattr__(block, _KEY, (bank, i, targets))
        block.register_forward_pre_hook(_inject)
        if fusion is not None:
            block.register_forward_hook(_release)
    if fusion is None:
        bank.inject_all()
    else:  # a call of the whole stack fuses each group once (its members share the tensor)
        object.__setattr__(stack, _KEY, bank)
        stack.register_forward_pre_hook(_open_pass)
        stack.register_forward_hook(_close_pass)
    return bank


def _uninstall(model: nn.Module) -> SharedBlocks:
    bank = model.shared
    for module in [*bank._stack, bank._stack]:
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for k in [k for k, fn in hooks.items() if fn in (_inject, _release, _open_pass, _close_pass)]:
                del hooks[k]
        if module is not bank._stack:
            _release(module, (), None)
        module.__dict__.pop(_KEY, None)
    del model.shared
    return bank


def bank_of(model: nn.Module) -> Optional[SharedBlocks]:
    """The SharedBlocks of a model transformed by :func:`share`, else None."""
    bank = getattr(model, "shared", None)
    return bank if isinstance(bank, SharedBlocks) else None


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
    plan: Optional[SharingPlan] = None,
    blocks: str = "blocks",
    family: Optional[str] = None,
    inplace: bool = False,
) -> nn.Module:
    """Share the parameters in ``scope`` across the layers of ``model``'s block stack.

    The plan comes from the keywords (as :func:`spin.build_plan`) or from ``plan=``. ``scope``
    defaults to the family's (DeiT ``attn+mlp``, ConvNeXt ``dwconv+pwconv``, ConvMixer
    ``pointwise``, MLP-Mixer ``token+channel``; every block parameter for other models). Returns a
    transformed copy (the input is untouched unless ``inplace``); see the module docstring.
    """
    fusion = parse_fusion(fusion)
    if hasattr(type(model), "spin_share"):  # a model that implements sharing itself (ConvMixer)
        if plan is None:
            plan = build_plan(model.depth, share_rate, num_sets, distribution, mapping, seed, scope)
        elif scope is not None:
            plan = SharingPlan(plan.layer_to_set, parse_scope(scope))
        return model.spin_share(plan, fusion)
    if bank_of(model) is not None:
        raise SharingError("this model is already shared; share a vanilla model (spin.fuse(model) "
                           "exports a WFWS model as WS)")
    if hasattr(model, "shared"):
        raise SharingError(f"{type(model).__name__} already has an attribute 'shared'; spin.share "
                           f"stores the sets there")
    family = family or family_of(model)
    stack = _find_stack(model, blocks)
    depth = len(stack)
    if plan is None:
        plan = build_plan(depth, share_rate, num_sets, distribution, mapping, seed, scope)
    else:
        if plan.depth != depth:
            raise SharingError(f"the plan is for depth {plan.depth} but {blocks} has {depth} blocks")
        if scope is not None:
            plan = SharingPlan(plan.layer_to_set, parse_scope(scope))
    names = _in_scope(stack, plan.scope, family, blocks)
    if not inplace:
        model = copy.deepcopy(model)
        stack = model.get_submodule(blocks)
    sets = None
    if fusion is None:
        with torch.no_grad():
            sets = [{n: stack[members[0]].get_parameter(n).detach().clone() for n in names}
                    for members in plan.groups]
    _install(model, stack, plan, fusion, names, blocks, family, sets)
    return model


def fuse(model: nn.Module) -> nn.Module:
    """The WS export of a WFWS model: N sets holding the fused tensors, no coefficients, the
    per-layer copies gone; its eval logits equal the WFWS model's. Returns a new model."""
    if hasattr(type(model), "spin_share"):  # implements sharing (and its export) itself
        return model.fuse()
    bank = bank_of(model)
    if bank is None or bank.fusion is None:
        raise SharingError("fuse() needs a WFWS model (shared with a fusion); this model has none")
    with torch.no_grad():
        sets = [{n: bank.set_tensor(g, n).detach().clone() for n in bank.names}
                for g in range(bank.plan.num_sets)]
    out = copy.deepcopy(model)
    old = _uninstall(out)
    stack = out.get_submodule(old.blocks_path)
    _install(out, stack, old.plan, None, list(old.names), old.blocks_path, old.family, sets)
    return out


def unique_parameters(model: nn.Module) -> int:
    """Parameters of the model as exported (WFWS: after :func:`fuse`); any model."""
    if hasattr(type(model), "spin_share"):
        return model.unique_parameters()
    bank = bank_of(model)
    return sum(p.numel() for p in model.parameters()) - (bank.export_drops() if bank else 0)


def sharing_of(model: nn.Module):
    """(plan, fusion) of a shared model (spin.share or spin's ConvMixer), else (None, None)."""
    src = bank_of(model) or model
    return getattr(src, "plan", None), getattr(src, "fusion", None)
