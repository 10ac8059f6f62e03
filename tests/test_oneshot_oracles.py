"""The vectorised SparseGPT and DSnoT against slow, literal implementations of their specifications.

The oracles below are written from the algorithm descriptions (METHODS.md 8.3, 8.4), one column or
one row at a time with Python lists, so that the fast code (lazy block updates on W^T, per-row
two-pointer tensors) can be checked against the plain statement of each rule.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparseforge.core.patterns import NM, num_pruned
from sparseforge.oneshot import LayerStats, dsnot_prune, magnitude_prune, sparsegpt_prune, wanda_prune, wanda_scores


def data(rows: int, cols: int, seed: int, mean: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(64, 8, cols, generator=g) + mean * torch.randn(cols, generator=g)) * (torch.rand(cols, generator=g) + 0.2)
    return torch.randn(rows, cols, generator=g), LayerStats.from_inputs(x)


# ----------------------------------------------------------------------------- SparseGPT
def sparsegpt_oracle(w: torch.Tensor, h: torch.Tensor, target, blocksize: int = 128, percdamp: float = 0.01):
    """Column by column with the full (not lazy) update of every later column."""
    w = w.double().clone()
    h = h.double().clone()
    rows, cols = w.shape
    h = h + percdamp * torch.diagonal(h).mean() * torch.eye(cols, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    keep = torch.ones(rows, cols, dtype=torch.bool)
    nm = isinstance(target, NM)
    done = 0
    for i in range(cols):
        if not nm and i % blocksize == 0:
            j = min(i + blocksize, cols)
            tile = (w[:, i:j] ** 2 / torch.diagonal(u)[i:j] ** 2).float()
            k = num_pruned(target, done + tile.numel()) - num_pruned(target, done)
            done += tile.numel()
            flat = tile.reshape(-1).tolist()
            order = sorted(range(len(flat)), key=lambda t: (flat[t], t))[:k]  # lower index first among ties
            for t in order:
                keep[t // (j - i), i + t % (j - i)] = False
        if nm and i % target.m == 0:
            for r in range(rows):
                s = [(w[r, i + q].item() ** 2 / u[i + q, i + q].item() ** 2, q) for q in range(target.m)]
                for _, q in sorted(s)[: target.m - target.n]:
                    keep[r, i + q] = False
        q = w[:, i] * keep[:, i]
        err = (w[:, i] - q) / u[i, i]
        w[:, i:] -= err[:, None] * u[i, i:][None, :]
    return keep, (w * keep).float()


@pytest.mark.parametrize("target", [0.5, 0.3, 0.7, NM(2, 4), NM(1, 4), NM(4, 8)])
def test_sparsegpt_lazy_blocks_equal_plain_column_loop(target) -> None:
    w, stats = data(rows=6, cols=160, seed=3)  # two column blocks of 128 and 32
    fast_mask, fast_w = sparsegpt_prune(w, stats, target, blocksize=128)
    ref_mask, ref_w = sparsegpt_oracle(w, stats.hessian(), target, blocksize=128)
    assert torch.equal(fast_mask, ref_mask)
    assert torch.allclose(fast_w, ref_w, atol=2e-4, rtol=1e-4)


def test_sparsegpt_blocksize_does_not_matter_for_nm() -> None:
    w, stats = data(rows=6, cols=96, seed=4)
    a = sparsegpt_prune(w, stats, "2:4", blocksize=128)
    b = sparsegpt_prune(w, stats, "2:4", blocksize=8)
    c = sparsegpt_prune(w, stats, "2:4", blocksize=6)  # rounded down to a multiple of M=4
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
    assert torch.allclose(a[1], b[1], atol=1e-4) and torch.allclose(a[1], c[1], atol=1e-4)


# ----------------------------------------------------------------------------- DSnoT
def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def dsnot_oracle(w, stats, keep0, target, *, max_cycles=50, thr=0.1, p=1.0, same_sign=None, initial=None):
    """Row by row with Python lists, as the rule is stated."""
    nm = isinstance(target, NM)
    same_sign = nm if same_sign is None else same_sign
    mu, var = stats.seq_sum.tolist(), stats.seq_var.tolist()
    wanda = wanda_scores(w, stats)
    metric = (wanda if initial is None else initial).tolist()
    keep = keep0.clone()
    rows, cols = w.shape
    tiny = torch.finfo(torch.float32).tiny
    for r in range(rows):
        c = [float(w[r, j]) * mu[j] for j in range(cols)]
        kr = keep[r].tolist()
        eps = sum(c[j] for j in range(cols) if not kr[j])
        sign0 = _sign(eps)
        key = [c[j] / max(var[j], tiny) ** p for j in range(cols)]
        grow = sorted((j for j in range(cols) if not kr[j]), key=lambda j: (key[j], j))
        lo, hi = 0, len(grow) - 1
        if not nm:
            kept = sorted((j for j in range(cols) if kr[j]), key=lambda j: (float(wanda[r, j]), j))
            prune = [j for j in kept if c[j] < 0] + [j for j in kept if c[j] == 0] + [j for j in kept if c[j] > 0][::-1]
            plo, phi = 0, len(prune) - 1
        regrown = set()
        for _ in range(max_cycles):
            if lo > hi or abs(eps) <= thr:
                break
            g = grow[hi] if eps > 0 else grow[lo]
            if eps > 0:
                hi -= 1
            else:
                lo += 1
            if nm:
                start = g - g % target.m
                cands = [j for j in range(start, start + target.m) if kr[j] and j not in regrown]
                if not cands:
                    continue
                pj = min(cands, key=lambda j: (metric[r][j], j))
            else:
                if plo > phi:
                    break
                if eps < 0:
                    pj, phi = prune[phi], phi - 1
                else:
                    pj, plo = prune[plo], plo + 1
            after = eps + c[pj] - c[g]
            if same_sign and _sign(after) != sign0:
                break
            kr[pj], kr[g] = False, True
            regrown.add(g)
            eps = after
        keep[r] = torch.tensor(kr)
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.5, 0.7, NM(2, 4), NM(1, 4)])
def test_dsnot_equals_row_by_row_statement(seed, target) -> None:
    w, stats = data(rows=10, cols=96, seed=seed, mean=1.5)
    m0 = wanda_prune(w, stats, target)[0]
    fast = dsnot_prune(w, stats, m0, target)[0]
    assert not torch.equal(fast, m0)
    assert torch.equal(fast, dsnot_oracle(w, stats, m0, target))


@pytest.mark.parametrize("target", [0.5, NM(2, 4)])
def test_dsnot_options_equal_statement(target) -> None:
    w, stats = data(rows=8, cols=64, seed=5, mean=1.0)
    m0 = magnitude_prune(w, target)[0]
    init = w.abs()
    for kw in ({"same_sign": True}, {"same_sign": False}, {"p": 0.0}, {"p": 2.0}, {"thr": 5.0}, {"max_cycles": 3}):
        fast_kw = {"same_sign": kw.get("same_sign"), "pow_of_var": kw.get("p", 1.0), "update_threshold": kw.get("thr", 0.1),
                   "max_cycles": kw.get("max_cycles", 50)}
        fast = dsnot_prune(w, stats, m0, target, initial_scores=init, **fast_kw)[0]
        ref = dsnot_oracle(w, stats, m0, target, initial=init, **{k: v for k, v in kw.items()})
        assert torch.equal(fast, ref), kw


def test_dsnot_small_rows_exhaust_like_the_statement() -> None:
    w, stats = data(rows=5, cols=8, seed=6, mean=3.0)
    for target in (0.5, NM(2, 4), NM(1, 4), NM(3, 4)):
        m0 = wanda_prune(w, stats, target)[0]
        assert torch.equal(dsnot_prune(w, stats, m0, target, update_threshold=0.0)[0],
                           dsnot_oracle(w, stats, m0, target, thr=0.0)), target
        assert math.isfinite(float(stats.var.sum()))
