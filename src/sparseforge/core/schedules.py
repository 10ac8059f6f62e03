"""Schedules: small frozen dataclasses mapping an optimizer step ``t`` to a value.

Every schedule is callable, ``schedule(t) -> float``, and validates its fields on
construction.

* :class:`Constant` — ``v``.
* :class:`Cubic` — the gradual pruning schedule of Zhu & Gupta 2017 ("To prune, or not to
  prune"): ``s(t) = s_f + (s_i - s_f) * (1 - p)**exponent``, ``p = clip((t - begin) / (end - begin), 0, 1)``,
  ``exponent = 3``; the value only changes on steps that are multiples of ``frequency`` after
  ``begin`` (TF ``model_pruning`` default frequency 10), and at ``end``, where it is ``final``.
* :class:`CosineDecay` — RigL's drop fraction (Evci et al. 2020): ``f(t) = alpha/2 * (1 + cos(pi * min(t - begin, T) / T))``,
  ``T = end - begin``; 0 after ``end``.
* :class:`LinearDecay`, :class:`ExponentialDecay` — ``max(0, v0 - c t)`` and ``v0 exp(-c t)``
  (mask-decay factors of progressive gradient flow, Bambhaniya et al. 2024).
* :class:`Steps` — piecewise constant: ``values[i]`` from ``boundaries[i-1]`` on (IMP rounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import ConfigError, check_int

__all__ = ["Schedule", "Constant", "Cubic", "CosineDecay", "LinearDecay", "ExponentialDecay", "Steps"]


class Schedule:
    """Base class: ``schedule(t)`` returns the value at optimizer step ``t`` (``t >= 0``)."""

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


def _num(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v)):
        raise ConfigError(f"{name} must be a number; got {v!r}")
    return float(v)


@dataclass(frozen=True)
class Constant(Schedule):
    """Always ``value``."""

    value: float

    def __post_init__(self) -> None:
        _num(self.value, "Constant.value")

    def __call__(self, t: int) -> float:
        """``value``."""
        return float(self.value)


@dataclass(frozen=True)
class Cubic(Schedule):
    """Zhu & Gupta polynomial schedule from ``initial`` to ``final`` over ``[begin, end]``."""

    initial: float
    final: float
    begin: int
    end: int
    frequency: int = 1
    exponent: float = 3.0

    def __post_init__(self) -> None:
        for name in ("initial", "final"):
            v = _num(getattr(self, name), f"Cubic.{name}")
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"Cubic.{name} must be in [0, 1); got {v}")
        check_int(self.begin, "Cubic.begin", minimum=0)
        check_int(self.end, "Cubic.end", minimum=0)
        check_int(self.frequency, "Cubic.frequency", minimum=1)
        if self.end <= self.begin:
            raise ConfigError(f"Cubic.end must be > begin; got begin={self.begin}, end={self.end}")
        if _num(self.exponent, "Cubic.exponent") <= 0:
            raise ConfigError(f"Cubic.exponent must be > 0; got {self.exponent}")

    def __call__(self, t: int) -> float:
        """Value at step ``t``, frozen between pruning steps."""
        if t < self.begin:
            return float(self.initial)
        if t >= self.end:
            # the final value is reached at ``end`` even when ``end - begin`` is not a
            # multiple of ``frequency``
            return float(self.final)
        # hold the value between pruning steps so the schedule matches the masks actually applied
        t_eff = min(self.begin + ((t - self.begin) // self.frequency) * self.frequency, self.end)
        p = (t_eff - self.begin) / (self.end - self.begin)
        return self.final + (self.initial - self.final) * (1.0 - p) ** self.exponent


@dataclass(frozen=True)
class CosineDecay(Schedule):
    """``alpha/2 (1 + cos(pi min(t - begin, T)/T))`` on ``[begin, end]``, 0 outside."""

    initial: float
    end: int
    begin: int = 0

    def __post_init__(self) -> None:
        _num(self.initial, "CosineDecay.initial")
        check_int(self.begin, "CosineDecay.begin", minimum=0)
        check_int(self.end, "CosineDecay.end", minimum=1)
        if self.end <= self.begin:
            raise ConfigError(f"CosineDecay.end must be > begin; got begin={self.begin}, end={self.end}")

    def __call__(self, t: int) -> float:
        """Decayed value at step ``t``."""
        if t < self.begin or t > self.end:
            return 0.0
        T = self.end - self.begin
        return self.initial * 0.5 * (1.0 + math.cos(math.pi * min(t - self.begin, T) / T))


@dataclass(frozen=True)
class LinearDecay(Schedule):
    """``max(0, initial - rate * t)``."""

    rate: float
    initial: float = 1.0

    def __post_init__(self) -> None:
        if _num(self.rate, "LinearDecay.rate") < 0:
            raise ConfigError(f"LinearDecay.rate must be >= 0; got {self.rate}")
        _num(self.initial, "LinearDecay.initial")

    def __call__(self, t: int) -> float:
        """Linearly decayed value."""
        return max(0.0, self.initial - self.rate * t)


@dataclass(frozen=True)
class ExponentialDecay(Schedule):
    """``initial * exp(-rate * t)``."""

    rate: float
    initial: float = 1.0

    def __post_init__(self) -> None:
        if _num(self.rate, "ExponentialDecay.rate") < 0:
            raise ConfigError(f"ExponentialDecay.rate must be >= 0; got {self.rate}")
        _num(self.initial, "ExponentialDecay.initial")

    def __call__(self, t: int) -> float:
        """Exponentially decayed value."""
        return self.initial * math.exp(-self.rate * t)


@dataclass(frozen=True)
class Steps(Schedule):
    """Piecewise constant: ``values[0]`` before ``boundaries[0]``, ``values[i]`` from ``boundaries[i-1]``."""

    boundaries: Sequence[int] = field(default_factory=tuple)
    values: Sequence[float] = field(default_factory=lambda: (0.0,))

    def __post_init__(self) -> None:
        object.__setattr__(self, "boundaries", tuple(self.boundaries))
        object.__setattr__(self, "values", tuple(self.values))
        if len(self.values) != len(self.boundaries) + 1:
            raise ConfigError(
                f"Steps needs len(values) == len(boundaries) + 1; got {len(self.values)} values, "
                f"{len(self.boundaries)} boundaries"
            )
        for b in self.boundaries:
            check_int(b, "Steps.boundaries[i]", minimum=0)
        if list(self.boundaries) != sorted(set(self.boundaries)):
            raise ConfigError(f"Steps.boundaries must be strictly increasing; got {list(self.boundaries)}")
        for v in self.values:
            _num(v, "Steps.values[i]")

    def __call__(self, t: int) -> float:
        """Value of the segment containing ``t``."""
        i = 0
        while i < len(self.boundaries) and t >= self.boundaries[i]:
            i += 1
        return float(self.values[i])
