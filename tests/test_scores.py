"""sparseforge.core.scores: each formula on a tiny tensor; gradient scores need a gradient."""

from __future__ import annotations

import pytest
import torch

from sparseforge.core.scores import GRADIENT_SCORES, SCORES, get_score, gradient, magnitude, random, snip, taylor
from sparseforge.errors import ConfigError

W = torch.tensor([[1.0, -2.0], [0.5, -0.25]])
G = torch.tensor([[-3.0, 0.5], [4.0, 0.0]])


def test_magnitude() -> None:
    assert torch.equal(magnitude(W), torch.tensor([[1.0, 2.0], [0.5, 0.25]]))
    assert torch.equal(magnitude(W, G), magnitude(W))  # gradient ignored


def test_gradient() -> None:
    assert torch.equal(gradient(W, G), torch.tensor([[3.0, 0.5], [4.0, 0.0]]))


def test_snip() -> None:
    assert torch.equal(snip(W, G), torch.tensor([[3.0, 1.0], [2.0, 0.0]]))


def test_taylor() -> None:
    assert torch.equal(taylor(W, G), torch.tensor([[9.0, 1.0], [4.0, 0.0]]))


def test_scores_do_not_track_gradients() -> None:
    w = W.clone().requires_grad_(True)
    g = G.clone().requires_grad_(True)
    for fn in (magnitude, gradient, snip, taylor):
        assert not fn(w, g).requires_grad


def test_random_is_uniform_and_reproducible() -> None:
    a = random(torch.zeros(50, 40), generator=torch.Generator().manual_seed(3))
    b = random(torch.zeros(50, 40), generator=torch.Generator().manual_seed(3))
    c = random(torch.zeros(50, 40), generator=torch.Generator().manual_seed(4))
    assert a.shape == (50, 40)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0
    assert 0.45 < float(a.mean()) < 0.55


@pytest.mark.parametrize("name", ["gradient", "snip", "taylor"])
def test_gradient_scores_without_grad_raise(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        get_score(name)(W)
    with pytest.raises(ConfigError, match="gradient"):
        get_score(name)(W, None)


def test_registry() -> None:
    assert set(SCORES) == {"magnitude", "random", "gradient", "snip", "taylor"}
    assert GRADIENT_SCORES == {"gradient", "snip", "taylor"}
    assert get_score("snip") is snip
    with pytest.raises(ConfigError, match="'wandaa'"):
        get_score("wandaa")
