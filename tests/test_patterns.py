"""sparseforge.core.patterns: hand-computed masks, exact counts, ties, N:M, blocks, channels, specs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparseforge.core import patterns as patterns_mod
from sparseforge.core.patterns import (
    kth_smallest,
    NM,
    Block,
    Channel,
    Pattern,
    Unstructured,
    is_valid_nm,
    nm_groups_view,
    num_pruned,
    pattern_from_spec,
    nm_select,
    random_mask,
    topk_mask,
)
from sparseforge.errors import ConfigError, LayerError, SparseforgeError

T, F = True, False
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _b(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def _scores(shape, seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many ties
        return torch.randint(0, 3, shape, generator=g).float()
    return torch.randn(shape, generator=g)


# ============================================================================ num_pruned
@pytest.mark.parametrize(
    "s, n, expected",
    [
        (0.0, 7, 0),
        (0.5, 4, 2),
        (0.5, 3, 2),  # 1.5 rounds half-up, not to even
        (0.5, 5, 3),  # 2.5 -> 3 (Python round() would give 2)
        (0.25, 2, 1),  # 0.5 -> 1
        (0.1, 4, 0),  # 0.4 -> 0
        (0.125, 4, 1),  # 0.5 -> 1
        (0.3, 10, 3),  # 3.0000000000000004
        (0.7, 10, 7),  # 6.999999999999999
        (0.9, 10, 9),  # 9.000000000000002
        (0.29, 100, 29),  # 28.999999999999996
        (0.35, 20, 7),
        (0.95, 10, 10),  # 9.5 -> 10: would empty a 10-element layer
        (0.999, 1000, 999),
    ],
)
def test_num_pruned_rounding(s: float, n: int, expected: int) -> None:
    assert num_pruned(s, n) == expected


def test_num_pruned_is_exact_for_percent_grid_and_monotone() -> None:
    assert [num_pruned(p / 100, 100) for p in range(100)] == list(range(100))
    for n in (1, 3, 7, 10, 33):
        counts = [num_pruned(i / 200, n) for i in range(200)]
        assert counts == sorted(counts)


# ============================================================================ topk_mask
def test_topk_mask_keeps_largest_and_prunes_lower_index_on_ties() -> None:
    s = _t([3.0, 1.0, 3.0, 2.0, 3.0])
    # three 3s compete for two places: the lowest index (0) loses, as in pruning-first order
    assert torch.equal(topk_mask(s, 2), _b([F, F, T, F, T]))
    assert torch.equal(topk_mask(s, 4), _b([T, F, T, T, T]))
    assert torch.equal(topk_mask(s, 0), _b([F] * 5))
    assert torch.equal(topk_mask(s, 5), _b([T] * 5))


def test_topk_mask_eligible_restricts_choice() -> None:
    s = _t([[5.0, 4.0], [3.0, 2.0]])
    elig = _b([[F, T], [F, T]])
    assert torch.equal(topk_mask(s, 1, eligible=elig), _b([[F, T], [F, F]]))
    with pytest.raises(LayerError, match="k=3"):
        topk_mask(s, 3, eligible=elig)


def test_topk_mask_bad_k_and_nan() -> None:
    with pytest.raises(LayerError):
        topk_mask(torch.ones(3), 4)
    with pytest.raises(LayerError):
        topk_mask(torch.ones(3), -1)
    with pytest.raises(LayerError, match="NaN"):
        topk_mask(_t([1.0, float("nan")]), 1)


def test_topk_mask_ignores_nan_outside_eligible() -> None:
    s = _t([float("nan"), 2.0, 1.0])
    assert torch.equal(topk_mask(s, 1, eligible=_b([F, T, T])), _b([F, T, F]))
    with pytest.raises(LayerError, match="NaN"):
        topk_mask(s, 1, eligible=_b([T, T, F]))


# ============================================================================ random_mask
@given(n=st.integers(1, 400), frac_free=st.floats(0.0, 1.0), frac_k=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_random_mask_exact_count_inside_eligible_and_deterministic(n: int, frac_free: float, frac_k: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    eligible = torch.rand(n, generator=g) < frac_free
    k = int(frac_k * int(eligible.sum()))
    m1 = random_mask(eligible.reshape(1, n), k, torch.Generator().manual_seed(seed))
    m2 = random_mask(eligible.reshape(1, n), k, torch.Generator().manual_seed(seed))
    assert m1.shape == (1, n) and m1.dtype == torch.bool
    assert int(m1.sum()) == k
    assert not bool((m1.reshape(-1) & ~eligible).any())
    assert torch.equal(m1, m2)


@pytest.mark.parametrize("k", [3, 15])  # rejection sampling (2k <= free) and the ranking fallback
def test_random_mask_is_uniform_over_eligible_positions(k: int) -> None:
    # 20 eligible positions of 40; over 4000 draws each is picked k/20 of the time
    eligible = torch.arange(40) % 2 == 1
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(40)
    trials = 4000
    for _ in range(trials):
        counts += random_mask(eligible, k, g).float()
    assert counts[~eligible].sum() == 0
    p = k / 20
    expected = trials * p
    sd = math.sqrt(trials * p * (1 - p))
    # a biased sampler (e.g. favouring low indices) would be many standard deviations off
    assert float((counts[eligible] - expected).abs().max()) < 4.5 * sd
    # chi-square over the 20 cells with 19 dof: the 0.999 quantile is 43.8
    chi2 = float(((counts[eligible] - expected) ** 2 / expected).sum()) * (1 - p) ** -1
    assert chi2 < 43.8


def test_random_mask_bad_k() -> None:
    with pytest.raises(LayerError, match="k=3 of 2 eligible"):
        random_mask(_b([T, F, T]), 3)
    with pytest.raises(LayerError, match="k=-1"):
        random_mask(_b([T, F, T]), -1)
    assert not random_mask(_b([T, F, T]), 0).any()


# ============================================================================ Unstructured
def test_unstructured_hand_mask() -> None:
    s = _t([[4.0, 1.0, 3.0], [2.0, 6.0, 5.0]])
    assert torch.equal(Unstructured().mask(s, 0.5), _b([[T, F, F], [F, T, T]]))
    assert torch.equal(Unstructured().mask(s, 1 / 6), _b([[T, F, T], [T, T, T]]))
    assert torch.equal(Unstructured().mask(s, 0.0), torch.ones(2, 3, dtype=torch.bool))


def test_unstructured_constant_weights_prune_lower_indices_first() -> None:
    m = Unstructured().mask(torch.ones(2, 4), 0.5)
    assert int((~m).sum()) == 4
    assert torch.equal(m, _b([[F, F, F, F], [T, T, T, T]]))


def test_unstructured_partial_ties_prune_lower_index_first() -> None:
    s = _t([[1.0, 2.0, 2.0], [2.0, 3.0, 3.0]])
    # prune 3: the 1, then the first two of the three 2s (flat 1 and 2); flat 3 survives
    assert torch.equal(Unstructured().mask(s, 0.5), _b([[F, F, F], [T, T, T]]))
    # prune 2 of 6 (1/3): the 1 and the first 2
    assert torch.equal(Unstructured().mask(s, 1 / 3), _b([[F, F, T], [T, T, T]]))


def test_unstructured_conv_shape_and_rounding() -> None:
    s = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # 24 elements
    m = Unstructured().mask(s, 0.3)  # 7.2 -> 7 zeros: flat indices 0..6
    assert m.shape == s.shape
    assert torch.equal(m.reshape(-1), torch.arange(24) >= 7)


def test_unstructured_rejects_emptying_sparsity() -> None:
    with pytest.raises(LayerError, match=r"0\.96 would remove all 10 weights of fc1"):
        Unstructured().mask(torch.ones(2, 5), 0.96, layer="fc1")
    # 0.94 * 10 = 9.4 -> 9 zeros: allowed, one survivor
    assert int(Unstructured().mask(torch.ones(2, 5), 0.94).sum()) == 1


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "a", None, True])
def test_unstructured_bad_sparsity(bad) -> None:
    with pytest.raises(ConfigError, match="sparsity") as exc:
        Unstructured().mask(torch.ones(4, 4), bad)
    assert repr(bad) in str(exc.value) or str(float(bad) if isinstance(bad, float) else bad) in str(exc.value)


def test_unstructured_empty_weight_rejected() -> None:
    with pytest.raises(LayerError, match="empty"):
        Unstructured().check((0, 4), "emb")


# ============================================================================ N:M
NM_SCORES = _t(
    [
        [1.0, 4.0, 2.0, 3.0, 8.0, 7.0, 6.0, 5.0],
        [0.0, 0.0, 0.0, 0.0, -1.0, 5.0, -2.0, 1.0],
    ]
)


def test_nm_2_4_linear_hand_mask() -> None:
    expected = _b(
        [
            [F, T, F, T, T, T, F, F],
            [F, F, T, T, F, T, F, T],  # all-tied group: the two lowest indices are pruned
        ]
    )
    m = NM(2, 4).mask(NM_SCORES)
    assert torch.equal(m, expected)
    assert is_valid_nm(m, 2, 4)
    assert NM(2, 4).sparsity == 0.5


def test_nm_1_4_linear_hand_mask() -> None:
    expected = _b(
        [
            [F, T, F, F, T, F, F, F],
            [F, F, F, T, F, T, F, F],
        ]
    )
    assert torch.equal(NM(1, 4).mask(NM_SCORES), expected)
    assert NM(1, 4).sparsity == 0.75


def test_nm_accepts_matching_sparsity_and_rejects_other() -> None:
    assert torch.equal(NM(2, 4).mask(NM_SCORES, 0.5), NM(2, 4).mask(NM_SCORES))
    with pytest.raises(ConfigError, match="sparsity=0.6"):
        NM(2, 4).mask(NM_SCORES, 0.6)


def test_nm_conv_groups_run_over_input_channels() -> None:
    # weight [out=2, in=4, kh=1, kw=2]; each group = the 4 input channels at one (out, kh, kw)
    s = torch.zeros(2, 4, 1, 2)
    s[0, :, 0, 0] = _t([1.0, 5.0, 3.0, 2.0])  # keep in 1, 2
    s[0, :, 0, 1] = _t([9.0, 0.0, 0.0, 8.0])  # keep in 0, 3
    s[1, :, 0, 0] = _t([0.0, 1.0, 2.0, 3.0])  # keep in 2, 3
    s[1, :, 0, 1] = _t([7.0, 7.0, 7.0, 7.0])  # tie: prune in 0, 1, keep in 2, 3
    expected = torch.zeros(2, 4, 1, 2, dtype=torch.bool)
    expected[0, [1, 2], 0, 0] = True
    expected[0, [0, 3], 0, 1] = True
    expected[1, [2, 3], 0, 0] = True
    expected[1, [2, 3], 0, 1] = True
    m = NM(2, 4).mask(s)
    assert torch.equal(m, expected)
    assert is_valid_nm(m, 2, 4)
    # the naive contiguous grouping over the memory layout would give something else
    naive = NM(2, 4).mask(s.reshape(2, 8)).reshape(2, 4, 1, 2)
    assert not torch.equal(naive, expected)


def test_nm_groups_view_order_for_conv() -> None:
    t = torch.arange(2 * 4 * 1 * 2).reshape(2, 4, 1, 2)
    g = nm_groups_view(t, 4)
    assert g.shape == (4, 4)
    assert g[0].tolist() == t[0, :, 0, 0].tolist()
    assert g[1].tolist() == t[0, :, 0, 1].tolist()
    assert g[2].tolist() == t[1, :, 0, 0].tolist()


def test_is_valid_nm_rejects_overfull_groups_and_bad_shapes() -> None:
    good = NM(2, 4).mask(NM_SCORES)
    bad = good.clone()
    bad[0, 0] = True  # 3 kept in the first group
    assert not is_valid_nm(bad, 2, 4)
    assert is_valid_nm(bad, 3, 4)
    assert not is_valid_nm(torch.ones(2, 6, dtype=torch.bool), 2, 4)  # 6 % 4 != 0
    assert not is_valid_nm(torch.ones(8, dtype=torch.bool), 2, 4)  # 1-D


def test_nm_input_dim_not_divisible_names_layer() -> None:
    with pytest.raises(LayerError, match=r"encoder\.fc1.*input dimension 6.*M=4"):
        NM(2, 4).check((3, 6), "encoder.fc1")
    with pytest.raises(LayerError, match="fc9"):
        NM(2, 4).mask(torch.ones(3, 6), layer="fc9")
    with pytest.raises(LayerError, match="conv1"):
        NM(2, 4).check((8, 3, 3, 3), "conv1")  # 3 input channels


@pytest.mark.parametrize(
    "n, m, field, value",
    [(5, 4, "N", "N=5"), (0, 4, "n", "0"), (-1, 4, "n", "-1"), (1, 0, "m", "0"), (2, 2.0, "m", "2.0"), (True, 4, "n", "True")],
)
def test_nm_bad_arguments(n, m, field, value) -> None:
    with pytest.raises(ConfigError) as exc:
        NM(n, m)
    msg = str(exc.value)
    assert field in msg and value in msg
    assert isinstance(exc.value, ValueError)


def test_nm_n_equals_m_keeps_everything() -> None:
    assert bool(NM(4, 4).mask(torch.randn(3, 8)).all())


# ============================================================================ Block
def test_block_1x4_hand_mask() -> None:
    s = _t(
        [
            [1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 0.0, 0.0],  # block sums 4, 10
            [1.0, 1.0, 1.0, 0.0, 4.0, 0.0, 0.0, 0.0],  # block sums 3, 4
        ]
    )
    # prune 2 of 4 blocks: the 3, then the first (lower flat index) of the two 4s
    expected = _b([[F, F, F, F, T, T, T, T], [F, F, F, F, T, T, T, T]])
    m = Block(1, 4).mask(s, 0.5)
    assert torch.equal(m, expected)
    m = Block(1, 4).mask(s, 0.25)
    assert torch.equal(m, _b([[T, T, T, T, T, T, T, T], [F, F, F, F, T, T, T, T]]))


def test_block_2x2_hand_mask() -> None:
    s = _t([[5, 5, 1, 1], [5, 5, 1, 1], [0, 0, 9, 9], [0, 1, 9, 9]])  # block sums 20, 4 / 1, 36
    e25 = _b([[T, T, T, T], [T, T, T, T], [F, F, T, T], [F, F, T, T]])
    e50 = _b([[T, T, F, F], [T, T, F, F], [F, F, T, T], [F, F, T, T]])
    assert torch.equal(Block(2, 2).mask(s, 0.25), e25)
    assert torch.equal(Block(2, 2).mask(s, 0.5), e50)
    assert Block(2, 2).units((4, 4)) == 4


def test_block_conv_uses_out_by_rest_view() -> None:
    s = torch.zeros(2, 2, 1, 2)  # 2-D view 2 x 4
    s[1] = 1.0
    m = Block(1, 4).mask(s, 0.5)
    assert torch.equal(m[0], torch.zeros(2, 1, 2, dtype=torch.bool))
    assert bool(m[1].all())


def test_block_errors() -> None:
    with pytest.raises(LayerError, match=r"fc2.*2x2"):
        Block(2, 2).mask(torch.ones(3, 4), 0.5, layer="fc2")
    with pytest.raises(ConfigError, match="rows"):
        Block(0, 4)
    with pytest.raises(ConfigError, match="cols"):
        Block(1, 2.5)
    with pytest.raises(LayerError, match="blocks"):
        Block(1, 4).mask(torch.ones(2, 8), 0.9)  # 3.6 -> 4 of 4 blocks


# ============================================================================ Channel
def test_channel_dim0_hand_mask() -> None:
    s = _t([[1.0, 2.0], [0.5, 0.5], [2.0, 0.0]])  # row sums 3, 1, 2
    m = Channel(0).mask(s, 1 / 3)
    assert torch.equal(m, _b([[T, T], [F, F], [T, T]]))
    m = Channel(0).mask(s, 2 / 3)
    assert torch.equal(m, _b([[T, T], [F, F], [F, F]]))


def test_channel_dim1_hand_mask() -> None:
    s = _t([[1.0, 0.0, 5.0], [1.0, 4.0, 5.0]])  # column sums 2, 4, 10
    assert torch.equal(Channel(1).mask(s, 0.34), _b([[F, T, T], [F, T, T]]))
    assert torch.equal(Channel(1).mask(s, 0.6), _b([[F, F, T], [F, F, T]]))


def test_channel_conv_dims() -> None:
    s = torch.ones(3, 2, 2, 2)
    s[:, 1] = 2.0  # input channel 1 is more important
    s[2] = 0.0  # output channel 2 is least important
    m1 = Channel(1).mask(s, 0.5)
    assert bool(m1[:, 1].all()) and not bool(m1[:, 0].any())
    m0 = Channel(0).mask(s, 0.3)  # 0.9 -> 1 channel
    assert not bool(m0[2].any()) and bool(m0[:2].all())
    assert Channel(1).units((3, 2, 2, 2)) == 2


def test_channel_errors() -> None:
    with pytest.raises(ConfigError, match="dim"):
        Channel(2)
    with pytest.raises(LayerError, match="channels"):
        Channel(0).mask(torch.ones(2, 4), 0.75)  # 1.5 -> 2 of 2 channels


# ============================================================================ pattern_from_spec
@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, Unstructured()),
        ("unstructured", Unstructured()),
        ("Unstructured", Unstructured()),
        ("2:4", NM(2, 4)),
        (" 1:8 ", NM(1, 8)),
        ("block:1x4", Block(1, 4)),
        ("block:2x2", Block(2, 2)),
        ("channel", Channel(0)),
        ({"type": "nm", "n": 1, "m": 4}, NM(1, 4)),
        ({"type": "block", "rows": 2, "cols": 8}, Block(2, 8)),
        ({"type": "channel", "dim": 1}, Channel(1)),
        ({"type": "unstructured"}, Unstructured()),
    ],
)
def test_pattern_from_spec(spec, expected: Pattern) -> None:
    assert pattern_from_spec(spec) == expected


def test_pattern_from_spec_passes_patterns_through() -> None:
    p = NM(4, 8)
    assert pattern_from_spec(p) is p


@pytest.mark.parametrize(
    "spec",
    ["", "foo", "2:", ":4", "2:4:8", "2::4", "a:b", "block:", "block:2", "block:axb", "block:1x2x3",
     {"type": "bogus"}, {"n": 2}, {"type": "nm", "k": 2}, 5, 0.5],
)
def test_pattern_from_spec_rejects_bad_values(spec) -> None:
    with pytest.raises(ConfigError):
        pattern_from_spec(spec)


@pytest.mark.parametrize("spec", ["5:4", "0:4", {"type": "nm", "n": 3, "m": 2}])
def test_pattern_from_spec_bad_nm_values(spec) -> None:
    with pytest.raises(ConfigError, match="N:M"):
        pattern_from_spec(spec)


def test_patterns_are_frozen_and_hashable() -> None:
    p = NM(2, 4)
    with pytest.raises(Exception):
        p.n = 3  # type: ignore[misc]
    assert len({NM(2, 4), NM(2, 4), Block(1, 4)}) == 2


def test_errors_are_value_errors() -> None:
    assert issubclass(ConfigError, SparseforgeError) and issubclass(LayerError, ValueError)


# ============================================================================ properties
shapes_any = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
sparsities = st.floats(0.0, 0.999, allow_nan=False)


@PROPS
@given(shape=shapes_any, s=sparsities, seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_prop_unstructured_exact_count_deterministic(shape, s, seed, ties) -> None:
    scores = _scores(shape, seed, ties)
    n = scores.numel()
    k = num_pruned(s, n)
    if k >= n:
        with pytest.raises(LayerError, match="would remove all"):
            Unstructured().mask(scores, s)
        return
    m = Unstructured().mask(scores, s)
    assert m.dtype == torch.bool and m.shape == scores.shape
    assert int((~m).sum()) == k
    assert torch.equal(m, Unstructured().mask(scores.clone(), s))
    flat, fm = scores.reshape(-1), m.reshape(-1)
    if k and k < n:
        assert float(flat[fm].min()) >= float(flat[~fm].max())
        # among equal scores at the threshold, every pruned index precedes every kept one
        thr = float(flat[~fm].max())
        if float(flat[fm].min()) == thr:
            idx = torch.arange(n)
            assert int(idx[(~fm) & (flat == thr)].max()) < int(idx[fm & (flat == thr)].min())


@PROPS
@given(
    m=st.integers(1, 8),
    data=st.data(),
    out=st.integers(1, 5),
    groups=st.integers(1, 3),
    kernel=st.sampled_from([(), (1,), (2,), (2, 3)]),
    seed=st.integers(0, 2**31 - 1),
    ties=st.booleans(),
)
def test_prop_nm_valid_exact_and_topn(m, data, out, groups, kernel, seed, ties) -> None:
    n = data.draw(st.integers(1, m))
    shape = (out, groups * m, *kernel)
    scores = _scores(shape, seed, ties)
    mask = NM(n, m).mask(scores)
    assert mask.shape == scores.shape
    assert is_valid_nm(mask, n, m)
    per_group = nm_groups_view(mask.int(), m).sum(dim=1)
    assert bool((per_group == n).all())
    assert int((~mask).sum()) == scores.numel() // m * (m - n)
    g_s, g_m = nm_groups_view(scores, m), nm_groups_view(mask, m)
    if n < m:
        kept_min = torch.where(g_m, g_s, torch.full_like(g_s, math.inf)).min(dim=1).values
        pruned_max = torch.where(~g_m, g_s, torch.full_like(g_s, -math.inf)).max(dim=1).values
        assert bool((kept_min >= pruned_max).all())
    assert torch.equal(mask, NM(n, m).mask(scores.clone()))


@PROPS
@given(
    rows=st.integers(1, 3), cols=st.integers(1, 4), br=st.integers(1, 4), bc=st.integers(1, 4),
    s=sparsities, seed=st.integers(0, 2**31 - 1), ties=st.booleans(),
)
def test_prop_block_exact_block_count(rows, cols, br, bc, s, seed, ties) -> None:
    shape = (rows * br, cols * bc)
    scores = _scores(shape, seed, ties)
    nb = br * bc
    k = num_pruned(s, nb)
    p = Block(rows, cols)
    assert p.units(shape) == nb
    if k >= nb:
        with pytest.raises(LayerError):
            p.mask(scores, s)
        return
    mask = p.mask(scores, s)
    blocks = mask.reshape(br, rows, bc, cols).permute(0, 2, 1, 3).reshape(nb, rows * cols)
    assert bool((blocks.all(dim=1) | ~blocks.any(dim=1)).all())  # each block all-in or all-out
    assert int((~blocks[:, 0]).sum()) == k
    assert int((~mask).sum()) == k * rows * cols
    assert torch.equal(mask, p.mask(scores.clone(), s))


@PROPS
@given(
    shape=st.lists(st.integers(1, 5), min_size=2, max_size=4).map(tuple),
    dim=st.sampled_from([0, 1]),
    s=sparsities,
    seed=st.integers(0, 2**31 - 1),
    ties=st.booleans(),
)
def test_prop_channel_exact_channel_count(shape, dim, s, seed, ties) -> None:
    scores = _scores(shape, seed, ties)
    nc = shape[dim]
    k = num_pruned(s, nc)
    if k >= nc:
        with pytest.raises(LayerError):
            Channel(dim).mask(scores, s)
        return
    mask = Channel(dim).mask(scores, s)
    per_ch = mask.transpose(0, dim).reshape(nc, -1)
    assert bool((per_ch.all(dim=1) | ~per_ch.any(dim=1)).all())
    assert int((~per_ch[:, 0]).sum()) == k
    assert torch.equal(mask, Channel(dim).mask(scores.clone(), s))


def test_nm_select_by_hand_with_infinities_ties_and_signed_zero() -> None:
    inf = float("inf")
    g = torch.tensor([[-inf, -inf, -inf, 5.0],   # keep 2: 5 and the highest-index -inf
                      [1.0, 1.0, 1.0, 1.0],      # all tied: the two highest indices
                      [inf, 0.0, -0.0, inf],     # -0.0 ties 0.0: keep both inf
                      [-0.0, 3.0, 0.0, -1.0]])   # 3, then 0.0 at index 2 beats -0.0 at index 0
    expect = torch.tensor([[False, False, True, True],
                           [False, False, True, True],
                           [True, False, False, True],
                           [False, True, True, False]])
    assert torch.equal(nm_select(g, 2), expect)
    # the pruning path (n > m - n) follows the same order
    assert torch.equal(nm_select(g, 3), torch.tensor([[False, True, True, True],
                                                      [False, True, True, True],
                                                      [True, False, True, True],
                                                      [True, True, True, False]]))
    assert not nm_select(g, 0).any() and nm_select(g, 4).all()


def test_nm_select_rejects_n_outside_the_group() -> None:
    with pytest.raises(LayerError, match=r"n must be in \[0, 4\]; got 5"):
        nm_select(torch.zeros(2, 4), 5)


@given(n=st.integers(1, 60), density=st.floats(0.0, 1.0), frac_k=st.floats(0.0, 1.0), levels=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1), banded=st.booleans(), few=st.booleans())
@settings(max_examples=300, deadline=None)
def test_topk_mask_with_eligible_matches_a_sort_reference(n, density, frac_k, levels, seed, banded, few) -> None:
    # dense and sparse eligible sets take different code paths; both must equal the reference:
    # rank eligible positions by (score, index) ascending and drop the first m - k
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (n,), generator=g).float()  # few levels: many ties
    scores[torch.rand(n, generator=g) < 0.1] = float("inf")
    eligible = torch.rand(n, generator=g) < density
    m = int(eligible.sum())
    k = int(frac_k * m)
    order = sorted((float(scores[i]), i) for i in range(n) if eligible[i])
    expected = torch.zeros(n, dtype=torch.bool)
    for _, i in order[m - k:]:
        expected[i] = True
    with pytest.MonkeyPatch.context() as mp:
        if banded:  # small tensors take the sampled-bracket threshold search too
            mp.setattr(patterns_mod, "_SELECT_MIN", 8)
            mp.setattr(patterns_mod, "_SELECT_SAMPLE", 4)
        # the sampled candidate pass for small k or m - k (_select_few) on every case, or never
        mp.setattr(patterns_mod, "_FEW_BELOW", 0.5 if few else 0.0)
        if few:
            mp.setattr(patterns_mod, "_SELECT_MIN", 8)
        assert torch.equal(topk_mask(scores, k, eligible=eligible), expected)
        assert torch.equal(topk_mask(-scores, k, eligible=eligible).sum(), torch.tensor(k))


@given(n=st.integers(1, 400), levels=st.integers(1, 50), frac_r=st.floats(0.0, 1.0), n_inf=st.integers(0, 20),
       density=st.one_of(st.none(), st.floats(0.0, 1.0)), sample=st.sampled_from([4, 16, 64]),
       seed=st.integers(0, 2**31 - 1))
@settings(max_examples=300, deadline=None)
def test_kth_smallest_banded_path_matches_sort(n, levels, frac_r, n_inf, density, sample, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (n,), generator=g).float()
    x[torch.randperm(n, generator=g)[: min(n_inf, n)]] = float("inf")
    among = None if density is None else torch.rand(n, generator=g) < density
    ranked = x if among is None else x[among]
    if ranked.numel() == 0:
        return
    r = 1 + int(frac_r * (ranked.numel() - 1))
    with pytest.MonkeyPatch.context() as mp:
        # shrink the thresholds so small tensors take the sampled-bracket path (and its fallback)
        mp.setattr(patterns_mod, "_SELECT_MIN", 8)
        mp.setattr(patterns_mod, "_SELECT_SAMPLE", sample)
        assert kth_smallest(x, r, among).item() == ranked.sort().values[r - 1].item()


def test_kth_smallest_on_a_layer_sized_tensor_and_an_adversarial_sample() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(235_200, generator=g).abs()
    ref = x.sort().values
    for r in (1, 10, 23_520, 117_600, 211_680, 235_200):
        assert kth_smallest(x, r).item() == ref[r - 1].item()
    # every sampled position (a stride of n // 2048) holds the largest values: the bracket
    # misses and the exact fallback must still answer
    y = torch.rand(2048 * 16, generator=g)
    y[:: 16] = 2.0 + torch.rand(2048, generator=g)
    for r in (100, 16_000):
        assert kth_smallest(y, r).item() == y.sort().values[r - 1].item()


@given(n=st.integers(1, 3000), levels=st.integers(1, 40), density=st.one_of(st.none(), st.floats(0.05, 1.0)),
       frac=st.floats(0.0, 0.2), largest=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=300, deadline=None)
def test_select_few_matches_a_sort_reference_whenever_it_answers(n, levels, density, frac, largest, seed) -> None:
    # rank by (score, index): the smallest `count` are dropped lowest index first, the largest
    # `count` kept highest index first; None (the caller's fallback) is always allowed
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (n,), generator=g).float()
    el = None if density is None else torch.rand(n, generator=g) < density
    pos = list(range(n)) if el is None else [i for i in range(n) if el[i]]
    count = int(frac * len(pos))
    if count == 0:
        return
    ranked = sorted(pos, key=lambda i: (float(x[i]), i))
    chosen = ranked[len(ranked) - count:] if largest else ranked[:count]
    expected = torch.zeros(n, dtype=torch.bool)
    expected[chosen] = True
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patterns_mod, "_SELECT_SAMPLE", 256)
        got = patterns_mod._select_few(x, el, len(pos), count, largest=largest)
    assert got is None or torch.equal(got, expected)


def test_topk_mask_few_path_on_a_layer_sized_tensor_matches_the_threshold_path() -> None:
    # _select_few (keep or drop at most 1.5 % of the tensor) against the threshold path it replaces,
    # with ties (few levels), a half-full eligible mask, and a sample that sees only large values
    g = torch.Generator().manual_seed(1)
    n = 235_200
    cases = {"continuous": torch.randn(n, generator=g).abs(),
             "ties": torch.randint(0, 50, (n,), generator=g).float()}
    adversarial = torch.rand(n, generator=g)
    adversarial[:: n // 2048] = 2.0  # every sampled position: the bound misses, the exact path answers
    cases["adversarial"] = adversarial
    eligibles = {"all": None, "half": torch.rand(n, generator=g) < 0.5}
    with pytest.MonkeyPatch.context() as mp:
        for (name, x), (ename, el) in itertools.product(cases.items(), eligibles.items()):
            m = n if el is None else int(el.sum())
            for k in (1, 700, int(0.01 * m), int(0.04 * m), m - int(0.01 * m), m - 700, m - 1):
                mp.setattr(patterns_mod, "_FEW_BELOW", 0.015)
                fast = topk_mask(x, k, eligible=el)
                mp.setattr(patterns_mod, "_FEW_BELOW", 0.0)
                ref = topk_mask(x, k, eligible=el)
                assert torch.equal(fast, ref), (name, ename, k)
                assert int(fast.sum()) == k
    # the fast path does answer here (not only the fallback)
    x = cases["continuous"]
    assert patterns_mod._select_few(x, None, n, 700, largest=True) is not None
    assert patterns_mod._select_few(x, eligibles["half"], int(eligibles["half"].sum()), 700, largest=False) is not None


def test_kth_smallest_rejects_a_rank_outside_the_tensor() -> None:
    with pytest.raises(LayerError, match=r"rank r must be in \[1, 3\]; got 4"):
        kth_smallest(torch.zeros(3), 4)
    with pytest.raises(LayerError, match=r"got 0"):
        kth_smallest(torch.zeros(3), 0)
    with pytest.raises(LayerError, match=r"rank r must be in \[1, 1\]; got 2"):  # one entry ranked
        kth_smallest(torch.zeros(3), 2, torch.tensor([False, True, False]))
    with pytest.raises(LayerError, match=r"among must be a bool tensor of shape \(3,\); got torch.bool \(2,\)"):
        kth_smallest(torch.zeros(3), 1, torch.tensor([True, True]))


def test_nm_mask_pad_scores_the_tail_below_every_weight() -> None:
    # 6 inputs, M=4: the tail group holds 2 real weights and keeps min(n, 2) of them
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 0.1], [4.0, 3.0, 2.0, 1.0, 0.0, 0.0]])
    keep = NM(2, 4).mask(scores, pad=True)
    assert keep.tolist() == [[False, False, True, True, True, True], [True, True, False, False, True, True]]
    assert NM(1, 4).mask(scores, pad=True).tolist()[0] == [False, False, False, True, True, False]
    conv = torch.rand(3, 6, 2, 2)  # groups run over input channels at each kernel position
    keep = NM(2, 4).mask(conv, pad=True)
    assert keep.shape == conv.shape and keep[:, :4].sum(1).eq(2).all() and keep[:, 4:].all()
    with pytest.raises(LayerError, match="not divisible by M=4"):
        NM(2, 4).mask(scores)
