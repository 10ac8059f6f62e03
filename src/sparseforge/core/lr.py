"""Learning-rate schedules as multipliers of the base rate, applied through ``torch.optim.lr_scheduler``.

One formula serves every trainer. At 0-based step ``t`` of a horizon ``T`` with ``W`` warm-up
steps, minimum ratio ``r`` and milestones ``m_i``::

    f(t) = (t + 1) / W                                         t <  W   (linear warm-up)
    f(t) = r + (1 - r) (1 + cos(pi min((t - W) / (T - W), 1))) / 2   t >= W   ("cosine")
    f(t) = gamma ** #{i : t >= m_i}                            t >= W   ("step")
    f(t) = 1                                                   t >= W   ("constant")

``build_lr_scheduler`` wraps :class:`LRSchedule` in a :class:`torch.optim.lr_scheduler.LambdaLR`
(the lambda is a plain function, so the scheduler's ``state_dict`` holds no schedule object).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError

__all__ = ["LR_SCHEDULES", "LRSchedule", "build_lr_scheduler"]

LR_SCHEDULES = ("constant", "cosine", "step")


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate multiplier ``f(step)`` (see the module docstring for the formulas).

    Args:
        kind: ``"constant"``, ``"cosine"`` or ``"step"``.
        total_steps: the horizon ``T`` of the cosine (held at ``min_lr_ratio`` after it).
        warmup_steps: linear warm-up steps ``W`` (0 = none).
        min_lr_ratio: the cosine's final multiplier ``r``, in [0, 1].
        milestones: steps at which ``"step"`` multiplies the rate by ``gamma``.
        gamma: the ``"step"`` factor.
    """

    kind: str = "cosine"
    total_steps: int = 1
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule.name must be one of {list(LR_SCHEDULES)}; got {self.kind!r}")
        if self.warmup_steps < 0:
            raise ConfigError(f"lr_schedule.warmup_steps must be >= 0; got {self.warmup_steps}")
        object.__setattr__(self, "milestones", tuple(self.milestones))

    def __call__(self, step: int) -> float:
        """The multiplier of the base learning rate at 0-based optimizer ``step``."""
        warm = self.warmup_steps
        if step < warm:
            return (step + 1) / warm
        if self.kind == "cosine":
            p = min(max(step - warm, 0) / max(self.total_steps - warm, 1), 1.0)
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
        if self.kind == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        return 1.0


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` that applies ``schedule`` to every parameter group."""

    def factor(step: int) -> float:  # a plain function: LambdaLR's state_dict stores None for it
        return schedule(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
