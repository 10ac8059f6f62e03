"""SparseGPT: OBS reconstruction column by column (see :mod:`~sparseforge.oneshot.base`)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.patterns import NM, Unstructured, num_pruned, topk_mask
from ..errors import ConfigError, LayerError, check_int, check_number
from .base import OneShotMethod, _canonical_2d, _check_nm, _check_stats, _few_threads, resolve_target
from .stats import LayerStats

__all__ = ["sparsegpt_scores", "sparsegpt_prune", "SparseGPT"]


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
