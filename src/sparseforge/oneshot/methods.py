"""One-shot pruning rules as pure functions ``(weight, stats, sparsity) -> (mask, new_weight)``.

Every function takes a *canonical* ``[out, in]`` weight (HF ``Conv1D`` already transposed by the
caller), the :class:`~sparseforge.oneshot.stats.LayerStats` of the layer's calibration inputs,
and a target that is either

a :class:`~sparseforge.core.targets.Target` (:func:`~sparseforge.core.targets.parse_target`; a
number or an N:M spec is parsed on entry), either

* a fraction ``s`` in [0, 1): unstructured, exactly ``round(s * n)`` zeros over the layer's ``n``
  weights (:func:`~sparseforge.core.patterns.num_pruned`; the row-wise rules spread the zeros
  over the rows as evenly as the count allows, so every row gets ``floor`` or ``ceil`` of
  ``s * in``); or
* an N:M pattern (``"2:4"`` or :class:`~sparseforge.core.patterns.NM`): keep **N** of every M
  consecutive inputs, NVIDIA's convention. The reference code bases (Wanda, SparseGPT, DSnoT)
  name patterns by the number *pruned* (``prune_n = M - N``); the conversion happens inside
  the functions below and nowhere else.

They return a bool mask (``True`` = kept) and the new weight (float32, exact zeros where the
mask is False); nothing is modified in place. Ties are broken as everywhere in sparseforge: among
equal scores the lower index is pruned first.

The method objects (:class:`Magnitude`, :class:`Wanda`, :class:`SparseGPT`, :class:`DSnoT`) wrap
the functions with their options for :func:`~sparseforge.oneshot.prune_oneshot`;
:func:`method_from_spec` builds them from a name (``"wanda"``, ``"dsnot+magnitude"``...) or a dict.
"""

from __future__ import annotations

import math
import re
import warnings
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..core.patterns import NM, Unstructured, is_valid_nm, num_pruned, topk_mask
from ..core.targets import Target, parse_target
from ..errors import ConfigError, LayerError, check_int, check_number
from .stats import LayerStats

__all__ = [
    "oneshot_target",
    "resolve_target",
    "magnitude_prune",
    "wanda_scores",
    "wanda_prune",
    "sparsegpt_prune",
    "sparsegpt_scores",
    "dsnot_prune",
    "OneShotMethod",
    "Magnitude",
    "Wanda",
    "SparseGPT",
    "DSnoT",
    "method_from_spec",
    "METHOD_NAMES",
    "MLP_LAYERS",
]

#: Block-relative layer names of feed-forward (MLP) linears in common architectures (TinyGPT
#: ``mlp.*``, GPT-2 ``mlp.c_fc``/``mlp.c_proj``, OPT ``fc1``/``fc2``, Llama/Mistral/Qwen2
#: ``mlp.gate_proj``/``up_proj``/``down_proj``, BERT ``intermediate.dense``/``output.dense``).
#: DSnoT leaves these at their initial mask by default, as its code does (``--skip_layer mlp``).
MLP_LAYERS = r"(.*\.)?(mlp|ffn|feed_forward|feedforward|intermediate)(\..*)?|(.*\.)?(fc1|fc2|c_fc)|output\.dense"


#: Tiles up to this many numbers are updated on one thread (see :func:`_few_threads`).
_SMALL_OP = 1 << 21


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def oneshot_target(sparsity: Any, name: str = "sparsity") -> Target:
    """The :class:`~sparseforge.core.targets.Target` of ``sparsity`` for a one-shot rule: a fraction or N:M.

    :func:`~sparseforge.core.targets.parse_target` with the one-shot restriction (no block or
    channel patterns); a Target is passed on as the same object.
    """
    t = parse_target(sparsity, name)
    if not isinstance(t.pattern, (Unstructured, NM)):
        raise ConfigError(f"{name}: one-shot methods prune unstructured or N:M; got the {t.pattern.name} target {t}")
    return t


def resolve_target(sparsity: Any, name: str = "sparsity") -> tuple[Unstructured | NM, float]:
    """``(pattern, sparsity)`` of :func:`oneshot_target` (kept for callers of the tuple form)."""
    t = oneshot_target(sparsity, name)
    return t.pattern, t.sparsity


def _canonical_2d(weight: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shown = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise LayerError(f"{name}: one-shot methods need a 2-D [out, in] weight; got {shown}")
    if weight.numel() == 0:
        raise LayerError(f"{name}: weight is empty (shape {tuple(weight.shape)})")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise LayerError(f"{name}: weight contains NaN or inf")
    return w


def _check_stats(stats: Any, weight: torch.Tensor, name: str, method: str) -> LayerStats:
    if not isinstance(stats, LayerStats):
        raise ConfigError(f"{method} needs the LayerStats of {name}'s calibration inputs; got {type(stats).__name__}")
    if stats.in_features != weight.shape[1]:
        raise LayerError(f"{name}: statistics have {stats.in_features} input features; weight shape {tuple(weight.shape)}")
    if stats.n_tokens == 0:
        raise LayerError(f"{name}: {method} needs calibration inputs; the layer received none")
    return stats


def _row_prune_counts(sparsity: float, rows: int, cols: int, name: str) -> torch.Tensor:
    """Zeros per row so that the layer total is exactly ``num_pruned(s, rows * cols)``.

    Row ``r`` prunes ``num_pruned(s, (r+1) cols) - num_pruned(s, r cols)``: ``floor`` or ``ceil`` of
    ``s * cols`` (all equal when ``s * cols`` is an integer, as in the reference code).
    """
    cum = torch.floor(sparsity * torch.arange(rows + 1, dtype=torch.float64) * cols + 0.5 + 1e-9).long()
    counts = cum[1:] - cum[:-1]
    if int(counts.max()) >= cols:
        raise LayerError(
            f"{name}: sparsity {sparsity} would remove every one of the {cols} weights of a row "
            f"(rows are compared separately); allowed: <= {(cols - 1) / cols:.6g}"
        )
    return counts


def _row_mask(scores: torch.Tensor, counts: torch.Tensor, name: str) -> torch.Tensor:
    """Prune the ``counts[r]`` lowest scores of each row ``r`` (stable: lower index first among ties)."""
    if torch.isnan(scores).any():
        raise LayerError(f"{name}: scores contain NaN")
    order = torch.sort(scores, dim=1, stable=True).indices
    keep_sorted = torch.arange(scores.shape[1], device=scores.device)[None, :] >= counts.to(scores.device)[:, None]
    return torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)


def _mask_from_scores(scores: torch.Tensor, pattern: Unstructured | NM, sparsity: float, name: str, *, per_row: bool) -> torch.Tensor:
    if isinstance(pattern, NM):
        return pattern.mask(scores, layer=name)
    if per_row:
        return _row_mask(scores, _row_prune_counts(sparsity, *scores.shape, name), name)
    return pattern.mask(scores, sparsity, layer=name)


@contextmanager
def _few_threads(numel: int, device: torch.device | None = None) -> Iterator[None]:
    """Run a loop of many small tensor ops on one intra-op thread (CPU only), restoring the count after.

    Each op of the SparseGPT column loop / DSnoT cycles touches at most ``rows x blocksize``
    numbers: an OpenMP team costs more than it saves there, and on a busy machine every parallel
    region waits for a descheduled worker (measured here: 4 ms instead of 5 us per rank-1 update
    with 2 threads on 2 loaded cores). Large tiles keep all threads.
    """
    n = torch.get_num_threads()
    if numel > _SMALL_OP or n == 1 or (device is not None and device.type != "cpu"):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _check_nm(pattern: Unstructured | NM, weight: torch.Tensor, name: str) -> None:
    if isinstance(pattern, NM):
        pattern.check(tuple(weight.shape), name)


# ---------------------------------------------------------------------------------------------
# magnitude
# ---------------------------------------------------------------------------------------------


def magnitude_prune(weight: torch.Tensor, sparsity: Any, *, scope: str = "layer", name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude pruning: zero the weights with the smallest ``|W_ij|``; no data, no update.

    The baseline of Wanda (Sun et al. 2023) and SparseGPT (Frantar & Alistarh 2023), which compare
    ``|W|`` over the whole weight matrix (``scope="layer"``, default); ``scope="row"`` compares
    within each output row (Wanda's comparison group, for ablations). N:M: in every group of M
    consecutive inputs of a row keep the N largest ``|W|``.

    Returns ``(mask, weight * mask)``.
    """
    if scope not in ("layer", "row"):
        raise ConfigError(f"magnitude scope must be 'layer' or 'row'; got {scope!r}")
    w = _canonical_2d(weight, name)
    pattern, s = resolve_target(sparsity)
    _check_nm(pattern, w, name)
    mask = _mask_from_scores(w.abs(), pattern, s, name, per_row=scope == "row")
    return mask, w * mask


# ---------------------------------------------------------------------------------------------
# Wanda
# ---------------------------------------------------------------------------------------------


def wanda_scores(weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    """Wanda's importance ``S_ij = |W_ij| * ||X_j||_2`` (Sun et al. 2023, eq. 1)."""
    return weight.detach().float().abs() * stats.col_norm.to(weight.device)[None, :]


def wanda_prune(weight: torch.Tensor, stats: LayerStats, sparsity: Any, *, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Wanda, "A Simple and Effective Pruning Approach for Large Language Models" (Sun et al., ICLR 2024).

    Score ``S_ij = |W_ij| * ||X_j||_2`` with ``||X_j||_2`` the norm of input feature ``j`` over all
    calibration tokens. The comparison group is each **output row**: row ``i`` loses its
    ``round(s * in)`` lowest scores (locuslab/wanda ``prune_wanda``: stable sort per row). N:M:
    per row, keep the N highest scores of every M consecutive inputs. No weight update.

    (The reference keeps ``||X_j||^2 / n_seq`` and takes its square root: same ranking.)
    Returns ``(mask, weight * mask)``.
    """
    w = _canonical_2d(weight, name)
    stats = _check_stats(stats, w, name, "Wanda")
    pattern, s = resolve_target(sparsity)
    _check_nm(pattern, w, name)
    mask = _mask_from_scores(wanda_scores(w, stats), pattern, s, name, per_row=True)
    return mask, w * mask


# ---------------------------------------------------------------------------------------------
# SparseGPT
# ---------------------------------------------------------------------------------------------


def _prepare_hessian(hessian: torch.Tensor, w: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    cols = w.shape[1]
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (cols, cols):
        shown = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
        raise LayerError(f"{name}: Hessian must be [{cols}, {cols}] for weight shape {tuple(w.shape)}; got {shown}")
    h = hessian.detach().float().clone().to(w.device)
    if not torch.isfinite(h).all():
        raise LayerError(f"{name}: the Hessian contains NaN or inf (the calibration inputs of this layer are not finite)")
    dead = torch.diagonal(h) == 0
    if bool(dead.all()):
        warnings.warn(
            f"{name}: every input is zero on the calibration data (Hessian is all zero); SparseGPT has no "
            f"information and the mask falls back to position order. Check the calibration data.",
            RuntimeWarning,
            stacklevel=3,
        )
    h[dead, dead] = 1.0
    return h, dead


def _inverse_cholesky_upper(h: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + lambda mean(diag H) I)^-1`` (``U^T U = H^-1``).

    Damping starts at ``percdamp`` and grows tenfold (at most six times) while the factorisation
    fails, with a warning naming the damping used; a Hessian that still fails raises.
    """
    mean_diag = float(torch.diagonal(h).mean())
    damp = percdamp
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(7):
        hd = h + (damp * mean_diag) * eye
        chol, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(chol)
            u, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0 and torch.isfinite(u).all():
                if attempt:
                    warnings.warn(
                        f"{name}: the damped Hessian was not positive definite at percdamp={percdamp}; "
                        f"used percdamp={damp:g} instead",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                return u
        damp = damp * 10 if damp > 0 else 1e-6
    raise LayerError(
        f"{name}: the Hessian is not positive definite even with damping {damp / 10:g} x mean(diag H) "
        f"(percdamp={percdamp}); the calibration inputs of this layer are degenerate"
    )


def _sparsegpt_blocks(wt: torch.Tensor, keep_t: torch.Tensor, u: torch.Tensor, pattern: Unstructured | NM,
                      s: float, blocksize: int, name: str, frozen_t: torch.Tensor | None = None) -> None:
    """The column loop of SparseGPT on ``W^T`` (``[in, out]``), in place; fills ``keep_t``.

    ``frozen_t`` (bool, like ``wt``) marks positions that must end pruned (``preserve_zeros``):
    they rank below every other weight, each block's quota covers its frozen positions plus
    its share (by unfrozen count) of the remaining prunes, and N:M groups never keep them.
    """
    cols = wt.shape[0]
    done = 0
    total_pruned = num_pruned(s, wt.numel())
    if frozen_t is not None:
        n_frozen = int(frozen_t.sum())
        extra, free_total, free_done = total_pruned - n_frozen, wt.numel() - n_frozen, 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = wt[i1:i2]  # a view: updated in place
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d = torch.diagonal(u1)
        f1 = None if frozen_t is None else frozen_t[i1:i2]
        if isinstance(pattern, Unstructured):
            # adaptive mask selection over the whole tile, with this block's share of the exact count
            score = w1.square() / d[:, None].square()
            if f1 is None:
                k = num_pruned(s, done + w1.numel()) - num_pruned(s, done)
                done += w1.numel()
            else:
                free = w1.numel() - int(f1.sum())
                share = (round(extra * (free_done + free) / free_total) - round(extra * free_done / free_total)
                         if free_total else 0)
                free_done += free
                k = w1.numel() - free + share
                score = score.masked_fill(f1, -math.inf)
            keep1 = topk_mask(score.t(), w1.numel() - k).t().contiguous()
        else:
            keep1 = torch.ones_like(w1, dtype=torch.bool)
        for i in range(count):
            if isinstance(pattern, NM) and i % pattern.m == 0:
                group = w1[i : i + pattern.m].square() / d[i : i + pattern.m, None].square()
                if f1 is not None:
                    group = group.masked_fill(f1[i : i + pattern.m], -math.inf)
                keep1[i : i + pattern.m] = pattern.mask(group.t(), layer=name).t()
                if f1 is not None:
                    keep1[i : i + pattern.m] &= ~f1[i : i + pattern.m]
            e = w1[i] * ~keep1[i] / u1[i, i]  # (w - q) / U_ii with q = w on kept entries, 0 on pruned
            w1[i:].addr_(u1[i, i:], e, alpha=-1.0)  # leaves w1[i] = q
            err1[i] = e
        keep_t[i1:i2] = keep1
        if i2 < cols:
            wt[i2:].addmm_(u[i1:i2, i2:].t(), err1, alpha=-1.0)


def sparsegpt_scores(weight: torch.Tensor, hessian: torch.Tensor, *, percdamp: float = 0.01, name: str = "weight") -> torch.Tensor:
    """SparseGPT's one-shot saliency ``W_ij^2 / [U]_jj^2`` with ``U = chol(H^-1)^T`` (no updates).

    What DSnoT uses as the "sparsegpt" initial metric; :func:`sparsegpt_prune` recomputes it on
    the updated weights block by block.
    """
    w = _canonical_2d(weight, name).clone()
    h, dead = _prepare_hessian(hessian, w, name)
    w[:, dead] = 0
    u = _inverse_cholesky_upper(h, percdamp, name)
    return w.square() / torch.diagonal(u)[None, :].square()


def sparsegpt_prune(
    weight: torch.Tensor,
    stats: LayerStats | torch.Tensor,
    sparsity: Any,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    preserve_zeros: bool = False,
    name: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT, "Massive Language Models Can Be Accurately Pruned in One-Shot" (Frantar & Alistarh, ICML 2023).

    Solves the layer-wise problem ``min ||W X - W' X||_F^2`` over masks of the target pattern
    with the OBS update, as in IST-DASLab/sparsegpt ``fasterprune``:

    * ``H = 2 X X^T / n`` (from ``stats``, or pass ``H`` itself as a tensor);
    * dead inputs (``H_jj = 0``): ``H_jj = 1`` and their weights score zero, so they are pruned
      first. *Deviation:* the reference zeroes every dead column; here a dead weight that the
      exact count keeps retains its value (its input is zero, so the calibration loss is the
      same) and the mask stays truthful about which weights are zero;
    * damping ``H += percdamp * mean(diag H) * I`` (``percdamp = 0.01``); if the Cholesky
      factorisation still fails the damping grows tenfold, with a warning;
    * ``U = chol(H^-1)^T`` (upper), the inverse Cholesky factor;
    * columns in blocks of ``blocksize = 128`` with lazy batch updates. Unstructured: at the
      start of each block, adaptive mask selection prunes the lowest ``w^2 / U_jj^2`` over the
      whole ``rows x block`` tile of the *already updated* weights (this block's share of the
      exact layer count). N:M: at every M-th column, per row, keep the N highest scores among
      the next M columns (the block is rounded down to a multiple of M). For each column ``i``:
      ``err = (w_i - q_i) / U_ii``; ``W[:, i:] -= err U[i, i:]``; after the block
      ``W[:, end:] -= Err U[block, end:]``.

    ``preserve_zeros`` (default False, as the reference) is for re-pruning an already sparse
    weight: the OBS update spreads each column's error over the later columns, so an existing
    zero that the new mask keeps comes back as a nonzero (SparseGPT "did not preserve the base
    model's mask", vllm-project/llm-compressor's ``preserve_sparsity_mask``). With it, every
    weight that is exactly zero on entry stays pruned: it ranks below all others, the exact
    count (unstructured) is reached by pruning that many more, and an N:M group with fewer
    than N nonzeros keeps fewer (the result then holds at most N of every M). The target
    sparsity must then be at least the weight's current one.

    Returns ``(mask, new_weight)`` with the reconstructed weights (exact zeros off the mask).
    """
    w = _canonical_2d(weight, name).clone()  # updated in place below; the caller's weight stays intact
    pattern, s = resolve_target(sparsity)
    _check_nm(pattern, w, name)
    blocksize = check_int(blocksize, "blocksize", minimum=1)
    percdamp = check_number(percdamp, "percdamp", minimum=0.0)
    if isinstance(stats, LayerStats):
        if stats.in_features != w.shape[1]:
            raise LayerError(f"{name}: statistics have {stats.in_features} input features; weight shape {tuple(w.shape)}")
        if stats.n_tokens == 0:
            raise LayerError(f"{name}: SparseGPT needs calibration inputs; the layer received none")
        hessian = stats.hessian()
    else:
        hessian = stats
    if not isinstance(preserve_zeros, bool):
        raise ConfigError(f"preserve_zeros must be True or False; got {preserve_zeros!r}")
    frozen = None
    if preserve_zeros:
        frozen = w == 0
        n_frozen = int(frozen.sum())
        if isinstance(pattern, Unstructured) and n_frozen > num_pruned(s, w.numel()):
            raise LayerError(f"{name}: preserve_zeros: the weight already has {n_frozen} zeros "
                             f"(sparsity {n_frozen / w.numel():.4f}), more than sparsity {s} prunes "
                             f"({num_pruned(s, w.numel())}); use a sparsity of at least {n_frozen / w.numel():.4f}")
        if not bool(frozen.any()):
            frozen = None
    rows, cols = w.shape
    with _few_threads(rows * blocksize, w.device):
        return _sparsegpt(w, hessian, pattern, s, blocksize, float(percdamp), name, frozen)


def _sparsegpt(w: torch.Tensor, hessian: torch.Tensor, pattern: Unstructured | NM, s: float, blocksize: int,
               percdamp: float, name: str, frozen: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = w.shape
    h, dead = _prepare_hessian(hessian, w, name)
    original = w.clone()
    w[:, dead] = 0
    if isinstance(pattern, Unstructured):
        total_pruned = num_pruned(s, w.numel())
        if total_pruned >= w.numel():
            Unstructured().mask(w, s, layer=name)  # raises the shared "would remove every weight" error
        if total_pruned == 0:
            return torch.ones_like(w, dtype=torch.bool), original
    elif pattern.n == pattern.m:
        return torch.ones_like(w, dtype=torch.bool), original
    u = _inverse_cholesky_upper(h, percdamp, name)
    if isinstance(pattern, NM):
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)
    # work on W^T so that a weight column is a contiguous row: the per-column update is one BLAS
    # rank-1 update (addr_) on contiguous memory instead of a strided slice and a temporary
    wt = w.t().contiguous()
    keep_t = torch.ones_like(wt, dtype=torch.bool)
    _sparsegpt_blocks(wt, keep_t, u, pattern, s, blocksize, name, None if frozen is None else frozen.t().contiguous())
    mask = keep_t.t().contiguous()
    w = wt.t().contiguous()
    if bool(dead.any()):
        w[:, dead] = torch.where(mask[:, dead], original[:, dead], torch.zeros_like(original[:, dead]))
    w = w * mask  # exact zeros (the OBS update already produced them; this removes -0.0 noise)
    if not torch.isfinite(w).all():
        raise LayerError(f"{name}: SparseGPT produced non-finite weights; the Hessian is too ill-conditioned "
                         f"(raise percdamp above {percdamp})")
    return mask, w


# ---------------------------------------------------------------------------------------------
# DSnoT
# ---------------------------------------------------------------------------------------------


def _two_pointer_order(key: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: indices of ``members`` sorted by ``key`` ascending (stable), non-members after; and their count."""
    k = torch.where(members, key.double(), torch.full_like(key, math.inf, dtype=torch.float64))
    return torch.sort(k, dim=1, stable=True).indices, members.sum(dim=1)


def dsnot_prune(
    weight: torch.Tensor,
    stats: LayerStats,
    mask: torch.Tensor,
    sparsity: Any,
    *,
    initial_scores: torch.Tensor | None = None,
    max_cycles: int = 50,
    update_threshold: float = 0.1,
    pow_of_var: float = 1.0,
    same_sign: bool | None = None,
    name: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor]:
    """DSnoT, "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs" (Zhang et al., ICLR 2024).

    Refines an initial ``mask`` row by row by swapping one pruned and one kept weight per cycle,
    without any weight update (zyxxmu/DSnoT ``prune_DSnoT``). With ``mu_j`` the per-sequence
    sum of input ``j`` (:attr:`LayerStats.seq_sum`) and ``c_ij = W_ij mu_j`` the expected
    contribution of a weight, row ``i``'s expected reconstruction error is
    ``eps_i = sum_{j pruned} c_ij``. Each cycle, in every row still active:

    * **grow** the pruned weight with the largest ``c_ij / var_j^p`` if ``eps_i > 0``, else the
      smallest (``p = pow_of_var = 1``; two pointers move inward through the pruned weights);
    * **prune**, unstructured: the kept weights ordered by Wanda score ascending, negatives
      (``c < 0``) first in that order and positives last in reverse order; take from the front
      (lowest-Wanda negative) if ``eps_i > 0``, else from the back (lowest-Wanda positive).
      N:M: the kept weight with the lowest initial score (``initial_scores``, default Wanda's)
      inside the grown weight's M-group, so every group keeps N; weights pruned by a swap get
      the highest score and regrown ones are never re-pruned, as in the reference;
    * swap only if ``|eps_i| > update_threshold`` (0.1, in the units of ``mu``) and, if
      ``same_sign`` (default: off for unstructured, on for N:M, the reference's defaults), the
      sign of ``eps_i`` after the swap equals its initial sign. A row that fails once stops;
      ``eps_i += c_pruned - c_grown``. At most ``max_cycles = 50`` cycles.

    Every swap keeps the row's count, so the sparsity of the initial mask is kept exactly.

    ``var_j`` is :attr:`LayerStats.seq_var`, the token-weighted mean of each calibration
    sequence's own variance, as the reference's ``WrappedGPT`` accumulates it (not the variance
    over all tokens pooled).

    Deviations from the reference, all in corner cases that wide layers do not reach within 50
    cycles (``tests/test_oneshot_dsnot.py`` transcribes the reference loop and checks equality
    where they are not reached): a zero variance is clamped to a tiny positive number; the
    regrowth list holds only pruned weights (the reference sorts every column, kept ones with
    key 0, so a pointer that runs past one sign's pruned weights "regrows" a kept weight and the
    row loses one more); a row that stops stays as it is (the reference keeps moving its pointers
    and writing, which re-prunes kept weights once a pointer reaches them); a row stops when it
    runs out of candidates instead of reading past them; kept weights with ``c = 0`` sit
    between the negatives and the positives (``return_reorder_indice`` maps them to position 0);
    and an N:M group with no kept candidate left skips the candidate without stopping the row
    (the reference swaps with an already pruned weight).

    Args:
        weight: canonical ``[out, in]`` dense weight (the values regrown weights get back).
        stats: the layer's :class:`LayerStats` (``seq_sum``, ``seq_var``, ``col_norm`` are used).
        mask: initial bool mask (``True`` = kept), e.g. from :func:`wanda_prune`.
        sparsity: the target, only to tell unstructured from N:M (the mask must match an N:M one).

    Returns ``(mask, weight * mask)``.
    """
    w = _canonical_2d(weight, name)
    stats = _check_stats(stats, w, name, "DSnoT")
    pattern, _ = resolve_target(sparsity)
    _check_nm(pattern, w, name)
    max_cycles = check_int(max_cycles, "max_cycles", minimum=0)
    update_threshold = check_number(update_threshold, "update_threshold", minimum=0.0)
    pow_of_var = check_number(pow_of_var, "pow_of_var", minimum=0.0)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(w.shape):
        shown = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise LayerError(f"{name}: initial mask must have the weight's shape {tuple(w.shape)}; got {shown}")
    keep = mask.to(device=w.device, dtype=torch.bool).clone()
    nm = isinstance(pattern, NM)
    if nm and not is_valid_nm(keep, pattern.n, pattern.m):
        raise LayerError(f"{name}: initial mask is not a valid {pattern.n}:{pattern.m} (N kept of M) mask")
    if same_sign is None:
        same_sign = nm
    rows, cols = w.shape
    dev = w.device
    c = w * stats.seq_sum.to(dev)[None, :]
    eps = (c * ~keep).sum(dim=1)
    sign0 = torch.sign(eps)
    var = stats.seq_var.to(dev)
    tiny = torch.finfo(torch.float32).tiny
    grow_key = c / var.clamp_min(tiny).pow(pow_of_var)[None, :] if pow_of_var else c.clone()
    grow_order, n_pruned = _two_pointer_order(grow_key, ~keep)
    lo = torch.zeros(rows, dtype=torch.long, device=dev)
    hi = n_pruned - 1
    arange = torch.arange(rows, device=dev)
    active = torch.ones(rows, dtype=torch.bool, device=dev)
    if not nm:
        wanda = wanda_scores(w, stats)
        rank = torch.empty_like(wanda, dtype=torch.float64)
        order = torch.sort(torch.where(keep, wanda, torch.full_like(wanda, math.inf)), dim=1, stable=True).indices
        rank.scatter_(1, order, torch.arange(cols, dtype=torch.float64, device=dev).expand(rows, cols).contiguous())
        # negatives ascending by Wanda score, then zeros, then positives descending
        prune_key = torch.where(c < 0, rank, torch.where(c == 0, cols + rank, 3.0 * cols - rank))
        prune_order, n_kept = _two_pointer_order(prune_key, keep)
        plo = torch.zeros(rows, dtype=torch.long, device=dev)
        phi = n_kept - 1
    else:
        metric = (wanda_scores(w, stats) if initial_scores is None else initial_scores.detach().float().to(dev)).clone()
        if tuple(metric.shape) != (rows, cols) or torch.isnan(metric).any():
            raise LayerError(f"{name}: initial_scores must be a NaN-free tensor of shape {(rows, cols)}")
        regrown = torch.zeros_like(keep)
        swapped_out = metric.max() + 1
        group_offsets = torch.arange(pattern.m, device=dev)
    # every op of a cycle touches O(rows) numbers: one thread (see _few_threads)
    with _few_threads(rows, dev):
        for _ in range(max_cycles):
            if not bool(active.any()):
                break
            pos = eps > 0
            has_grow = lo <= hi
            gptr = torch.where(pos, hi, lo).clamp(0, cols - 1)
            gidx = grow_order.gather(1, gptr[:, None]).squeeze(1)
            c_grow = c[arange, gidx]
            if not nm:
                neg = eps < 0
                has_prune = plo <= phi
                pptr = torch.where(neg, phi, plo).clamp(0, cols - 1)
                pidx = prune_order.gather(1, pptr[:, None]).squeeze(1)
                possible = has_grow & has_prune
            else:
                start = gidx - gidx % pattern.m
                members = start[:, None] + group_offsets[None, :]
                cand = torch.where(keep.gather(1, members) & ~regrown.gather(1, members), metric.gather(1, members),
                                   torch.full((rows, pattern.m), math.inf, device=dev))
                best = cand.min(dim=1)
                pidx = members[arange, best.indices]
                has_partner = torch.isfinite(best.values)
                possible = has_grow & has_partner
            c_prune = c[arange, pidx]
            eps_after = eps + c_prune - c_grow
            ok = active & (eps.abs() > update_threshold)
            if same_sign:
                ok &= torch.sign(eps_after) == sign0
            # a row out of candidates stops; an N:M group without a partner only skips this candidate
            next_active = ok & has_grow
            if nm:
                next_active = next_active | (active & has_grow & ~has_partner & (eps.abs() > update_threshold))
            ok &= possible
            rows_ok = arange[ok]
            keep[rows_ok, pidx[ok]] = False
            keep[rows_ok, gidx[ok]] = True
            eps = torch.where(ok, eps_after, eps)
            if nm:
                regrown[rows_ok, gidx[ok]] = True
                metric[rows_ok, pidx[ok]] = swapped_out
            else:
                plo = torch.where(neg, plo, plo + 1)
                phi = torch.where(neg, phi - 1, phi)
                next_active &= has_prune
            hi = torch.where(pos, hi - 1, hi)
            lo = torch.where(pos, lo, lo + 1)
            active = next_active
    return keep, w * keep


# ---------------------------------------------------------------------------------------------
# method objects
# ---------------------------------------------------------------------------------------------


class OneShotMethod(ABC):
    """A one-shot pruning rule with its options, as used by :func:`~sparseforge.oneshot.prune_oneshot`.

    Subclasses implement :meth:`prune` (a pure function of the canonical weight and the layer's
    :class:`LayerStats`) and :meth:`scores` (the ranking the rule uses; DSnoT's initial metric).
    ``needs_data`` says whether calibration inputs are required, ``needs_gram`` whether the
    ``in x in`` Gram matrix must be accumulated.
    """

    #: name used in reports and :func:`method_from_spec`
    name: str = "method"
    needs_data: bool = True
    needs_gram: bool = False

    @property
    def label(self) -> str:
        """Name for reports, accepted back by :func:`method_from_spec` (``"magnitude-row"``, ``"dsnot+wanda"``)."""
        return self.name

    @abstractmethod
    def prune(self, weight: torch.Tensor, stats: LayerStats | None, sparsity: Any, *, name: str = "weight",
              layer_name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask, new_weight)`` for canonical ``weight``; ``layer_name`` is the block-relative module name."""

    @abstractmethod
    def scores(self, weight: torch.Tensor, stats: LayerStats | None, *, name: str = "weight") -> torch.Tensor:
        """Importance of every weight under this rule (higher = kept first)."""


@dataclass(frozen=True)
class Magnitude(OneShotMethod):
    """Magnitude pruning (:func:`magnitude_prune`); ``scope`` is ``"layer"`` (default, as the references) or ``"row"``."""

    scope: str = "layer"
    name: str = field(default="magnitude", init=False)
    needs_data: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.scope not in ("layer", "row"):
            raise ConfigError(f"magnitude scope must be 'layer' or 'row'; got {self.scope!r}")

    @property
    def label(self) -> str:
        """``"magnitude"`` or ``"magnitude-row"``."""
        return "magnitude" if self.scope == "layer" else "magnitude-row"

    def prune(self, weight, stats, sparsity, *, name="weight", layer_name=""):
        """See :func:`magnitude_prune`."""
        return magnitude_prune(weight, sparsity, scope=self.scope, name=name)

    def scores(self, weight, stats, *, name="weight"):
        """``|W|``."""
        return weight.detach().float().abs()


@dataclass(frozen=True)
class Wanda(OneShotMethod):
    """Wanda (:func:`wanda_prune`): ``|W_ij| * ||X_j||_2`` per output row, no update."""

    name: str = field(default="wanda", init=False)

    def prune(self, weight, stats, sparsity, *, name="weight", layer_name=""):
        """See :func:`wanda_prune`."""
        return wanda_prune(weight, stats, sparsity, name=name)

    def scores(self, weight, stats, *, name="weight"):
        """``|W_ij| * ||X_j||_2``."""
        return wanda_scores(weight, _check_stats(stats, weight, name, "Wanda"))


@dataclass(frozen=True)
class SparseGPT(OneShotMethod):
    """SparseGPT (:func:`sparsegpt_prune`): OBS reconstruction, ``blocksize=128``, ``percdamp=0.01``, ``preserve_zeros=False``."""

    blocksize: int = 128
    percdamp: float = 0.01
    preserve_zeros: bool = False
    name: str = field(default="sparsegpt", init=False)
    needs_gram: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_int(self.blocksize, "blocksize", minimum=1)
        check_number(self.percdamp, "percdamp", minimum=0.0)
        if not isinstance(self.preserve_zeros, bool):
            raise ConfigError(f"preserve_zeros must be True or False; got {self.preserve_zeros!r}")

    def prune(self, weight, stats, sparsity, *, name="weight", layer_name=""):
        """See :func:`sparsegpt_prune`."""
        return sparsegpt_prune(weight, stats, sparsity, blocksize=self.blocksize, percdamp=self.percdamp,
                               preserve_zeros=self.preserve_zeros, name=name)

    def scores(self, weight, stats, *, name="weight"):
        """``W^2 / [chol(H^-1)^T]_jj^2`` (see :func:`sparsegpt_scores`)."""
        _check_stats(stats, weight, name, "SparseGPT")
        return sparsegpt_scores(weight, stats.hessian(), percdamp=self.percdamp, name=name)


@dataclass(frozen=True)
class DSnoT(OneShotMethod):
    """DSnoT (:func:`dsnot_prune`) on top of an ``initial`` method's mask (default :class:`Wanda`).

    Layers whose block-relative name fully matches ``skip`` keep the initial mask; the default
    ``skip="mlp"`` is :data:`MLP_LAYERS` (the reference's ``--skip_layer mlp``); ``None`` refines
    every layer; any other string is a regular expression. With a :class:`SparseGPT` initial
    mask the SparseGPT weight update is discarded (DSnoT never updates weights; the reference
    likewise borrows only SparseGPT's score).
    """

    initial: OneShotMethod = field(default_factory=Wanda)
    max_cycles: int = 50
    update_threshold: float = 0.1
    pow_of_var: float = 1.0
    same_sign: bool | None = None
    skip: str | None = "mlp"
    name: str = field(default="dsnot", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.initial, OneShotMethod) or isinstance(self.initial, DSnoT):
            raise ConfigError(f"DSnoT initial must be magnitude, wanda or sparsegpt; got {self.initial!r}")
        check_int(self.max_cycles, "max_cycles", minimum=0)
        for f in ("update_threshold", "pow_of_var"):
            check_number(getattr(self, f), f"DSnoT {f}", minimum=0.0)
        if self.same_sign not in (None, True, False):
            raise ConfigError(f"DSnoT same_sign must be None (auto), True or False; got {self.same_sign!r}")
        if self.skip is not None:
            try:
                re.compile(self._skip_regex())
            except re.error as e:
                raise ConfigError(f"DSnoT skip: {self.skip!r} is not a valid regular expression ({e})") from None

    @property
    def needs_gram(self) -> bool:  # type: ignore[override]
        """True if the initial method needs the Gram matrix."""
        return self.initial.needs_gram

    @property
    def label(self) -> str:
        """``"dsnot+<initial>"``."""
        return f"dsnot+{self.initial.label}"

    def _skip_regex(self) -> str:
        return MLP_LAYERS if self.skip == "mlp" else str(self.skip)

    def skips(self, layer_name: str) -> bool:
        """True if the layer keeps its initial mask."""
        return self.skip is not None and re.fullmatch(self._skip_regex(), layer_name) is not None

    def prune(self, weight, stats, sparsity, *, name="weight", layer_name=""):
        """Initial mask from :attr:`initial`, then :func:`dsnot_prune` (unless :meth:`skips` the layer)."""
        mask, new_weight = self.initial.prune(weight, stats, sparsity, name=name, layer_name=layer_name)
        if self.skips(layer_name or name):
            return mask, new_weight
        pattern, _ = resolve_target(sparsity)
        initial_scores = self.initial.scores(weight, stats, name=name) if isinstance(pattern, NM) else None
        return dsnot_prune(weight, stats, mask, sparsity, initial_scores=initial_scores, max_cycles=self.max_cycles,
                           update_threshold=self.update_threshold, pow_of_var=self.pow_of_var,
                           same_sign=self.same_sign, name=name)

    def scores(self, weight, stats, *, name="weight"):
        """The initial method's scores."""
        return self.initial.scores(weight, stats, name=name)


#: Names accepted by :func:`method_from_spec`.
METHOD_NAMES = ("magnitude", "magnitude-row", "wanda", "sparsegpt", "dsnot", "dsnot+magnitude", "dsnot+wanda", "dsnot+sparsegpt")


def method_from_spec(spec: Any) -> OneShotMethod:
    """Build a method from a name in :data:`METHOD_NAMES`, a dict or an :class:`OneShotMethod`.

    ``"dsnot"`` is DSnoT on Wanda, ``"dsnot+magnitude"`` on magnitude. Dict form, written as
    YAML (``prune_oneshot(model, method=...)`` takes the parsed mapping)::

        method: {type: sparsegpt, blocksize: 128, percdamp: 0.01}
        method: {type: dsnot, initial: magnitude, max_cycles: 50, update_threshold: 0.1, skip: mlp}
    """
    if isinstance(spec, OneShotMethod):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        simple = {"magnitude": Magnitude, "wanda": Wanda, "sparsegpt": SparseGPT}
        if key in simple:
            return simple[key]()
        if key == "magnitude-row":
            return Magnitude(scope="row")
        if key.startswith("dsnot"):
            init = key[len("dsnot"):]
            if init == "":
                return DSnoT()
            if init.startswith("+") and init[1:] in ("magnitude", "magnitude-row", "wanda", "sparsegpt"):
                return DSnoT(initial=method_from_spec(init[1:]))
        raise ConfigError(f"unknown one-shot method {spec!r}; allowed: {list(METHOD_NAMES)}")
    if isinstance(spec, dict):
        d = dict(spec)
        kind = d.pop("type", None)
        table = {"magnitude": Magnitude, "wanda": Wanda, "sparsegpt": SparseGPT, "dsnot": DSnoT}
        if kind not in table:
            raise ConfigError(f"method.type must be one of {sorted(table)}; got {kind!r}")
        if kind == "dsnot" and "initial" in d:
            d["initial"] = method_from_spec(d["initial"])
        try:
            return table[kind](**d)
        except TypeError as e:
            raise ConfigError(f"method {kind}: {e}") from None
    raise ConfigError(f"method must be a name {list(METHOD_NAMES)}, a dict or a OneShotMethod; got {spec!r}")
