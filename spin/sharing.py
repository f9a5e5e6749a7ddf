"""The sharing plan: which layers share one set of weights, and which weights are shared.

A plan for a network of depth D has three parts (SPIN §3, design space):

* distribution: the sizes of the N groups (how many layers use each unique set), summing to D.
  ``uniform``  every group has r = D / N layers (upstream's only option);
  ``front``    sizes grow from the first group to the last: early layers keep (nearly) unique
               weights, late layers share;
  ``back``     the reverse of ``front``;
  ``middle``   smallest groups in the middle, largest at both ends;
  or an explicit list of group sizes.
* mapping: which layers form each group.
  ``sequential`` contiguous runs [0,0,1,1,...];
  ``strided``    round-robin over the sets that still have room [0,1,..,N-1,0,1,...];
  ``pyramid``    round-robin that reverses direction every pass (0..N-1, N-1..0, ...);
  ``random``     a seeded shuffle of the sequential map (reproducible from the seed alone);
  or an explicit layer -> set list.
* scope: which per-layer parameters are replaced by shared sets. Each model family names the
  parts of its block (ConvMixer ``pointwise`` (upstream), ``depthwise``, ``norm``; ViT/DeiT ``attn``,
  ``mlp``, ``norm``, ``ls``; isotropic ConvNeXt ``dwconv``, ``pwconv``, ``norm``, ``gamma``; MLP-Mixer
  ``token``, ``channel``, ``norm``), and glob patterns on block-relative parameter names
  (``attn.qkv``, ``mlp.*``) select anything else; parts are joined with ``+``. An empty scope
  means the family's default (the paper's choices: ConvMixer ``pointwise``, DeiT ``attn+mlp``,
  ConvNeXt ``dwconv+pwconv``).

Non-uniform distributions put every group at size 1 and hand out the remaining D - N layers in
proportion to a ramp (front: 0..N-1, back: N-1..0, middle: distance from the centre) with the
largest-remainder rule, so N is the same as for ``uniform`` and the result is deterministic.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from .errors import SpinError

DISTRIBUTIONS = ("uniform", "front", "back", "middle")
MAPPINGS = ("sequential", "strided", "pyramid", "random")

# Named scopes of each model family: name -> glob patterns on block-relative parameter names, and
# the scope a plan without one shares. Each family registers its own (spin.models.family).
SCOPES: dict[str, dict[str, tuple[str, ...]]] = {}
DEFAULT_SCOPES: dict[str, str] = {}
SCOPE_ALIASES = {"both": ("pointwise", "depthwise"), "bn": ("norm",), "all": ("*",)}
# Canonical order of named parts (registration order), so a scope prints the same however it was written.
SCOPE_NAMES: list[str] = []


def register_scopes(family: str, parts: dict, default: str) -> None:
    SCOPES[family] = {k: tuple(v) for k, v in parts.items()}
    DEFAULT_SCOPES[family] = default
    SCOPE_NAMES.extend(n for n in parts if n not in SCOPE_NAMES)


_PATTERN_CHARS = set(".*?[")

Distribution = Union[str, Sequence[int]]
Mapping = Union[str, Sequence[int]]


class SharingError(SpinError, ValueError):
    """An invalid sharing plan. The message names the bad value and what is allowed."""


@dataclass(frozen=True)
class SharingPlan:
    """A resolved plan. ``layer_to_set[i]`` is the set used by layer i; ``groups[g]`` lists the
    layers of set g in layer order; ``scope`` names the shared parts (empty: the family default)."""

    layer_to_set: tuple[int, ...]
    scope: tuple[str, ...] = ()
    groups: tuple[tuple[int, ...], ...] = field(init=False)

    def __post_init__(self):
        m = self.layer_to_set
        if not m:
            raise SharingError("a sharing plan needs depth >= 1, got an empty layer map")
        if not all(_is_int(g) for g in m):
            raise SharingError(f"layer map {list(m)} holds a non-integer set index; sets are the integers 0..N-1")
        object.__setattr__(self, "layer_to_set", tuple(int(g) for g in m))
        m = self.layer_to_set
        n = max(m) + 1
        if min(m) < 0:
            raise SharingError(f"layer map {list(m)} has a negative set index; sets are 0..N-1")
        unused = [g for g in range(n) if g not in m]
        if unused:
            raise SharingError(
                f"layer map {list(m)} leaves set(s) {unused} used by no layer; "
                f"number the sets 0..N-1 with every set used at least once")
        groups = tuple(tuple(i for i, g in enumerate(m) if g == s) for s in range(n))
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "scope", parse_scope(self.scope))

    @property
    def depth(self) -> int:
        return len(self.layer_to_set)

    @property
    def num_sets(self) -> int:
        return len(self.groups)

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return tuple(len(g) for g in self.groups)

    @property
    def is_shared(self) -> bool:
        return self.num_sets < self.depth

    def shares(self, part: str) -> bool:
        """True when per-layer weights of kind ``part`` are replaced by the N sets."""
        return self.is_shared and part in self.scope

    @classmethod
    def unshared(cls, depth: int) -> "SharingPlan":
        return cls(tuple(range(depth)))

class StagePlans(tuple):
    """The plans of a model shared per stage (one block stack per stage, each shared within
    itself), in model order. It is a tuple of :class:`SharingPlan` and also answers what a
    single plan answers about the model as a whole, so code written for one stack (a log line,
    ``spin stats``) reads it too: ``depth`` and ``num_sets`` are totals over the stages,
    ``layer_to_set`` and ``scope`` are per stage / common, ``is_shared`` is true when any stage is."""

    def __new__(cls, plans: Sequence[SharingPlan]):
        plans = tuple(plans)
        if not plans or not all(isinstance(p, SharingPlan) for p in plans):
            raise SharingError(f"per-stage plans are a non-empty list of spin.SharingPlan, got {plans!r}")
        return super().__new__(cls, plans)

    @property
    def depth(self) -> int:
        return sum(p.depth for p in self)

    @property
    def num_sets(self) -> int:
        return sum(p.num_sets for p in self)

    @property
    def layer_to_set(self) -> tuple[tuple[int, ...], ...]:
        return tuple(p.layer_to_set for p in self)

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return tuple(s for p in self for s in p.group_sizes)

    @property
    def scope(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for p in self for s in p.scope))

    @property
    def is_shared(self) -> bool:
        return any(p.is_shared for p in self)

    def shares(self, part: str) -> bool:
        return any(p.shares(part) for p in self)



def parse_scope(scope: Union[str, Sequence[str], None]) -> tuple[str, ...]:
    """'pointwise', 'both', 'norm+pointwise', 'attn+mlp.fc1', ['depthwise'] -> canonical tuple:
    named parts in SCOPE_NAMES order, then patterns as given. None or '' -> () (the default)."""
    if scope is None:
        return ()
    if not isinstance(scope, str) and not (isinstance(scope, (list, tuple)) and all(isinstance(p, str) for p in scope)):
        raise SharingError(f"a sharing scope is a string ('attn+mlp', 'mlp.*') or a list of them, got {scope!r}")
    parts = scope.replace(",", "+").split("+") if isinstance(scope, str) else list(scope)
    out: list[str] = []
    for p in (str(p).strip() for p in parts):
        key = p.lower()
        if not p:
            continue
        if key in SCOPE_ALIASES:
            out += SCOPE_ALIASES[key]
        elif key in SCOPE_NAMES:
            out.append(key)
        elif _PATTERN_CHARS & set(p):
            out.append(p)
        else:
            vocab = "; ".join(f"{fam}: {', '.join(names)}" for fam, names in SCOPES.items())
            raise SharingError(
                f"unknown sharing scope {p!r} in {scope!r}; named scopes ({vocab}) joined with "
                f"'+', or {', '.join(SCOPE_ALIASES)}, or glob patterns on block-relative parameter "
                f"names such as 'attn.qkv' or 'mlp.*'")
    names = [n for n in SCOPE_NAMES if n in out]
    return tuple(names + list(dict.fromkeys(p for p in out if p not in SCOPE_NAMES)))


def scope_patterns(scope: Sequence[str], family: Optional[str], parts: Optional[dict] = None) -> tuple[str, ...]:
    """A parsed scope -> glob patterns for ``family``: its named parts (``parts``, else
    ``SCOPES[family]``) expanded, its default when ``scope`` is empty (every block parameter for a
    model of no known family)."""
    vocab = parts or SCOPES.get(family or "", {})
    if not scope:
        scope = parse_scope(DEFAULT_SCOPES[family]) if family in DEFAULT_SCOPES else ("*",)
    out: list[str] = []
    for p in scope:
        if p not in SCOPE_NAMES:
            out.append(p)
        elif p in vocab:
            out += vocab[p]
        else:
            raise SharingError(
                f"sharing scope {p!r} is not a part of {family or 'this model'}'s blocks; "
                + (f"its parts are {', '.join(vocab)}" if vocab else "it has no named parts")
                + ", or give glob patterns on block-relative parameter names (e.g. 'mlp.*')")
    return tuple(dict.fromkeys(out))


def group_sizes(depth: int, num_sets: int, distribution: Distribution = "uniform") -> list[int]:
    """Sizes of the ``num_sets`` groups for a named or explicit distribution (sum = depth)."""
    if not isinstance(distribution, str):
        sizes = _integers(distribution, "explicit group sizes", "GROUP_SIZES")
        if sum(sizes) != depth or any(s < 1 for s in sizes):
            raise SharingError(
                f"explicit group sizes {sizes} must be >= 1 each and sum to the depth {depth} "
                f"(they sum to {sum(sizes)})")
        return sizes
    if not 1 <= num_sets <= depth:
        raise SharingError(f"number of sets must be in 1..{depth} (the depth), got {num_sets}")
    name = distribution.lower()
    if name == "uniform":
        if depth % num_sets:
            raise SharingError(
                f"uniform distribution needs the depth {depth} divisible by the number of sets "
                f"{num_sets} (share rate {depth / num_sets:g}); pick a rate that divides {depth}, "
                f"or a non-uniform distribution (front, back, middle) or explicit GROUP_SIZES")
        return [depth // num_sets] * num_sets
    n = num_sets
    if name == "front":
        ramp = [float(k) for k in range(n)]
    elif name == "back":
        ramp = [float(n - 1 - k) for k in range(n)]
    elif name == "middle":
        ramp = [abs(k - (n - 1) / 2) for k in range(n)]
    else:
        raise SharingError(
            f"unknown sharing distribution {distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}, "
            f"or an explicit list of group sizes (config: SHARING_DISTRIBUTION custom + GROUP_SIZES)")
    extra = depth - n
    total = sum(ramp)
    if extra == 0 or total == 0:  # nothing to hand out, or n == 1 (one group of all layers)
        return [1 + (extra if k == 0 else 0) for k in range(n)]
    shares = [extra * w / total for w in ramp]
    sizes = [1 + int(s) for s in shares]
    left = depth - sum(sizes)
    # Largest remainder; ties go to the heavier ramp position, then the later group.
    order = sorted(range(n), key=lambda k: (shares[k] - int(shares[k]), ramp[k], k), reverse=True)
    for k in order[:left]:
        sizes[k] += 1
    return sizes


def _splitmix64(seed: int):
    """A tiny PRNG defined here so a random map depends on the seed alone, not on the
    version of Python's or torch's generators (checkpoints must rebuild the same map)."""
    state = seed & 0xFFFFFFFFFFFFFFFF
    while True:
        state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        yield z ^ (z >> 31)


def layer_map(sizes: Sequence[int], mapping: str = "sequential", seed: int = 0) -> list[int]:
    """Layer -> set map that gives set g exactly sizes[g] layers."""
    depth, n = sum(sizes), len(sizes)
    name = mapping.lower()
    if name in ("sequential", "random"):
        out = [g for g in range(n) for _ in range(sizes[g])]
        if name == "random":
            rng = _splitmix64(seed)
            for i in range(depth - 1, 0, -1):  # Fisher-Yates
                j = next(rng) % (i + 1)
                out[i], out[j] = out[j], out[i]
        return out
    if name not in ("strided", "pyramid"):
        raise SharingError(
            f"unknown sharing mapping {mapping!r}; allowed: {', '.join(MAPPINGS)}, "
            f"or an explicit layer->set list (config: SHARING_MAPPING custom + LAYER_MAP)")
    room = list(sizes)
    out: list[int] = []
    forward = True
    while len(out) < depth:
        order = range(n) if forward else range(n - 1, -1, -1)
        for g in order:
            if room[g]:
                out.append(g)
                room[g] -= 1
        if name == "pyramid":
            forward = not forward
    return out


def build_plan(
    depth: int,
    share_rate: int = 1,
    num_sets: int = 0,
    distribution: Distribution = "uniform",
    mapping: Mapping = "sequential",
    seed: int = 0,
    scope: Union[str, Sequence[str], None] = None,
) -> SharingPlan:
    """Resolve a plan: N = ``num_sets`` if > 0, else depth / ``share_rate`` (which must divide the
    depth, for every distribution); both given must agree.

    An explicit ``mapping`` list fixes the groups by itself, an explicit ``distribution`` list N
    (its length): neither takes ``share_rate`` / ``num_sets`` beside it. List entries must be ints.
    """
    for name, value in (("depth", depth), ("share_rate", share_rate), ("num_sets", num_sets), ("seed", seed)):
        if not _is_int(value):
            raise SharingError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if depth < 1:
        raise SharingError(f"depth must be >= 1, got {depth}")
    explicit = [what for what, given in (("mapping", not isinstance(mapping, str)),
                                         ("distribution", not isinstance(distribution, str))) if given]
    # An explicit list fixes N by itself: a rate or a set count beside it would be ignored (or
    # silently disagree), so say which one counts instead of picking.
    rate_given = [f"{k} {v}" for k, v, default in (("share_rate (SHARE_RATE)", share_rate, 1),
                                                   ("num_sets (NUM_SETS)", num_sets, 0)) if v != default]
    if explicit and rate_given:
        raise SharingError(
            f"an explicit {' and '.join(explicit)} list fixes the sets by itself, but {' and '.join(rate_given)} "
            f"is also given; give only the list (drop SHARE_RATE / NUM_SETS, or the list)")
    if not isinstance(mapping, str):
        m = _integers(mapping, "explicit layer map", "LAYER_MAP")
        if len(m) != depth:
            raise SharingError(
                f"explicit layer map has {len(m)} entries but the depth is {depth}; "
                f"give one set index per layer")
        if isinstance(distribution, str) and distribution.lower() != "uniform":
            raise SharingError(
                f"an explicit layer map fixes the group sizes by itself, but distribution "
                f"(SHARING_DISTRIBUTION) {distribution!r} is also given; drop the distribution")
        plan = SharingPlan(tuple(m), parse_scope(scope))
        if not isinstance(distribution, str) and list(distribution) != list(plan.group_sizes):
            raise SharingError(
                f"explicit group sizes {list(distribution)} disagree with the explicit layer map "
                f"{m} (its sizes are {list(plan.group_sizes)}); give only one of them")
        return plan
    if isinstance(distribution, str):
        if num_sets > 0 and share_rate != 1 and num_sets * share_rate != depth:
            raise SharingError(
                f"num_sets (NUM_SETS) {num_sets} and share_rate (SHARE_RATE) {share_rate} disagree for the "
                f"depth {depth} ({depth} / {share_rate} is not {num_sets} sets); give only one of them")
        if num_sets <= 0:
            if share_rate < 1:
                raise SharingError(f"share rate must be >= 1, got {share_rate}")
            if share_rate > depth:
                raise SharingError(f"share rate {share_rate} exceeds the depth {depth}")
            # Every distribution refuses a rate that does not divide the depth: N = depth // rate
            # would quietly give another rate. NUM_SETS states N exactly for the others.
            if depth % share_rate:
                name = distribution.lower()
                hint = (f"or a non-uniform distribution (front, back, middle) with num_sets (NUM_SETS) "
                        f"{depth // share_rate} or {-(-depth // share_rate)}, or explicit GROUP_SIZES"
                        if name == "uniform" else
                        f"or give num_sets (NUM_SETS) {depth // share_rate} (rate {depth / (depth // share_rate):.3g}) "
                        f"for the {name} plan with that many sets")
                raise SharingError(
                    f"{name} distribution needs the depth {depth} divisible by the share rate "
                    f"{share_rate}; pick a rate that divides {depth}, {hint}")
            num_sets = depth // share_rate
    sizes = group_sizes(depth, num_sets, distribution)
    return SharingPlan(tuple(layer_map(sizes, mapping, seed)), parse_scope(scope))


PLAN_DEFAULTS = {"share_rate": 1, "num_sets": 0, "distribution": "uniform", "mapping": "sequential", "seed": 0}


def refuse_beside_plan(plan, **plan_kwargs) -> None:
    """A ready ``plan=`` (a plan, or a list of them: one per block stack) is the whole plan: plan
    keywords given beside it (other than their defaults) would be ignored, so they are an error.
    ``scope`` may name the scope of a plan that has none, and may repeat the plan's own."""
    if plan is None:
        return
    plans = list(plan) if isinstance(plan, (list, tuple)) else [plan]
    if not plans or not all(isinstance(p, SharingPlan) for p in plans):
        what = next((p for p in plans if not isinstance(p, SharingPlan)), plan)
        raise SharingError(f"plan must be a spin.SharingPlan (spin.build_plan(...)) or a list of them, one per block "
                           f"stack, got {'an empty list' if not plans else 'a ' + type(what).__name__}")
    scope = plan_kwargs.pop("scope", None)
    def changed(v, default) -> bool:
        if isinstance(default, str):  # a named distribution / mapping, or an explicit list
            return not isinstance(v, str) or v.lower() != default
        return isinstance(v, (str, bool)) or v != default

    given = [k for k, v in plan_kwargs.items() if k in PLAN_DEFAULTS and v is not None and changed(v, PLAN_DEFAULTS[k])]
    if scope is not None and any(p.scope and parse_scope(scope) != p.scope for p in plans):
        given.append("scope")
    if given:
        raise SharingError(f"plan= is given together with {', '.join(given)}: a ready plan fixes the sets, the "
                           f"mapping and its scope; give either plan= or the plan keywords (spin.build_plan "
                           f"takes them)")


def _is_int(value) -> bool:
    """A Python or numpy integer; bools and floats (also 2.0) are not set indices or counts."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _integers(values, what: str, key: str) -> list[int]:
    """``values`` as a list of ints; a float (even 1.0), a bool or text is refused rather than
    truncated, so the plan is exactly the one written down."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise SharingError(f"{what} must be a list of integers, got {values!r}")
    values = list(values)
    bad = [v for v in values if not _is_int(v)]
    if bad:
        raise SharingError(f"{what} {values} holds {bad[0]!r}, not an integer; {key} takes whole numbers "
                           f"written without a decimal point (1, not 1.0)")
    return [int(v) for v in values]
