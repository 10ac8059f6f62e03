"""Wanda: weights times input norms, compared per output row (see :mod:`~sparseforge.oneshot.base`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .base import OneShotMethod, _canonical_2d, _check_nm, _check_stats, _mask_from_scores, resolve_target
from .stats import LayerStats

__all__ = ["wanda_scores", "wanda_prune", "Wanda"]


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
