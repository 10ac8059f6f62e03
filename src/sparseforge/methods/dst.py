"""Dynamic sparse training: SET and RigL share one prune-and-regrow loop.

Every ``update_interval`` optimizer steps (until ``end``) each layer drops ``int(f(t) n_active)``
of its active weights and regrows the same number among the positions not kept after the
drop (a just-dropped position may be regrown), so every layer's nonzero count stays
constant. Regrown weights start at zero with zeroed optimizer state (RigL's default
``grow_init='zeros'``); a weight dropped and regrown in the same update keeps its value.

* :class:`RigL` (Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners";
  ``google-research/rigl``): drop the smallest ``|w|``; grow where the dense gradient
  ``|dL/dw|`` of the current batch is largest; ``f(t) = alpha/2 (1 + cos(pi t / T_end))``.
  Defaults: ``alpha = 0.3``, ``update_interval = 100``, ``end = 0.75 * total_steps``, ERK.
* :class:`SET` (Mocanu et al. 2018, "Scalable training of artificial neural networks with
  adaptive sparse connectivity inspired by network science"): the official rule drops the
  fraction ``zeta`` of the *negative* weights closest to zero and ``zeta`` of the *positive*
  weights closest to zero (active weights that are exactly zero are dropped too, as the
  official Keras code does), then regrows uniformly at random. Defaults: ``zeta = 0.3``
  constant, ER allocation, an update once per epoch (pass ``update_interval`` = steps per epoch).

Differences from the official code, on purpose: ties are broken by position rather than by
random noise so every rank of a distributed run computes the same masks (they are also
broadcast from rank 0); RigL applies the optimizer step on update steps instead of skipping it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..core.patterns import Unstructured, topk_mask
from ..core.schedules import Constant, CosineDecay, Schedule
from ..errors import ConfigError, check_fraction, check_int
from ..masking import MaskedLayer
from .base import SparsityMethod

__all__ = ["DynamicSparse", "SET", "RigL"]

_FOREVER = 2**62  # "update until training stops" for constant drop fractions


class DynamicSparse(SparsityMethod):
    """Prune-and-regrow loop shared by SET and RigL; subclasses choose drop and grow.

    Args:
        sparsity: target sparsity, reached at initialisation with random masks.
        drop_fraction: initial fraction ``alpha`` of active weights dropped per update.
        decay: ``"cosine"`` or ``"constant"`` schedule of the drop fraction.
        update_interval: optimizer steps between updates.
        end: last step with an update (required unless ``total_steps`` is given or the
            decay is constant, in which case updates never stop).
        total_steps: length of training; ``end`` defaults to ``end_fraction * total_steps``.
        begin: first step with an update (default 0).
    """

    supported_patterns = (Unstructured,)
    default_allocation = "erk"
    default_decay = "cosine"
    default_end_fraction = 0.75

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sparsity: float,
                 drop_fraction: float = 0.3, decay: str | None = None, update_interval: int = 100,
                 end: int | None = None, total_steps: int | None = None, begin: int = 0,
                 end_fraction: float | None = None, **kwargs: Any) -> None:
        self.drop_fraction = check_fraction(drop_fraction, "drop_fraction")
        self.update_interval = check_int(update_interval, "update_interval", minimum=1)
        check_int(begin, "begin", minimum=0)
        decay = decay or self.default_decay
        if end is None and total_steps is None:
            if decay != "constant":
                raise ConfigError(f"{type(self).__name__} with decay={decay!r} needs end= (last update step) or total_steps=")
            end = _FOREVER
        if end is None:
            check_int(total_steps, "total_steps", minimum=1)
            frac = check_fraction(end_fraction if end_fraction is not None else self.default_end_fraction, "end_fraction")
            end = int(frac * total_steps)
        check_int(end, "end", minimum=1)
        if end <= begin:
            raise ConfigError(f"end must be > begin; got begin={begin}, end={end}")
        self.begin, self.end = begin, end
        if decay == "cosine":
            self.schedule: Schedule = CosineDecay(initial=self.drop_fraction, end=end, begin=begin)
        elif decay == "constant":
            self.schedule = Constant(self.drop_fraction)
        else:
            raise ConfigError(f"decay must be 'cosine' or 'constant'; got {decay!r}")
        self.last_update: dict[str, Any] = {}
        super().__init__(model, optimizer, sparsity=sparsity, **kwargs)

    @torch.no_grad()
    def init_masks(self) -> None:
        """Random masks with exact per-layer counts (the allocation's sparsities)."""
        scores = [torch.rand(l.canonical_shape, generator=self.generator) for l in self.layers]
        self.set_masks(self.masks_from_scores(scores))

    def is_update_step(self, t: int) -> bool:
        """True if masks change after optimizer step ``t`` (every ``update_interval`` steps)."""
        done = t + 1
        return self.begin < done <= self.end and (done - self.begin) % self.update_interval == 0

    def needs_grads(self, t: int) -> bool:
        """Grow criteria that read gradients stash them on update steps only."""
        return self.grow_needs_grads and self.is_update_step(t)

    grow_needs_grads = False

    def drop(self, layer: MaskedLayer, mask: torch.Tensor, n_drop: int) -> torch.Tensor:
        """Canonical mask of the active weights that survive: drop the ``n_drop`` smallest ``|w|``."""
        w = layer.canonical(layer.weight.detach()).abs()
        n_keep = int(mask.sum()) - n_drop
        return topk_mask(w, n_keep, eligible=mask)

    def grow_scores(self, layer: MaskedLayer) -> torch.Tensor:
        """Canonical scores for regrowth (higher = grown first)."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, t: int) -> None:
        """Drop and regrow on update steps; record counts in :attr:`last_update`."""
        if not self.is_update_step(t):
            return
        frac = self.schedule(t + 1)
        new_masks, stats = [], {}
        for layer in self.layers:
            mask = layer.canonical(layer.mask)
            n_active = int(mask.sum())
            n_drop = int(n_active * frac)
            kept = self.drop(layer, mask, n_drop)
            n_regrow = n_active - int(kept.sum())
            grown = topk_mask(self.grow_scores(layer), n_regrow, eligible=~kept)
            new = kept | grown
            new_masks.append(new)
            stats[layer.qualname] = {"active": n_active, "dropped": int((mask & ~new).sum()), "grown": int((grown & ~mask).sum())}
        self.set_masks(new_masks)  # newly grown positions were zero with zero state: grow_init = zeros
        self.last_update = {"step": t + 1, "drop_fraction": frac, "layers": stats}

    def extra_state(self) -> dict[str, Any]:
        """Schedule window, for reports."""
        return {"begin": self.begin, "end": self.end}


class RigL(DynamicSparse):
    """RigL: drop by magnitude, grow by dense gradient magnitude, cosine-decayed drop fraction."""

    name = "rigl"
    grow_needs_grads = True

    def grow_scores(self, layer: MaskedLayer) -> torch.Tensor:
        """``|dL/dw|`` of the batch of the update step, at every position."""
        return self.dense_grad(layer).abs()


class SET(DynamicSparse):
    """SET: drop the ``zeta`` fraction of negative and of positive weights closest to zero, regrow at random."""

    name = "set"
    default_allocation = "er"
    default_decay = "constant"
    default_end_fraction = 1.0

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sparsity: float,
                 update_interval: int, zeta: float | None = None, **kwargs: Any) -> None:
        if zeta is not None:
            kwargs["drop_fraction"] = zeta
        super().__init__(model, optimizer, sparsity=sparsity, update_interval=update_interval, **kwargs)

    def drop(self, layer: MaskedLayer, mask: torch.Tensor, n_drop: int) -> torch.Tensor:
        """Official SET rule; ``n_drop`` is ignored, the fraction applies to each sign separately.

        Each sign keeps ``floor((1 - zeta) n_sign)`` weights, the count the official Keras
        ``rewireMask`` keeps for negatives (``values[int((1 - zeta) firstZeroPos)]`` as a strict
        threshold). For positives that code keeps one fewer (an index off-by-one in its
        ``smallestPositive``); the symmetric count is used here.
        """
        frac = self.schedule(self.step)
        w = layer.canonical(layer.weight.detach())
        pos = mask & (w > 0)
        neg = mask & (w < 0)
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        # the epsilon absorbs binary noise such as (1 - 0.3) * 10 = 7.000000000000001
        keep_pos = topk_mask(w, int(math.floor((1.0 - frac) * n_pos + 1e-9)), eligible=pos)  # largest positives
        keep_neg = topk_mask(-w, int(math.floor((1.0 - frac) * n_neg + 1e-9)), eligible=neg)  # most negative
        return keep_pos | keep_neg

    def grow_scores(self, layer: MaskedLayer) -> torch.Tensor:
        """Uniform random scores from the method's generator."""
        return torch.rand(layer.canonical_shape, generator=self.generator).to(layer.weight.device)
