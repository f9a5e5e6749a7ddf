"""Layer similarity of a trained model, and the sharing plans it suggests (``spin analyze``).

* CKA: linear CKA between the outputs of every pair of blocks on N validation images, with the
  unbiased minibatch estimator of Nguyen et al. (2021): per batch of n >= 4 images the unbiased
  HSIC_1 of every pair of (zero-diagonal) Gram matrices is accumulated, and
  CKA(i, j) = sum HSIC(K_i, K_j) / sqrt(sum HSIC(K_i, K_i) * sum HSIC(K_j, K_j)), so N can exceed
  what fits in memory at once.
* weights: the cosine similarity of every pair of layers' in-scope weights (each layer's own:
  stored copies of a vanilla or WFWS model).
* ``suggest(S, N)``: plans with N sets that keep similar layers together. The objective is the mean
  similarity over within-group pairs, a ratio, maximised exactly over contiguous segmentations by
  Dinkelbach's method (each step a dynamic programme over segmentations of sum(S_ij - lambda));
  over unconstrained groupings by brute force when there are few partitions and by local search
  (moves and swaps of single layers from several starts) otherwise.
* ``fusion_error``: sum_l ||W_l - W_fused(l)||^2 / sum_l ||W_l||^2 of mean fusion under a plan.
"""
from __future__ import annotations

import itertools
import json
import os
from typing import Optional, Sequence

import numpy as np
import torch

from ..data import DataError
from ..engine.curves import save_png
from ..engine.runfolder import atomic_write
from ..sharing import SharingError, build_plan
from ..share_transform import layer_weights, shared_sets_of, sharing_of


# ------------------------------------------------------------------------------ CKA
def _hsic_matrix(grams: torch.Tensor) -> torch.Tensor:
    """(D, n, n) Gram matrices -> (D, D) unbiased HSIC_1 of every pair (Song et al. 2012)."""
    d, n, _ = grams.shape
    k = grams.clone()
    k.diagonal(dim1=1, dim2=2).zero_()
    trace = torch.einsum("ibc,jbc->ij", k, k)  # tr(K_i K_j) for symmetric K
    total = k.sum((1, 2))
    rows = k.sum(2)  # (D, n): K 1
    return (trace + torch.outer(total, total) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows @ rows.T) / (n * (n - 3))


class MinibatchCKA:
    """Accumulates linear CKA between D feature sets over batches."""

    def __init__(self):
        self.hsic: Optional[torch.Tensor] = None
        self.images = 0

    def update(self, features: Sequence[torch.Tensor]) -> None:
        n = features[0].shape[0]
        if n < 4:  # the unbiased estimator needs 4 samples
            return
        x = [f.reshape(n, -1).double() for f in features]
        grams = torch.stack([f @ f.T for f in x])
        h = _hsic_matrix(grams)
        self.hsic = h if self.hsic is None else self.hsic + h
        self.images += n

    def result(self) -> np.ndarray:
        d = self.hsic.diagonal().clamp_min(1e-30)
        return (self.hsic / torch.sqrt(torch.outer(d, d))).numpy()


def cka(model: torch.nn.Module, loader, images: int, device: torch.device) -> tuple[np.ndarray, int]:
    """Linear CKA of the block outputs on up to ``images`` images of ``loader``."""
    bank = shared_sets_of(model)
    stack = model.get_submodule(bank.blocks_path if bank else "blocks")
    outputs: list = [None] * len(stack)
    hooks = [b.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out.detach()))
             for i, b in enumerate(stack)]
    acc = MinibatchCKA()
    model.eval()
    try:
        with torch.no_grad():
            for batch, _, _ in loader:
                if batch is None:
                    continue
                batch = batch[: images - acc.images]
                if len(batch) < 4:
                    break
                model(batch.to(device))
                acc.update(outputs)
                if acc.images >= images:
                    break
    finally:
        for h in hooks:
            h.remove()
    if acc.hsic is None:
        raise DataError("CKA needs at least 4 validation images in one batch; raise --images or TEST.BATCH_SIZE")
    return acc.result(), acc.images


# ------------------------------------------------------------------------------ weights
def weight_vectors(model: torch.nn.Module) -> torch.Tensor:
    """(D, P): each layer's in-scope weights, flattened and concatenated."""
    per_layer = layer_weights(model)
    if not per_layer or not per_layer[0]:
        raise SharingError("the model's sharing scope holds no weights to compare (e.g. a ConvMixer sharing only "
                           "its BatchNorms); analyze a model whose scope includes weights")
    return torch.stack([torch.cat([t.detach().reshape(-1).float() for t in w.values()]) for w in per_layer])


def cosine(vectors: torch.Tensor) -> np.ndarray:
    v = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (v @ v.T).numpy().astype(np.float64)


def fusion_error(vectors: torch.Tensor, layer_to_set: Sequence[int]) -> float:
    """Relative error of mean fusion: sum_l ||W_l - mean_g(l)||^2 / sum_l ||W_l||^2."""
    v = vectors.double()
    m = torch.tensor(layer_to_set)
    err = 0.0
    for g in m.unique():
        members = v[m == g]
        err += float(((members - members.mean(0)) ** 2).sum())
    return err / float((v ** 2).sum().clamp_min(1e-30))


# ------------------------------------------------------------------------------ plans
def _pair_sums(s: np.ndarray) -> np.ndarray:
    """c[i][j] = sum of s over pairs a < b in layers i..j-1 (a 2-D prefix sum)."""
    d = len(s)
    p = np.zeros((d + 1, d + 1))
    p[1:, 1:] = np.cumsum(np.cumsum(np.triu(s, 1), 0), 1)
    c = np.zeros((d + 1, d + 1))
    for i in range(d + 1):
        for j in range(i, d + 1):
            c[i, j] = p[j, j] - p[i, j] - p[j, i] + p[i, i]
    return c


def _segment(score: np.ndarray, d: int, n: int) -> list[int]:
    """argmax over splits of 0..d-1 into n contiguous groups of sum score[start, end]."""
    best = np.full((n + 1, d + 1), -np.inf)
    back = np.zeros((n + 1, d + 1), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, n + 1):
        for j in range(k, d - (n - k) + 1):
            cands = [best[k - 1, i] + score[i, j] for i in range(k - 1, j)]
            i = int(np.argmax(cands))
            best[k, j], back[k, j] = cands[i], i + k - 1
    out, j = [0] * d, d
    for k in range(n, 0, -1):
        i = back[k, j]
        out[i:j] = [k - 1] * (j - i)
        j = i
    return out


def _ratio(s: np.ndarray, layer_to_set: Sequence[int]) -> float:
    m = np.asarray(layer_to_set)
    same = np.triu(m[:, None] == m[None, :], 1)
    pairs = same.sum()
    return float((s * same).sum() / pairs) if pairs else 0.0


def best_contiguous(s: np.ndarray, n: int) -> list[int]:
    """The contiguous grouping into n sets with the highest mean within-group similarity."""
    d = len(s)
    if not 1 <= n <= d:
        raise SharingError(f"--suggest needs 1 <= N <= the depth {d}, got {n}")
    sums = _pair_sums(s)
    idx = np.arange(d + 1)
    pairs = (idx[None, :] - idx[:, None]) * (idx[None, :] - idx[:, None] - 1) / 2.0
    lam, plan = 0.0, _segment(sums, d, n)
    for _ in range(50):  # Dinkelbach: maximise A - lam B, then lam <- A / B of the argmax
        plan = _segment(sums - lam * pairs, d, n)
        new = _ratio(s, plan)
        if abs(new - lam) < 1e-12:
            break
        lam = new
    return plan


def _canonical(m: Sequence[int]) -> list[int]:
    """Number the sets in order of first appearance."""
    seen: dict = {}
    return [seen.setdefault(g, len(seen)) for g in m]


def _partitions(d: int, n: int):
    """Every partition of 0..d-1 into exactly n non-empty sets, as canonical layer maps."""
    def rec(i, m, used):
        if d - i < n - used:
            return
        if i == d:
            if used == n:
                yield list(m)
            return
        for g in range(min(used + 1, n)):
            m.append(g)
            yield from rec(i + 1, m, max(used, g + 1))
            m.pop()
    yield from rec(0, [], 0)


def _stirling(d: int, n: int) -> int:
    s = [[1] + [0] * n] + [[0] * (n + 1) for _ in range(d)]
    for i in range(1, d + 1):
        for k in range(1, min(i, n) + 1):
            s[i][k] = k * s[i - 1][k] + s[i - 1][k - 1]
    return s[d][n]


def best_grouping(s: np.ndarray, n: int, exact_limit: int = 200_000, seed: int = 0) -> list[int]:
    """The grouping into n sets (any layers together) with the highest mean within-group
    similarity: exact when there are at most ``exact_limit`` partitions, else local search."""
    d = len(s)
    if not 1 <= n <= d:
        raise SharingError(f"--suggest needs 1 <= N <= the depth {d}, got {n}")
    if _stirling(d, n) <= exact_limit:
        return _canonical(max(_partitions(d, n), key=lambda m: _ratio(s, m)))
    rng = np.random.default_rng(seed)
    starts = [best_contiguous(s, n), list(build_plan(d, num_sets=n, distribution="front").layer_to_set)]
    starts += [list(rng.permutation(starts[0])) for _ in range(6)]
    best, best_score = None, -np.inf
    for m in starts:
        m, score = list(m), _ratio(s, m)
        improved = True
        while improved:
            improved = False
            for i, j in itertools.combinations(range(d), 2):  # swap two layers' sets
                if m[i] != m[j]:
                    m[i], m[j] = m[j], m[i]
                    new = _ratio(s, m)
                    if new > score + 1e-12:
                        score, improved = new, True
                    else:
                        m[i], m[j] = m[j], m[i]
            for i in range(d):  # move one layer to another set, keeping every set used
                for g in range(n):
                    if g != m[i] and m.count(m[i]) > 1:
                        old, m[i] = m[i], g
                        new = _ratio(s, m)
                        if new > score + 1e-12:
                            score, improved = new, True
                        else:
                            m[i] = old
        if score > best_score:
            best, best_score = m, score
    return _canonical(best)


def suggest(s: np.ndarray, vectors: torch.Tensor, n: int) -> list[dict]:
    """Candidate plans with n sets: the two suggested groupings and the named mappings."""
    d = len(s)
    out = [("contiguous (best)", best_contiguous(s, n)), ("any grouping (best)", best_grouping(s, n))]
    if d % n == 0:
        out += [(m, list(build_plan(d, num_sets=n, mapping=m).layer_to_set))
                for m in ("sequential", "strided", "pyramid")]
    return [{"name": name, "layer_map": m, "mean_within_similarity": _ratio(s, m),
             "fusion_error": fusion_error(vectors, m)} for name, m in out]


def yaml_snippet(layer_map: Sequence[int]) -> str:
    """The plan as the config keys to paste (SHARING_MAPPING custom + LAYER_MAP)."""
    return ("WEIGHT_SHARE:\n  ENABLE: True\n  SHARING_MAPPING: custom\n"
            f"  LAYER_MAP: [{', '.join(map(str, layer_map))}]\n"
            "  SHARE_RATE: 1  # the map fixes the sets (a rate beside it is refused)\n")


# ------------------------------------------------------------------------------ pictures
def heatmap(matrix: np.ndarray, title: str, path: str, layer_to_set: Optional[Sequence[int]] = None) -> None:
    """A layer x layer heatmap; cells of two layers in the same set are outlined."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    d = len(matrix)
    fig = Figure(figsize=(6, 5), dpi=110, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="magma", vmin=min(0.0, float(matrix.min())), vmax=1.0)
    fig.colorbar(im, ax=ax)
    if layer_to_set is not None and len(set(layer_to_set)) < d:
        for i, j in itertools.product(range(d), range(d)):
            if i != j and layer_to_set[i] == layer_to_set[j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="cyan", linewidth=1.2))
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(title)
    ticks = range(0, d, max(1, d // 16))
    ax.set_xticks(list(ticks))
    ax.set_yticks(list(ticks))
    save_png(fig, path)


def analyze(model: torch.nn.Module, loader, images: int, out: str, suggest_n: int = 0, by: str = "weights",
            device: torch.device = torch.device("cpu")) -> dict:
    """CKA and weight similarity of ``model``; heatmaps and analysis.json in ``out``."""
    plan, fusion = sharing_of(model)
    layer_map = list(plan.layer_to_set) if plan is not None and plan.is_shared else None
    vectors = weight_vectors(model)
    w_sim = cosine(vectors)
    c, seen = cka(model, loader, images, device)
    os.makedirs(out, exist_ok=True)
    heatmap(c, f"linear CKA of block outputs ({seen} images)", os.path.join(out, "cka.png"), layer_map)
    heatmap(w_sim, "cosine similarity of in-scope weights", os.path.join(out, "weights.png"), layer_map)
    result = {"images": seen, "layer_map": layer_map, "fusion": fusion, "cka": c.round(6).tolist(),
              "weight_cosine": w_sim.round(6).tolist()}
    if suggest_n:
        s = c if by == "cka" else w_sim
        result["suggestions"] = suggest(s, vectors, suggest_n)
        result["suggested_by"] = by
        for cand in result["suggestions"]:
            cand["yaml"] = yaml_snippet(cand["layer_map"])
    text = json.dumps(result, indent=1)
    atomic_write(os.path.join(out, "analysis.json"), lambda f: f.write(text.encode()))
    return result
