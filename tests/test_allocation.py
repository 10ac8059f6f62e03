"""sparseforge.core.allocation: Uniform, ER, ERK (with dense-layer redistribution), Global."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.core.allocation import ER, ERK, Global, PerLayer, Uniform, allocation_from_spec, global_sparsities
from sparseforge.core.patterns import Unstructured, num_pruned
from sparseforge.errors import ConfigError


def _kept(shapes, sparsities) -> float:
    return sum((1 - s) * math.prod(sh) for sh, s in zip(shapes, sparsities))


# ============================================================================ Uniform
def test_uniform_hand() -> None:
    assert Uniform().sparsities([(4, 3), (2, 2, 3, 3), (10, 1)], 0.7) == [0.7, 0.7, 0.7]
    assert Uniform().sparsities([], 0.5) == []


@pytest.mark.parametrize("alloc", [Uniform(), ER(), ERK()])
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "a"])
def test_bad_sparsity_rejected(alloc, bad) -> None:
    with pytest.raises(ConfigError, match="sparsity") as exc:
        alloc.sparsities([(4, 4)], bad)
    assert repr(bad) in str(exc.value) or str(bad) in str(exc.value)


# ============================================================================ ERK / ER by hand
def test_erk_three_linear_layers_by_hand() -> None:
    # raw = (out + in) / (out * in): 30/200 = 0.15, 40/400 = 0.1, 0.15
    # eps = (0.1 * 800) / (0.15*200 + 0.1*400 + 0.15*200) = 80 / 100 = 0.8
    shapes = [(10, 20), (20, 20), (20, 10)]
    out = ERK().sparsities(shapes, 0.9)
    assert out == pytest.approx([1 - 0.12, 1 - 0.08, 1 - 0.12], abs=1e-12)
    assert _kept(shapes, out) == pytest.approx(80.0, abs=1e-9)


def test_erk_conv_uses_all_dims_er_uses_first_two() -> None:
    shapes = [(8, 4, 3, 3), (16, 8)]  # n = 288, 128; budget at S=0.75: 0.25 * 416 = 104
    # ERK raw: 18/288 = 1/16, 24/128 = 3/16; divisor = 18 + 24 = 42
    erk = ERK().sparsities(shapes, 0.75)
    assert erk == pytest.approx([1 - 13 / 84, 1 - 13 / 28], abs=1e-12)
    # ER raw: (8+4)/32 = 3/8 (kernel ignored), 24/128 = 3/16; divisor = 108 + 24 = 132
    er = ER().sparsities(shapes, 0.75)
    assert er == pytest.approx([1 - 13 / 44, 1 - 13 / 88], abs=1e-12)
    for out in (erk, er):
        assert _kept(shapes, out) == pytest.approx(104.0, abs=1e-9)


def test_erk_dense_layer_redistribution_by_hand() -> None:
    # A: 100x100 (raw 0.02), B: 4x4 (raw 0.5). At S=0.5 the first eps is 5008/208, which gives
    # B a density of 12 > 1, so B becomes dense; its overspend 16*0.5 = 8 comes out of A:
    # eps = (0.5*10000 - 0.5*16) / (0.02*10000) = 24.96 -> density(A) = 0.4992
    shapes = [(100, 100), (4, 4)]
    out = ERK().sparsities(shapes, 0.5)
    assert out[1] == 0.0
    assert out[0] == pytest.approx(1 - 0.4992, abs=1e-12)
    assert _kept(shapes, out) == pytest.approx(0.5 * 10016, abs=1e-9)
    # with exact per-layer rounding the kept budget is within one weight per layer
    kept = sum(math.prod(sh) - num_pruned(s, math.prod(sh)) for sh, s in zip(shapes, out))
    assert abs(kept - 5008) <= len(shapes)


def test_erk_redistribution_iterates_and_ties_go_dense_together() -> None:
    # two identical tiny layers tie at the max raw score and must both become dense; then the
    # 50x40 layer (raw 0.045) would get density 0.045 * 16789.2 / 490 = 1.54 > 1 and goes
    # dense in a second round; the 200x200 layer pays for all: (16000 - 0.6 * 2018) / 40000
    shapes = [(200, 200), (3, 3), (3, 3), (50, 40)]
    out = ERK().sparsities(shapes, 0.6)
    assert out[1:] == [0.0, 0.0, 0.0]
    assert out[0] == pytest.approx(1 - (16000 - 0.6 * 2018) / 40000, abs=1e-12)
    # at a higher sparsity only the tied pair goes dense
    out = ERK().sparsities(shapes, 0.9)
    assert out[1] == 0.0 and out[2] == 0.0
    assert 0.0 < out[3] < out[0] < 1.0  # smaller layer, higher density
    total = sum(math.prod(s) for s in shapes)
    assert _kept(shapes, out) == pytest.approx(0.1 * total, rel=1e-12)


def test_erk_power_scale_zero_is_uniform() -> None:
    shapes = [(10, 20), (64, 3, 3, 3), (7, 5)]
    for s in (0.1, 0.5, 0.93):
        assert ERK(power_scale=0).sparsities(shapes, s) == pytest.approx(Uniform().sparsities(shapes, s), abs=1e-12)


def test_erk_power_scale_changes_split() -> None:
    shapes = [(100, 100), (10, 100)]
    half = ERK(power_scale=0.5).sparsities(shapes, 0.8)
    one = ERK().sparsities(shapes, 0.8)
    # the larger layer is sparser, less so with a smaller power
    assert one[0] > half[0] > 0.8
    assert _kept(shapes, half) == pytest.approx(_kept(shapes, one), rel=1e-12)


def test_erk_zero_sparsity_is_all_dense() -> None:
    out = ERK().sparsities([(10, 20), (20, 20), (3, 5, 3, 3)], 0.0)
    assert out == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_erk_bad_power_scale() -> None:
    for bad in (-1, "x", True):
        with pytest.raises(ConfigError, match="power_scale"):
            ERK(power_scale=bad)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(
        st.one_of(
            st.tuples(st.integers(1, 64), st.integers(1, 64)),
            st.tuples(st.integers(1, 16), st.integers(1, 16), st.integers(1, 3), st.integers(1, 3)),
        ),
        min_size=1,
        max_size=6,
    ),
    s=st.floats(0.05, 0.95),
    power=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
)
def test_prop_erk_budget_and_proportionality(shapes, s, power) -> None:
    try:
        out = ERK(power_scale=power).sparsities(shapes, s)
    except ConfigError:
        # only allowed when the budget cannot be met without every layer dense
        return
    total = sum(math.prod(sh) for sh in shapes)
    assert _kept(shapes, out) == pytest.approx((1 - s) * total, rel=1e-9, abs=1e-6)
    assert all(0.0 <= v < 1.0 for v in out)
    raw = [(sum(sh) / math.prod(sh)) ** power for sh in shapes]
    sparse = [i for i, v in enumerate(out) if v > 1e-12]
    # density / raw is the same eps for every non-dense layer
    eps = {round((1 - out[i]) / raw[i], 9) for i in sparse}
    assert len(eps) <= 1
    # a dense layer has a raw score at least as large as any sparse one
    dense = [i for i, v in enumerate(out) if v <= 1e-12]
    if dense and sparse:
        assert min(raw[i] for i in dense) >= max(raw[i] for i in sparse) - 1e-12


# ============================================================================ Global
def test_global_sparsities_hand() -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[0.5, 5.0, 6.0, 7.0]])
    # prune 4 of 8 pooled: 0.5 (b), 1, 2, 3 (a)
    assert global_sparsities([a, b], 0.5) == [0.75, 0.25]
    assert global_sparsities([a, b], 0.0) == [0.0, 0.0]
    # feeding the result back through Unstructured reproduces the global choice
    ma = Unstructured().mask(a, 0.75)
    assert torch.equal(ma, torch.tensor([[False, False], [False, True]]))


def test_global_sparsities_ties_prune_lower_layer_first() -> None:
    a, b = torch.ones(2, 2), torch.ones(2, 2)
    assert global_sparsities([a, b], 0.25) == [0.5, 0.0]
    assert global_sparsities([a, b], 0.5) == [1.0, 0.0]  # may empty a layer; callers check


def test_global_sparsities_exact_total_count() -> None:
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(7, 3, generator=g), torch.rand(5, 11, generator=g), torch.rand(4, 2, 2, 2, generator=g)]
    n = [s.numel() for s in scores]
    for s in (0.1, 0.33, 0.5, 0.9):
        out = global_sparsities(scores, s)
        zeros = sum(round(v * k) for v, k in zip(out, n))
        assert zeros == num_pruned(s, sum(n))


def test_global_allocation_needs_scores() -> None:
    assert Global().needs_scores and not Uniform().needs_scores
    with pytest.raises(ConfigError, match="global_sparsities"):
        Global().sparsities([(2, 2)], 0.5)


# ============================================================================ spec
@pytest.mark.parametrize(
    "spec, expected",
    [(None, Uniform()), ("uniform", Uniform()), ("ER", ER()), ("erk", ERK()), ("global", Global()),
     ({"type": "erk", "power_scale": 0.5}, ERK(power_scale=0.5))],
)
def test_allocation_from_spec(spec, expected) -> None:
    assert allocation_from_spec(spec) == expected


def test_allocation_from_spec_passthrough_and_errors() -> None:
    e = ERK(power_scale=2.0)
    assert allocation_from_spec(e) is e
    for bad in ("erdos", {"type": "bogus"}, {"type": "erk", "power": 1}, 3):
        with pytest.raises(ConfigError, match="allocation"):
            allocation_from_spec(bad)


def test_per_layer_returns_its_values_and_checks_count_and_range() -> None:
    shapes = [(4, 3), (2, 2)]
    assert PerLayer((0.5, 0.25)).sparsities(shapes, 0.9) == [0.5, 0.25]  # the global value is ignored
    with pytest.raises(ConfigError, match="2 values for 3 masked layers"):
        PerLayer((0.5, 0.25)).sparsities([*shapes, (1, 1)], 0.5)
    with pytest.raises(ConfigError, match="sparsity"):
        PerLayer((0.5, 1.0)).sparsities(shapes, 0.5)
