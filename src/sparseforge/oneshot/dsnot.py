"""DSnoT: training-free mask refinement by swaps (see :mod:`~sparseforge.oneshot.base`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.patterns import NM, is_valid_nm
from ..errors import ConfigError, LayerError, check_int, check_number
from .base import OneShotMethod, _canonical_2d, _check_nm, _check_stats, _few_threads, resolve_target
from .stats import LayerStats
from .wanda import Wanda, wanda_scores

__all__ = ["dsnot_prune", "DSnoT", "MLP_LAYERS"]

#: Block-relative layer names of feed-forward (MLP) linears in common architectures (TinyGPT
#: ``mlp.*``, GPT-2 ``mlp.c_fc``/``mlp.c_proj``, OPT ``fc1``/``fc2``, Llama/Mistral/Qwen2
#: ``mlp.gate_proj``/``up_proj``/``down_proj``, BERT ``intermediate.dense``/``output.dense``).
#: DSnoT leaves these at their initial mask by default, as its code does (``--skip_layer mlp``).
MLP_LAYERS = r"(.*\.)?(mlp|ffn|feed_forward|feedforward|intermediate)(\..*)?|(.*\.)?(fc1|fc2|c_fc)|output\.dense"


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
