"""Iterative magnitude pruning with weight rewinding (the lottery-ticket procedure).

Frankle & Carbin 2019, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural
Networks"; rewinding to an early step ``k`` from Frankle et al. 2020, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis". As in ``open_lth``::

    train k steps -> theta_k (k = 0: theta_0, the initialisation)
    for round r = 0..R-1:
        train from theta_k (mask m) for the remaining steps of the round
        prune a fraction p of the *remaining* weights by magnitude -> m
        rewind the surviving weights to theta_k, reset the optimizer state
    train the final mask once more

After ``R`` prunings sparsity is ``1 - (1 - p)**R``; the last pruning is capped at the target.
Defaults follow ``open_lth`` LeNet: ``p = 0.2``, global ranking (``allocation="global"``);
layers to keep dense (open_lth ignores the output layer) are given through ``targets``.
If an ``lr_scheduler`` is passed, its state at step ``k`` is restored at every rewind, so each
round replays the same learning-rate schedule.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..core.patterns import num_pruned
from ..errors import ConfigError, check_fraction, check_int
from .base import SparsityMethod

__all__ = ["IMP"]


class IMP(SparsityMethod):
    """Lottery-ticket IMP with rewinding.

    Args:
        sparsity: final target sparsity.
        steps_per_round: optimizer steps of one training round (the same in every round).
        fraction: fraction of the remaining weights pruned per round (default 0.2).
        rewind_step: step ``k`` whose weights are restored after each pruning (0 = the
            initialisation, the original lottery ticket).
        lr_scheduler: optional scheduler whose state at ``rewind_step`` is restored at every rewind.
        allocation: ``"global"`` (default) or ``"uniform"`` (layer-wise, as in the 2019 LeNet runs).
    Round 0 runs ``steps_per_round`` steps; each later round restarts at step ``k`` and runs
    ``steps_per_round - k`` steps, so the run takes :attr:`total_steps`
    ``= steps_per_round + rounds * (steps_per_round - k)`` optimizer steps.
    """

    name = "imp"
    default_allocation = "global"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sparsity: float,
                 steps_per_round: int, fraction: float = 0.2, rewind_step: int = 0,
                 lr_scheduler: Any = None, **kwargs: Any) -> None:
        check_int(steps_per_round, "steps_per_round", minimum=1)
        self.fraction = check_fraction(fraction, "fraction")
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"fraction (pruned per round) must be in (0, 1); got {fraction}")
        check_int(rewind_step, "rewind_step", minimum=0)
        if rewind_step >= steps_per_round:
            raise ConfigError(f"rewind_step must be < steps_per_round ({steps_per_round}); got {rewind_step}")
        self.steps_per_round = steps_per_round
        self.rewind_step = rewind_step
        self.lr_scheduler = lr_scheduler
        self.round = 0
        self._rewind_state: dict[str, torch.Tensor] | None = None
        self._sched_state: dict[str, Any] | None = None
        super().__init__(model, optimizer, sparsity=sparsity, **kwargs)
        self.rounds = self.num_rounds(self.sparsity, self.fraction)
        self._pending_sched_restore = False

    @staticmethod
    def num_rounds(sparsity: float, fraction: float) -> int:
        """Smallest R with ``1 - (1 - fraction)**R >= sparsity``."""
        if sparsity <= 0:
            return 0
        return max(1, math.ceil(math.log(1.0 - sparsity) / math.log(1.0 - fraction) - 1e-9))

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole procedure: one round per pruning plus the final round."""
        return self.round_end(self.rounds)

    def round_end(self, r: int) -> int:
        """Optimizer steps completed when round ``r`` (0-based) ends."""
        return self.steps_per_round + r * (self.steps_per_round - self.rewind_step)

    def round_sparsity(self, r: int) -> float:
        """Sparsity after the ``r``-th pruning (1-based), capped at the target."""
        return min(1.0 - (1.0 - self.fraction) ** r, self.sparsity)

    def _snapshot(self) -> None:
        self._rewind_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.lr_scheduler is not None:
            self._sched_state = copy.deepcopy(self.lr_scheduler.state_dict())

    def before(self, t: int) -> None:
        """Snapshot ``theta_k`` just before step ``k``; re-apply the LR schedule after a rewind.

        Both happen before the step reads the learning rate, so the scheduler state is the
        one that step ``k`` used, whether or not the caller steps a scheduler after each step.
        """
        if t == self.rewind_step and self.round == 0 and self._rewind_state is None:
            self._snapshot()
        if self._pending_sched_restore:
            self._pending_sched_restore = False
            self.lr_scheduler.load_state_dict(copy.deepcopy(self._sched_state))
            for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
                group["lr"] = lr

    @torch.no_grad()
    def _prune_round(self) -> None:
        self.round += 1
        target = self.round_sparsity(self.round)
        scores = [l.canonical(l.weight.detach().abs()) for l in self.layers]
        if self.allocation.needs_scores:
            total = sum(l.weight.numel() for l in self.layers)
            saved, self.sparsity = self.sparsity, num_pruned(target, total) / total
            try:
                masks = self.masks_from_scores(scores, eligible_only=True)
            finally:
                self.sparsity = saved
        else:
            masks = self.masks_from_scores(scores, [target] * len(self.layers), eligible_only=True)
        self.set_masks(masks)
        self._rewind()

    @torch.no_grad()
    def _rewind(self) -> None:
        assert self._rewind_state is not None
        mask_keys = {l.qualname + "_mask" for l in self.layers}
        for k, v in self.model.state_dict().items():
            if k not in mask_keys and k in self._rewind_state:
                v.copy_(self._rewind_state[k])
        self.masking.apply()
        if self.optimizer is not None:
            self.optimizer.state.clear()  # a fresh optimizer per round, as open_lth builds one per level
        # the caller may still step its scheduler after this step: restore just before the next one
        self._pending_sched_restore = self.lr_scheduler is not None and self._sched_state is not None

    def update(self, t: int) -> None:
        """Prune and rewind at the end of each round."""
        done = t + 1  # steps completed
        if self.round < self.rounds and done == self.round_end(self.round):
            self._prune_round()

    def extra_state(self) -> dict[str, Any]:
        """Round counter and rewind snapshot (needed to resume)."""
        return {"round": self.round, "rewind_state": self._rewind_state, "sched_state": self._sched_state,
                "pending_sched_restore": self._pending_sched_restore}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore round counter and rewind snapshot."""
        self.round = int(state["round"])
        self._rewind_state = state["rewind_state"]
        self._sched_state = state["sched_state"]
        self._pending_sched_restore = bool(state["pending_sched_restore"])
