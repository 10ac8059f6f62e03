"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune: exploring the
efficacy of pruning for model compression").

Sparsity follows the cubic schedule ``s(t) = s_f + (s_i - s_f) (1 - (t - t0)/(n dt))**3`` from
``begin`` to ``end``; every ``frequency`` steps inside that window each layer's mask is
recomputed from the current weight magnitudes and the lowest ``round(s_l(t) n_l)`` are pruned,
where ``s_l(t) = s(t) * s_l / S`` scales the schedule to the layer's final allocation (TF
``weight_sparsity_map`` semantics). Defaults follow the TF ``model_pruning`` code:
``initial_sparsity = 0``, ``frequency = 10``, exponent 3; ``begin``/``end`` must be set.

Unlike the TF code, a pruned weight is zeroed and cannot come back (masks only shrink): the
TF version keeps the stored value of a masked weight and can revive it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.patterns import NM, pattern_from_spec
from ..core.schedules import Cubic
from ..core.scores import get_score
from ..errors import ConfigError, check_int, check_sparsity
from .base import SparsityMethod

__all__ = ["GMP"]


class GMP(SparsityMethod):
    """Gradual magnitude pruning with the cubic schedule.

    Args:
        begin: first pruning step (optimizer steps, 0-based).
        end: step at which the final sparsity is reached.
        frequency: steps between mask updates (default 10).
        initial_sparsity: sparsity at ``begin`` (default 0).
        exponent: schedule exponent (default 3).
        score: ``"magnitude"`` (default) or another score from :mod:`sparseforge.core.scores`
            that needs no gradient.
    Other arguments as :class:`~sparseforge.methods.base.SparsityMethod`.
    """

    name = "gmp"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sparsity: float,
                 begin: int, end: int, frequency: int = 10, initial_sparsity: float = 0.0, exponent: float = 3.0,
                 score: str = "magnitude", **kwargs: Any) -> None:
        check_int(begin, "begin", minimum=0)
        check_int(end, "end", minimum=0)
        check_int(frequency, "frequency", minimum=1)
        if score not in ("magnitude", "random"):
            raise ConfigError(f"GMP score must be 'magnitude' or 'random'; got {score!r}")
        self.score_fn = get_score(score)
        if isinstance(pattern_from_spec(kwargs.get("pattern")), NM):  # before any mask is registered
            raise ConfigError("GMP ramps sparsity gradually; use the N:M training methods for N:M patterns")
        check_sparsity(sparsity)  # named error before the schedule converts it
        self.schedule = Cubic(initial=initial_sparsity, final=float(sparsity), begin=begin, end=end,
                              frequency=frequency, exponent=exponent)
        super().__init__(model, optimizer, sparsity=sparsity, **kwargs)
        if isinstance(self.pattern, NM):
            raise ConfigError("GMP ramps sparsity gradually; use the N:M training methods for N:M patterns")
        self.final_layer_sparsity = list(self.layer_sparsity)
        self.current_sparsity = 0.0

    def init_masks(self) -> None:
        """Apply the schedule's value at step 0 (``initial_sparsity`` if ``begin > 0``)."""
        self.final_layer_sparsity = list(self.layer_sparsity)
        self._prune_to(self.schedule(0))

    @torch.no_grad()
    def _prune_to(self, s: float) -> None:
        self.current_sparsity = s
        if s <= 0.0:
            return
        scores = [l.canonical(self.score_fn(l.weight, None, self.generator)) for l in self.layers]
        if self.allocation.needs_scores:
            saved, self.sparsity = self.sparsity, s
            try:
                masks = self.masks_from_scores(scores, eligible_only=True)
            finally:
                self.sparsity = saved
        else:
            ratio = s / self.sparsity if self.sparsity > 0 else 0.0
            per_layer = [min(sl * ratio, sl) for sl in self.final_layer_sparsity]
            masks = self.masks_from_scores(scores, per_layer, eligible_only=True)
        self.set_masks(masks)

    def is_pruning_step(self, t: int) -> bool:
        """True if the masks are recomputed after optimizer step ``t``."""
        s = self.schedule
        # also at ``end`` itself, where the schedule reaches the final sparsity even when
        # ``end - begin`` is not a multiple of ``frequency``
        return s.begin <= t <= s.end and ((t - s.begin) % s.frequency == 0 or t == s.end)

    def update(self, t: int) -> None:
        """Recompute masks at the schedule's sparsity on pruning steps."""
        if self.is_pruning_step(t):
            self._prune_to(self.schedule(t))

    def extra_state(self) -> dict[str, Any]:
        """Current scheduled sparsity and final per-layer split."""
        return {"current_sparsity": self.current_sparsity, "final_layer_sparsity": self.final_layer_sparsity}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the scheduled sparsity."""
        self.current_sparsity = float(state["current_sparsity"])
        self.final_layer_sparsity = list(state["final_layer_sparsity"])
