"""Magnitude pruning: the data-free baseline of the one-shot rules (see :mod:`~sparseforge.oneshot.base`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from .base import OneShotMethod, _canonical_2d, _check_nm, _mask_from_scores, resolve_target

__all__ = ["magnitude_prune", "Magnitude"]


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
