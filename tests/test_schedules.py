"""sparseforge.core.schedules: values at hand-picked steps and argument validation."""

from __future__ import annotations

import dataclasses
import math

import pytest

from sparseforge.core.schedules import (Constant, CosineDecay, Cubic, ExponentialDecay, GeometricLevels, LinearDecay,
                                         LinearLevels, Levels, Steps, levels_from_spec)
from sparseforge.errors import ConfigError


# ============================================================================ Constant
def test_constant() -> None:
    c = Constant(0.3)
    assert c(0) == 0.3 and c(10**9) == 0.3
    with pytest.raises(ConfigError, match="Constant.value"):
        Constant("x")
    with pytest.raises(ConfigError):
        Constant(float("nan"))


# ============================================================================ Cubic
def test_cubic_begin_mid_end() -> None:
    c = Cubic(initial=0.0, final=0.8, begin=10, end=110, frequency=10)
    assert c(0) == 0.0 and c(9) == 0.0  # before begin: initial
    assert c(10) == 0.0
    # p = 0.5: 0.8 + (0 - 0.8) * 0.5**3 = 0.7
    assert c(60) == pytest.approx(0.7, abs=1e-12)
    # p = 0.1: 0.8 - 0.8 * 0.9**3
    assert c(20) == pytest.approx(0.8 - 0.8 * 0.729, abs=1e-12)
    assert c(110) == pytest.approx(0.8, abs=1e-12)
    assert c(10_000) == pytest.approx(0.8, abs=1e-12)


def test_cubic_frozen_between_frequency_steps() -> None:
    c = Cubic(initial=0.0, final=0.8, begin=10, end=110, frequency=10)
    for t in range(60, 70):
        assert c(t) == c(60)
    assert c(70) > c(69)
    # monotone non-decreasing over the whole window
    vals = [c(t) for t in range(0, 130)]
    assert vals == sorted(vals)


def test_cubic_frequency_one_changes_every_step() -> None:
    c = Cubic(initial=0.2, final=0.9, begin=0, end=10, exponent=3.0)
    assert c(0) == pytest.approx(0.2)
    assert c(5) == pytest.approx(0.9 + (0.2 - 0.9) * 0.5**3)
    assert c(5) != c(6)


def test_cubic_exponent() -> None:
    c = Cubic(initial=0.0, final=0.5, begin=0, end=4, exponent=1.0)  # linear ramp
    assert [c(t) for t in range(6)] == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.5])


def test_cubic_reaches_final_at_end_when_end_not_on_frequency_grid() -> None:
    c = Cubic(initial=0.0, final=0.5, begin=0, end=25, frequency=10)
    assert c(20) == c(24) < 0.5
    assert c(25) == pytest.approx(0.5)  # "end: step at which the final sparsity is reached"
    assert c(30) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(initial=1.0, final=0.5, begin=0, end=10), "Cubic.initial"),
        (dict(initial=-0.1, final=0.5, begin=0, end=10), "Cubic.initial"),
        (dict(initial=0.0, final=1.0, begin=0, end=10), "Cubic.final"),
        (dict(initial=0.0, final="a", begin=0, end=10), "Cubic.final"),
        (dict(initial=0.0, final=0.5, begin=-1, end=10), "Cubic.begin"),
        (dict(initial=0.0, final=0.5, begin=0, end=10.5), "Cubic.end"),
        (dict(initial=0.0, final=0.5, begin=10, end=10), "Cubic.end"),
        (dict(initial=0.0, final=0.5, begin=0, end=10, frequency=0), "Cubic.frequency"),
        (dict(initial=0.0, final=0.5, begin=0, end=10, exponent=0), "Cubic.exponent"),
        (dict(initial=0.0, final=0.5, begin=0, end=10, exponent=-2.0), "Cubic.exponent"),
    ],
)
def test_cubic_bad_arguments(kwargs, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        Cubic(**kwargs)


def test_schedules_are_frozen() -> None:
    c = Cubic(initial=0.0, final=0.5, begin=0, end=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.final = 0.9  # type: ignore[misc]


# ============================================================================ CosineDecay
def test_cosine_decay_values() -> None:
    c = CosineDecay(initial=0.3, end=100)
    assert c(0) == pytest.approx(0.3)
    assert c(50) == pytest.approx(0.15)
    assert c(25) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert c(100) == pytest.approx(0.0, abs=1e-15)
    assert c(101) == 0.0 and c(10**6) == 0.0


def test_cosine_decay_with_begin() -> None:
    c = CosineDecay(initial=0.5, end=100, begin=20)
    assert c(19) == 0.0
    assert c(20) == pytest.approx(0.5)
    assert c(60) == pytest.approx(0.25)  # halfway through T = 80
    vals = [c(t) for t in range(20, 101)]
    assert vals == sorted(vals, reverse=True)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(initial=0.3, end=0), "CosineDecay.end"),
        (dict(initial=0.3, end=10, begin=10), "CosineDecay.end"),
        (dict(initial=0.3, end=10, begin=-1), "CosineDecay.begin"),
        (dict(initial="x", end=10), "CosineDecay.initial"),
        (dict(initial=0.3, end=None), "CosineDecay.end"),
    ],
)
def test_cosine_decay_bad_arguments(kwargs, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        CosineDecay(**kwargs)


# ============================================================================ Linear / Exponential
def test_linear_decay() -> None:
    d = LinearDecay(rate=0.1)
    assert d(0) == 1.0
    assert d(5) == pytest.approx(0.5)
    assert d(10) == pytest.approx(0.0, abs=1e-12)
    assert d(20) == 0.0
    assert LinearDecay(rate=0.5, initial=2.0)(1) == pytest.approx(1.5)


def test_exponential_decay() -> None:
    d = ExponentialDecay(rate=0.5)
    assert d(0) == 1.0
    assert d(2) == pytest.approx(math.exp(-1.0))
    assert ExponentialDecay(rate=0.0, initial=0.7)(100) == pytest.approx(0.7)


@pytest.mark.parametrize("cls", [LinearDecay, ExponentialDecay])
def test_decay_bad_arguments(cls) -> None:
    with pytest.raises(ConfigError, match="rate"):
        cls(rate=-0.1)
    with pytest.raises(ConfigError, match="rate"):
        cls(rate="fast")
    with pytest.raises(ConfigError, match="initial"):
        cls(rate=0.1, initial=None)


# ============================================================================ Steps
def test_steps() -> None:
    s = Steps(boundaries=[10, 20], values=[0.0, 0.5, 0.8])
    assert [s(t) for t in (0, 9, 10, 19, 20, 1000)] == [0.0, 0.0, 0.5, 0.5, 0.8, 0.8]
    assert s.boundaries == (10, 20)  # stored as tuples: the dataclass stays hashable
    hash(s)
    assert Steps()(5) == 0.0


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(boundaries=[10], values=[0.0]), "len\\(values\\)"),
        (dict(boundaries=[10], values=[0.0, 0.1, 0.2]), "len\\(values\\)"),
        (dict(boundaries=[20, 10], values=[0.0, 0.1, 0.2]), "strictly increasing"),
        (dict(boundaries=[10, 10], values=[0.0, 0.1, 0.2]), "strictly increasing"),
        (dict(boundaries=[-1], values=[0.0, 0.1]), "Steps.boundaries"),
        (dict(boundaries=[1.5], values=[0.0, 0.1]), "Steps.boundaries"),
        (dict(boundaries=[1], values=[0.0, "x"]), "Steps.values"),
    ],
)
def test_steps_bad_arguments(kwargs, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        Steps(**kwargs)


# ============================================================================ round levels (IMP)
def test_geometric_levels_by_hand() -> None:
    g = GeometricLevels(0.5, 0.2)
    # 1 - 0.8**r: 0.2, 0.36, 0.488, then capped at the target 0.5
    assert g.values == pytest.approx((0.2, 0.36, 0.488, 0.5), abs=1e-12) and g.values[-1] == 0.5
    assert g.rounds == 4 and g.final == 0.5
    assert g(0) == 0.0 and g(2) == pytest.approx(0.36) and g(10) == 0.5
    assert GeometricLevels(0.36, 0.2).rounds == 2 and GeometricLevels(0.0).rounds == 0


def test_linear_levels_by_hand() -> None:
    lin = LinearLevels(0.99, 0.01)  # 1 % of the original count per round up to 99 %
    assert lin.rounds == 99
    assert lin.values[:3] == pytest.approx((0.01, 0.02, 0.03)) and lin.values[-1] == 0.99
    assert LinearLevels(0.5, 0.2).values == pytest.approx((0.2, 0.4, 0.5))  # the last one capped
    assert LinearLevels(0.6, 0.2).rounds == 3  # 0.6 / 0.2 is 2.9999999999999996 in binary


def test_explicit_levels_and_spec() -> None:
    lv = Levels([0.5, 0.8, 0.9])
    assert lv.values == (0.5, 0.8, 0.9) and lv.rounds == 3 and lv.final == 0.9 and lv(0) == 0.0 and lv(1) == 0.5
    assert Levels([0.0, 0.5]).values == (0.0, 0.5)  # a first dense repeat is allowed
    assert levels_from_spec("geometric", 0.5) == GeometricLevels(0.5, 0.2)
    assert levels_from_spec("linear", 0.5, 0.25).values == (0.25, 0.5)
    assert levels_from_spec((0.2, 0.4), 0.4) == Levels((0.2, 0.4))
    assert levels_from_spec(lv) is lv


@pytest.mark.parametrize("values, needle", [
    ([0.5, 0.4], r"strictly increasing.*0\.4 after 0\.5"),
    ([0.5, 0.5], r"strictly increasing.*0\.5 after 0\.5"),
    ([0.5, 1.0], r"\[0, 1\); got 1\.0"),
    ([-0.01], r"\[0, 1\); got -0\.01"),
    ([0.2, "x"], r"got 'x'"),
    ([], "non-empty"),
    ("0.5", "non-empty list"),
])
def test_bad_levels(values, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        Levels(values)


def test_bad_level_schedule_arguments() -> None:
    for cls in (GeometricLevels, LinearLevels):
        with pytest.raises(ConfigError, match=rf"{cls.__name__}\.fraction.*\(0, 1\); got 0\.0"):
            cls(0.5, 0.0)
        with pytest.raises(ConfigError, match=rf"{cls.__name__}\.final.*\[0, 1\); got 1\.0"):
            cls(1.0, 0.2)
    with pytest.raises(ConfigError, match="schedule must be 'geometric', 'linear' or a list"):
        levels_from_spec("exponential", 0.5)
    with pytest.raises(ConfigError, match=r"sparsity=0\.5 differs from the schedule's last level 0\.4"):
        levels_from_spec([0.2, 0.4], 0.5)
