"""What every one-shot rule shares: the target, the input checks, row-wise masks, the method base class.

The rules (:mod:`~sparseforge.oneshot.magnitude`, :mod:`~sparseforge.oneshot.wanda`,
:mod:`~sparseforge.oneshot.sparsegpt`, :mod:`~sparseforge.oneshot.dsnot`) are pure functions
``(weight, stats, sparsity) -> (mask, new_weight)``. Every one takes a *canonical* ``[out, in]``
weight (HF ``Conv1D`` already transposed by the caller), the
:class:`~sparseforge.oneshot.stats.LayerStats` of the layer's calibration inputs, and a
:class:`~sparseforge.core.targets.Target` (:func:`~sparseforge.core.targets.parse_target`; a
number or an N:M spec is parsed on entry), either

* a fraction ``s`` in [0, 1): unstructured, exactly ``round(s * n)`` zeros over the layer's ``n``
  weights (:func:`~sparseforge.core.patterns.num_pruned`; the row-wise rules spread the zeros
  over the rows as evenly as the count allows, so every row gets ``floor`` or ``ceil`` of
  ``s * in``); or
* an N:M pattern (``"2:4"`` or :class:`~sparseforge.core.patterns.NM`): keep **N** of every M
  consecutive inputs, NVIDIA's convention. The reference code bases (Wanda, SparseGPT, DSnoT)
  name patterns by the number *pruned* (``prune_n = M - N``); the conversion happens inside
  the rules and nowhere else.

They return a bool mask (``True`` = kept) and the new weight (float32, exact zeros where the
mask is False); nothing is modified in place. Ties are broken as everywhere in sparseforge: among
equal scores the lower index is pruned first.

Each rule's module also holds its method object (a :class:`OneShotMethod` with the rule's
options, what :func:`~sparseforge.oneshot.prune_oneshot` runs);
:func:`~sparseforge.oneshot.registry.method_from_spec` builds one from a name or a dict.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ..core.patterns import NM, Unstructured
from ..core.targets import Target, parse_target
from ..errors import ConfigError, LayerError
from .stats import LayerStats

__all__ = ["oneshot_target", "resolve_target", "OneShotMethod"]

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
