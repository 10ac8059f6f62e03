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
* :class:`Steps` — piecewise constant: ``values[i]`` from ``boundaries[i-1]`` on.

Round-level schedules (iterative pruning: IMP, one pruning per round) map a round ``r``
instead of a step: ``levels(r)`` is the sparsity after ``r`` prunings (0 for ``r = 0``, the
dense first round), and ``levels.rounds`` is how many prunings reach the last level.

* :class:`GeometricLevels` — each pruning removes ``fraction`` of the *remaining* weights:
  ``1 - (1 - fraction)**r``, the last one capped at ``final`` (Frankle & Carbin 2019, open_lth).
* :class:`LinearLevels` — each pruning removes ``fraction`` of the *original* count:
  ``r * fraction``, the last one capped at ``final`` (e.g. 1 % per round up to 99 %).
* :class:`Levels` — an explicit, strictly increasing list of sparsities in [0, 1).
* :func:`levels_from_spec` — ``"geometric"`` | ``"linear"`` | a list | a level schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import ConfigError, check_int, check_number

__all__ = ["Schedule", "Constant", "Cubic", "CosineDecay", "LinearDecay", "ExponentialDecay", "Steps",
           "LevelSchedule", "GeometricLevels", "LinearLevels", "Levels", "levels_from_spec"]


class Schedule:
    """Base class: ``schedule(t)`` returns the value at optimizer step ``t`` (``t >= 0``)."""

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


def _num(v: object, name: str) -> float:
    return float(check_number(v, name))


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


# ------------------------------------------------------------------------------ round levels
class LevelSchedule:
    """Base class of round-level schedules: ``levels(r)`` is the sparsity after ``r`` prunings.

    Subclasses set :attr:`values`, the sparsity after each pruning (``values[r - 1]`` after the
    ``r``-th), strictly increasing in [0, 1); ``levels(0)`` is 0 (the dense first round) and
    ``levels(r)`` for ``r > rounds`` stays at the last level.
    """

    values: tuple[float, ...] = ()
    #: sparsity after the last pruning (0 if there is none)
    final: float = 0.0

    @property
    def rounds(self) -> int:
        """Number of prunings (rounds after the first, dense one)."""
        return len(self.values)

    def __call__(self, r: int) -> float:
        """Sparsity after ``r`` prunings."""
        check_int(r, "round", minimum=0)
        if r == 0 or not self.values:
            return 0.0
        return self.values[min(r, len(self.values)) - 1]


def _capped(final: float, fraction: float, kind: str) -> tuple[float, float]:
    fraction = _num(fraction, f"{kind}.fraction")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"{kind}.fraction (pruned per round) must be in (0, 1); got {fraction}")
    final = _num(final, f"{kind}.final")
    if not 0.0 <= final < 1.0:
        raise ConfigError(f"{kind}.final (the target sparsity) must be in [0, 1); got {final}")
    return final, fraction


@dataclass(frozen=True)
class GeometricLevels(LevelSchedule):
    """Prune ``fraction`` of the remaining weights per round up to ``final``: ``1 - (1 - fraction)**r``.

    ``rounds`` is the smallest ``R`` with ``1 - (1 - fraction)**R >= final``; the last level is
    capped at ``final``. ``GeometricLevels(0.5, 0.2).values == (0.2, 0.36, 0.488, 0.5)``.
    """

    final: float
    fraction: float = 0.2
    values: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        final, fraction = _capped(self.final, self.fraction, "GeometricLevels")
        n = 0 if final <= 0 else max(1, math.ceil(math.log(1.0 - final) / math.log(1.0 - fraction) - 1e-9))
        object.__setattr__(self, "values", tuple(min(1.0 - (1.0 - fraction) ** r, final) for r in range(1, n + 1)))


@dataclass(frozen=True)
class LinearLevels(LevelSchedule):
    """Prune ``fraction`` of the *original* count per round up to ``final``: ``r * fraction``.

    ``rounds = ceil(final / fraction)``; the last level is capped at ``final``.
    ``LinearLevels(0.99, 0.01)`` has 99 rounds at 1 %, 2 %, ..., 99 %.
    """

    final: float
    fraction: float = 0.2
    values: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        final, fraction = _capped(self.final, self.fraction, "LinearLevels")
        # the epsilon absorbs binary noise such as 0.99 / 0.01 = 98.99999999999999
        n = 0 if final <= 0 else math.ceil(final / fraction - 1e-9)
        object.__setattr__(self, "values", tuple(min(r * fraction, final) for r in range(1, n + 1)))


@dataclass(frozen=True)
class Levels(LevelSchedule):
    """An explicit list of sparsities, one per pruning, strictly increasing in [0, 1)."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        raw = self.values
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) == 0:
            raise ConfigError(f"Levels.values must be a non-empty list of sparsities in [0, 1); got {raw!r}")
        vals = []
        for v in raw:
            vals.append(float(check_number(v, f"Levels.values: every level of {list(raw)!r}", minimum=0.0, maximum=1.0,
                                           max_open=True)))
        for a, b in zip(vals, vals[1:]):
            if b <= a:
                raise ConfigError(f"Levels.values must be strictly increasing (masks only shrink); got {b} after {a} "
                                  f"in {list(raw)!r}")
        object.__setattr__(self, "values", tuple(vals))

    @property
    def final(self) -> float:  # type: ignore[override]
        """The last level."""
        return self.values[-1]


def levels_from_spec(spec: "LevelSchedule | str | Sequence[float]", final: float | None = None,
                     fraction: float | None = None) -> LevelSchedule:
    """A level schedule from ``"geometric"``, ``"linear"`` (with ``final`` and ``fraction``), a list or a schedule.

    ``fraction`` defaults to 0.2 (open_lth's rate); it applies to the named schedules only.
    With a list or a schedule object, ``final`` (if given) must equal its last level.
    """
    if isinstance(spec, str):
        kinds = {"geometric": GeometricLevels, "linear": LinearLevels}
        if spec not in kinds:
            raise ConfigError(f"schedule must be 'geometric', 'linear' or a list of sparsities; got {spec!r}")
        if final is None:
            raise ConfigError(f"schedule={spec!r} needs the target sparsity (sparsity=)")
        return kinds[spec](final, 0.2 if fraction is None else fraction)
    if fraction is not None:
        raise ConfigError(f"fraction={fraction!r} applies to schedule='geometric' or 'linear' only; "
                          f"the schedule given, {spec!r}, fixes every level")
    levels = spec if isinstance(spec, LevelSchedule) else Levels(spec)
    if final is not None and abs(levels.final - float(final)) > 1e-12:
        raise ConfigError(f"sparsity={final!r} differs from the schedule's last level {levels.final!r}; "
                          "give one of them, or make them equal")
    return levels
