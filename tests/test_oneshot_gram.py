"""The block-triangular Gram accumulation of LayerStats equals the full X^T X product."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.oneshot.stats import GRAM_TILE, LayerStats


def _full(xs: list[torch.Tensor], n: int) -> torch.Tensor:
    g = torch.zeros(n, n)
    for x in xs:
        g.addmm_(x.reshape(-1, n).t(), x.reshape(-1, n))
    return g


@pytest.mark.parametrize("n", [5, GRAM_TILE, GRAM_TILE + 1, 1000, 1536])
def test_tiled_gram_is_bitwise_the_full_product(n):
    gen = torch.Generator().manual_seed(n)
    xs = [torch.randn(3, 40, n, generator=gen) * 2, torch.randn(17, n, generator=gen)]
    stats = LayerStats(n)
    for x in xs:
        stats.update(x)
    # MKL computes every entry as the same dot product whatever the tiling: identical bits
    assert torch.equal(stats.gram, _full(xs, n))


def test_gram_read_between_updates_stays_exact():
    gen = torch.Generator().manual_seed(0)
    n = 2 * GRAM_TILE + 7
    xs = [torch.randn(50, n, generator=gen) for _ in range(3)]
    stats = LayerStats(n)
    for i, x in enumerate(xs):
        stats.update(x)
        assert torch.equal(stats.gram, _full(xs[: i + 1], n))  # mirroring must not leak into the next update


def test_tiles_cover_features_once():
    for n in (1, 383, 384, 385, 1536, 4097):
        tiles = LayerStats(n)._tiles()
        assert tiles[0][0] == 0 and tiles[-1][1] == n
        assert all(b == c for (_, b), (c, _) in zip(tiles, tiles[1:]))
        assert all(0 < b - a <= GRAM_TILE for a, b in tiles)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 900), rows=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_gram_matches_definition(n, rows, seed):
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    stats = LayerStats(n)
    stats.update(x)
    ref = x.double().t() @ x.double()
    assert torch.allclose(stats.gram.double(), ref, rtol=1e-5, atol=1e-4)
    assert stats.gram is stats.gram  # mirrored once, then reused
