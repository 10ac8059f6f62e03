"""DSnoT against the official code (zyxxmu/DSnoT, ``lib/prune.py: prune_DSnoT``, ``lib/layerwrapper.py``).

Two kinds of checks:

* hand-computed tiny cases for the statistic the reference uses to order regrowth candidates,
  the *within-sequence* variance (``WrappedGPT.add_batch`` averages ``torch.var`` of each forward
  call, one calibration sequence per call), which differs from the variance over all tokens pooled
  whenever the sequences have different means;
* a tensor-for-tensor transcription of the reference loop (its index lists, its two pointer pairs,
  its ``return_reorder_indice``, its N:M block search with the ``inf`` metrics) run on data where
  none of its out-of-range quirks fire, compared mask for mask with :func:`dsnot_prune`.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.core.patterns import NM
from sparseforge.oneshot import LayerStats, dsnot_prune, magnitude_prune, wanda_prune, wanda_scores


# ----------------------------------------------------------------------------- the statistic
def two_sequence_stats() -> LayerStats:
    # two sequences of two tokens, four features:
    #   f0: (0, 2) and (2, 4): each sequence has variance 1; pooled (0, 2, 2, 4) has variance 2
    #   f1: (1, 3) and (1, 3): variance 1 both ways
    #   f2, f3: constant 1
    x = torch.tensor([[[0.0, 1.0, 1.0, 1.0], [2.0, 3.0, 1.0, 1.0]],
                      [[2.0, 1.0, 1.0, 1.0], [4.0, 3.0, 1.0, 1.0]]])
    return LayerStats.from_inputs(x)


def test_seq_var_is_the_mean_of_per_sequence_variances() -> None:
    s = two_sequence_stats()
    assert torch.equal(s.seq_var, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert torch.equal(s.var, torch.tensor([2.0, 1.0, 0.0, 0.0]))
    assert torch.equal(s.seq_sum, torch.tensor([4.0, 4.0, 2.0, 2.0]))  # sum over tokens / 2 sequences


def test_seq_var_accumulates_like_the_reference_wrapper() -> None:
    # WrappedGPT: var <- (var * n + var_call * n_call) / (n + n_call), one call per sequence
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randn(1, t, 3, generator=g) + torch.randn(3, generator=g) * 4 for t in (5, 2, 7)]
    s = LayerStats(3, track_gram=False)
    var, n = torch.zeros(3), 0
    for x in seqs:
        s.update(x)
        v = torch.var(x[0], dim=0, unbiased=False)
        var = v if n == 0 else (var * n + v * x.shape[1]) / (n + x.shape[1])
        n += x.shape[1]
    assert torch.allclose(s.seq_var, var, atol=1e-6)
    # a batch of equally long sequences is the same as feeding them one by one
    batch = torch.randn(4, 6, 3, generator=g) + torch.randn(4, 1, 3, generator=g) * 3
    one = LayerStats.from_inputs(batch, track_gram=False)
    many = LayerStats(3, track_gram=False)
    for i in range(4):
        many.update(batch[i:i + 1])
    assert torch.allclose(one.seq_var, many.seq_var, atol=1e-6)
    # a 2-D input is one group (the reference's unsqueeze(0)), a 1-D input adds nothing
    flat = batch.reshape(-1, 3)
    assert torch.allclose(LayerStats.from_inputs(flat).seq_var, flat.var(0, unbiased=False), atol=1e-5)
    assert torch.equal(LayerStats.from_inputs(torch.tensor([1.0, 2.0, 3.0])).seq_var, torch.zeros(3))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.floats(0.0, 5.0), st.integers(0, 2**16))
def test_seq_var_is_at_most_the_pooled_variance(n_seqs: int, length: int, spread: float, seed: int) -> None:
    # law of total variance: pooled = within + variance of the sequence means >= within
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_seqs, length, 4, generator=g) + spread * torch.randn(n_seqs, 1, 4, generator=g)
    s = LayerStats.from_inputs(x, track_gram=False)
    assert (s.seq_var >= 0).all()
    assert (s.seq_var <= s.var + 1e-4 * (1 + s.var)).all()
    same_means = x - x.mean(dim=1, keepdim=True)
    t = LayerStats.from_inputs(same_means, track_gram=False)
    assert torch.allclose(t.seq_var, t.var, atol=1e-4)


def test_dsnot_regrows_by_the_within_sequence_variance() -> None:
    # W = (1, 0.75, -1, 2): c = W * seq_sum = (4, 3, -2, 4); inputs 0 and 1 pruned, eps = 7 > 0.1.
    # Grow the pruned weight with the largest c / var: within-sequence var (1, 1) -> 4 vs 3 ->
    # input 0; the pooled var (2, 1) would give 2 vs 3 -> input 1. Prune: the kept weights by
    # Wanda score (|W| ||X||: 2, 4), negative c first -> input 2 (c = -2).
    s = two_sequence_stats()
    w = torch.tensor([[1.0, 0.75, -1.0, 2.0]])
    m0 = torch.tensor([[False, False, True, True]])
    mask, new_w = dsnot_prune(w, s, m0, 0.5, max_cycles=1)
    assert mask.tolist() == [[True, False, False, True]]
    assert new_w.tolist() == [[1.0, 0.0, 0.0, 2.0]]
    # without the variance term (pow_of_var=0) the larger c wins as well: input 0
    assert dsnot_prune(w, s, m0, 0.5, max_cycles=1, pow_of_var=0)[0].tolist() == [[True, False, False, True]]


def test_dsnot_nm_regrows_by_the_within_sequence_variance() -> None:
    # 2:4 on one group: same numbers, the partner is the kept weight of lowest initial score
    s = two_sequence_stats()
    w = torch.tensor([[1.0, 0.75, -1.0, 2.0]])
    m0 = torch.tensor([[False, False, True, True]])
    init = torch.tensor([[0.0, 0.0, 5.0, 1.0]])  # input 3 is the weaker kept one
    # eps after the swap = 7 + c3 - c0 = 7 + 4 - 4 = 7: same sign, accepted
    mask, _ = dsnot_prune(w, s, m0, "2:4", initial_scores=init, max_cycles=1)
    assert mask.tolist() == [[True, False, True, False]]


# ----------------------------------------------------------------------------- the reference loop
class QuirkHit(Exception):
    """The reference would index outside its candidate lists here; the data must avoid it."""


def reorder_like_reference(vals: torch.Tensor) -> torch.Tensor:
    """``return_reorder_indice``: negative positions ascending, then positive positions descending."""
    cols = vals.shape[1]
    pos_idx = torch.arange(cols, dtype=torch.float64).repeat(vals.shape[0], 1)
    neg_idx = pos_idx.clone()
    pos_idx[~(vals > 0)] = float("inf")
    neg_idx[~(vals < 0)] = float("inf")
    pos_sorted = torch.flip(torch.sort(pos_idx, dim=1)[0], dims=[1])
    neg_sorted = torch.sort(neg_idx, dim=1)[0]
    pos_sorted[pos_sorted == float("inf")] = 0
    neg_sorted[neg_sorted == float("inf")] = 0
    return (pos_sorted + neg_sorted).to(torch.int64)


def reference_dsnot(w, mu, var, wanda, initial, *, sparsity=None, prune_n=0, prune_m=0, max_cycle_time=50,
                    update_threshold=0.1, pow_of_var_regrowing=1.0, without_same_sign=True) -> torch.Tensor:
    """``prune_DSnoT`` for one layer, tensor for tensor; returns the *kept* mask (the reference's is pruned=True).

    ``prune_n`` is the number pruned per group of ``prune_m`` (the reference's convention).
    Raises :class:`QuirkHit` where a still-updating row would read a candidate that is not one.
    """
    rows, cols = w.shape
    c = w * mu[None, :]
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    initial = initial.clone()
    if prune_n:
        prune_idx = torch.zeros(rows, 0, dtype=torch.int64)
        res_idx = torch.zeros(rows, 0, dtype=torch.int64)
        for ii in range(0, cols, prune_m):
            order = torch.sort(initial[:, ii:ii + prune_m], dim=1, stable=True)[1] + ii
            prune_idx = torch.cat((prune_idx, order[:, :prune_n]), dim=1)
            res_idx = torch.cat((res_idx, order[:, prune_n:]), dim=1)
    else:
        order = torch.sort(initial, dim=-1, stable=True)[1]
        k = int(cols * sparsity)
        prune_idx, res_idx = order[:, :k], order[:, k:]
    pruned.scatter_(1, prune_idx, True)
    regrow = c.clone()
    regrow.scatter_(1, res_idx, 0)
    err = regrow.sum(dim=1, keepdim=True)
    sign0 = torch.sign(err)
    if pow_of_var_regrowing:
        regrow /= torch.pow(var.reshape(1, -1), pow_of_var_regrowing)
    grow_block = torch.sort(regrow, dim=1, stable=True)[1]
    gptr = torch.zeros(rows, 2, dtype=torch.long)
    gptr[:, 1] = cols - 1
    step = torch.ones(rows, 2, dtype=torch.long)
    step[:, 1] = -1
    update = torch.ones(rows, 1, dtype=torch.bool)
    initially_pruned = pruned.clone()

    def take(block, ptr, sel):
        at = torch.gather(ptr, 1, sel)
        if bool(((at < 0) | (at >= block.shape[1])).any()):
            raise QuirkHit("a pointer left its list (the reference's gather would fail)")
        ptr.scatter_(1, sel, at + step.gather(1, sel))
        return torch.gather(block, 1, at)

    def grow_candidate():
        idx = take(grow_block, gptr, (err > 0).long())
        if bool((update & ~initially_pruned.gather(1, idx)).any()):
            raise QuirkHit("the regrowth pointer reached a weight the initial mask kept")
        return idx

    def write(p_idx, g_idx):
        # rows that stopped still write: prune[p] = False, prune[g] = True; harmless only while
        # their pointers stay on weights the row never swapped
        before = pruned.clone()
        pruned.scatter_(1, p_idx, update)
        pruned.scatter_(1, g_idx, ~update)
        if bool(((pruned != before).any(dim=1, keepdim=True) & ~update).any()):
            raise QuirkHit("a row that stopped would still change its mask")

    if prune_n:
        initial.scatter_(1, prune_idx, float("inf"))
        max_plus_one = torch.max(initial, dim=1, keepdim=True)[0] + 1
        cycle = 1
        while not (bool((update == False).all()) or cycle > max_cycle_time):  # noqa: E712
            cycle += 1
            g_idx = grow_candidate()
            start = g_idx - g_idx % prune_m
            block = torch.arange(prune_m).repeat(rows, 1) + start
            best, p_idx = torch.topk(torch.gather(initial, 1, block), 1, dim=1, largest=False)
            if bool((update & torch.isinf(best)).any()):
                raise QuirkHit("no weight of the group is left to prune")
            p_idx += start
            pm, gm = c.gather(1, p_idx), c.gather(1, g_idx)
            after = err + pm - gm
            update = update & (sign0 == torch.sign(after)) & (err.abs() > update_threshold)
            initial.scatter_(1, p_idx, max_plus_one)
            write(p_idx, g_idx)
            err += torch.where(update, pm, torch.zeros_like(pm))
            err -= torch.where(update, gm, torch.zeros_like(gm))
        return ~pruned
    k = prune_idx.shape[1]
    wm = wanda.clone()
    wm.scatter_(1, prune_idx, float("inf"))
    kept_by_wanda = torch.sort(wm, dim=1, stable=True)[1][:, :cols - k]
    kept_c = torch.gather(c, 1, kept_by_wanda)
    if bool((update & (kept_c == 0).any(dim=1, keepdim=True)).any()):
        raise QuirkHit("a kept weight has c = 0 (return_reorder_indice maps it to position 0)")
    prune_block = torch.gather(kept_by_wanda, 1, reorder_like_reference(kept_c))
    pptr = torch.zeros(rows, 2, dtype=torch.long)
    pptr[:, 1] = cols - k - 1
    cycle = 0
    while not (bool((update == False).all()) or cycle >= max_cycle_time):  # noqa: E712
        cycle += 1
        g_idx = grow_candidate()
        if bool((update & (pptr[:, :1] > pptr[:, 1:])).any()):
            raise QuirkHit("the pruning pointers crossed")
        p_idx = take(prune_block, pptr, (err < 0).long())
        pm, gm = c.gather(1, p_idx), c.gather(1, g_idx)
        after = err + pm - gm
        update = update & (err.abs() > update_threshold)
        if not without_same_sign:
            update = update & (sign0 == torch.sign(after))
        write(p_idx, g_idx)
        err += torch.where(update, pm, torch.zeros_like(pm))
        err -= torch.where(update, gm, torch.zeros_like(gm))
    return ~pruned


def sequences_with_shifted_means(rows: int, cols: int, seed: int, n_seqs: int = 16, length: int = 32):
    """Inputs whose sequences have different means, so pooled and within-sequence variances differ."""
    g = torch.Generator().manual_seed(seed)
    base = 0.5 * torch.randn(cols, generator=g)
    shift = torch.randn(n_seqs, 1, cols, generator=g) * (0.5 + torch.rand(cols, generator=g))
    x = (torch.randn(n_seqs, length, cols, generator=g) + base + shift) * (0.2 + torch.rand(cols, generator=g))
    return torch.randn(rows, cols, generator=g) * 0.3, LayerStats.from_inputs(x, track_gram=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.5, 0.75])
def test_dsnot_unstructured_equals_reference_loop(seed, target) -> None:
    w, stats = sequences_with_shifted_means(rows=12, cols=256, seed=seed)
    m0 = wanda_prune(w, stats, target)[0]
    wanda = wanda_scores(w, stats)
    ref = reference_dsnot(w, stats.seq_sum, stats.seq_var, wanda, wanda, sparsity=target)
    # the initial masks agree (cols * target is an integer), and DSnoT changed some rows
    assert torch.equal(reference_dsnot(w, stats.seq_sum, stats.seq_var, wanda, wanda, sparsity=target,
                                       max_cycle_time=0), m0)
    assert not torch.equal(ref, m0)
    assert torch.equal(dsnot_prune(w, stats, m0, target)[0], ref)
    # the same swaps from the pooled variance would be another mask: the statistic matters here
    assert not torch.equal(ref, reference_dsnot(w, stats.seq_sum, stats.var, wanda, wanda, sparsity=target))


@pytest.mark.parametrize("seed", [0, 1])
def test_dsnot_unstructured_options_equal_reference_loop(seed) -> None:
    w, stats = sequences_with_shifted_means(rows=8, cols=256, seed=10 + seed)
    m0, _ = magnitude_prune(w, 0.5, scope="row")
    wanda = wanda_scores(w, stats)
    for kw, ref_kw in [({"same_sign": True}, {"without_same_sign": False}),
                       ({"pow_of_var": 2.0}, {"pow_of_var_regrowing": 2.0}),
                       ({"pow_of_var": 0.0}, {"pow_of_var_regrowing": 0.0}),
                       ({"update_threshold": 0.5, "max_cycles": 7}, {"update_threshold": 0.5, "max_cycle_time": 7})]:
        ref = reference_dsnot(w, stats.seq_sum, stats.seq_var, wanda, w.abs(), sparsity=0.5, **ref_kw)
        assert torch.equal(dsnot_prune(w, stats, m0, 0.5, **kw)[0], ref), kw


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [NM(2, 4), NM(4, 8)])
def test_dsnot_nm_equals_reference_loop(seed, target) -> None:
    w, stats = sequences_with_shifted_means(rows=12, cols=256, seed=20 + seed)
    m0 = wanda_prune(w, stats, target)[0]
    wanda = wanda_scores(w, stats)
    kw = {"prune_n": target.m - target.n, "prune_m": target.m}
    ref = reference_dsnot(w, stats.seq_sum, stats.seq_var, wanda, wanda, **kw)
    assert torch.equal(reference_dsnot(w, stats.seq_sum, stats.seq_var, wanda, wanda, max_cycle_time=0, **kw), m0)
    assert not torch.equal(ref, m0)
    assert torch.equal(dsnot_prune(w, stats, m0, target, initial_scores=wanda)[0], ref)
