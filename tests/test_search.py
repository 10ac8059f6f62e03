"""Random node search: exact node budget, masks remove whole nodes, determinism, scoring, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.core.rng import stream_generator
from sparseforge.errors import ConfigError, LayerError
from sparseforge.models import MLP1D, SmallCNN
from sparseforge.search import (
    apply_node_masks, convergence_step, node_space, random_search, sample_node_masks, score_at_init,
)


def test_node_space_of_mlp_and_cnn() -> None:
    sp = node_space(MLP1D(40, (32, 16), 10))
    assert sp.layers == ("fc1", "fc2", "fc3") and sp.widths == (32, 16) and sp.spread == (1, 1) and sp.total == 48
    cnn = node_space(SmallCNN(image_size=12))
    assert cnn.widths == (32, 64, 128) and cnn.spread == (1, 9, 1)


@settings(max_examples=40, deadline=None)
@given(widths=st.lists(st.integers(1, 40), min_size=1, max_size=4), s=st.floats(0.0, 0.99), seed=st.integers(0, 10**6),
       per_layer=st.booleans())
def test_budget_is_exact(widths: list[int], s: float, seed: int, per_layer: bool) -> None:
    model = MLP1D(5, tuple(widths), 3)
    space = node_space(model)
    gen = stream_generator(seed, "t")
    try:
        masks = sample_node_masks(space, s, gen, per_layer=per_layer)
    except LayerError:
        # only when the budget cannot keep one node per layer
        if per_layer:
            assert any(n - int(s * n + 0.5 + 1e-9) < 1 for n in widths)
        else:
            assert int(s * sum(widths) + 0.5 + 1e-9) > sum(widths) - len(widths)
        return
    if per_layer:
        for m, n in zip(masks, widths):
            assert int((~m).sum()) == int(s * n + 0.5 + 1e-9) and m.any()
    else:
        assert sum(int((~m).sum()) for m in masks) == int(s * sum(widths) + 0.5 + 1e-9)
        assert all(m.any() for m in masks)


def test_masks_remove_whole_nodes_by_hand() -> None:
    torch.manual_seed(0)
    model = MLP1D(3, (4,), 2)
    space = node_space(model)
    keep = torch.tensor([True, False, True, False])
    apply_node_masks(model, space, [keep])
    assert torch.equal(model.fc1.weight_mask, keep.view(4, 1).expand(4, 3))
    assert torch.equal(model.fc2.weight_mask, keep.view(1, 4).expand(2, 4))
    # the masked network equals the explicitly shrunk one (nodes 0 and 2)
    x = torch.randn(5, 3)
    h = torch.relu(x @ model.fc1.weight[[0, 2]].T + model.fc1.bias[[0, 2]])
    assert torch.allclose(model(x), h @ model.fc2.weight[:, [0, 2]].T + model.fc2.bias, atol=1e-6)


def test_conv_to_linear_columns() -> None:
    model = SmallCNN(image_size=8)  # conv2: 64 channels of 2x2 -> fc1 takes 256 inputs
    space = node_space(model)
    g = torch.Generator().manual_seed(0)
    masks = sample_node_masks(space, 0.5, g)
    apply_node_masks(model, space, masks)
    cols = model.fc1.weight_mask.any(0)
    assert torch.equal(cols, masks[1].repeat_interleave(4)) and int(model.conv2.weight_mask.any((1, 2, 3)).sum()) == 32
    assert torch.equal(model.conv2.weight_mask.any((0, 2, 3)), masks[0])


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 10, generator=g), torch.randint(0, 3, (64,), generator=g)


def test_search_is_deterministic_and_picks_the_best() -> None:
    torch.manual_seed(0)
    parent = MLP1D(10, (24, 24), 3)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    x, y = _data()
    a = random_search(parent, x, y, sparsity=0.5, samples=12, seed=3)
    b = random_search(parent, x, y, sparsity=0.5, samples=12, seed=3)
    assert a.scores == b.scores and all(torch.equal(p, q) for p, q in zip(a.best + a.random, b.best + b.random))
    assert a.scores[a.best_index] == min(a.scores)
    assert score_at_init(a.model, x, y) == pytest.approx(min(a.scores))
    assert score_at_init(a.random_model, x, y) == pytest.approx(a.random_score)
    assert {k: v for k, v in parent.state_dict().items()}.keys() == before.keys()  # no masks left on the parent
    assert all(torch.equal(v, before[k]) for k, v in parent.state_dict().items())
    c = random_search(parent, x, y, sparsity=0.5, samples=12, seed=4)
    assert c.scores != a.scores
    acc = random_search(parent, x, y, sparsity=0.5, samples=12, seed=3, metric="accuracy")
    assert acc.scores[acc.best_index] == max(acc.scores)


def test_convergence_step() -> None:
    hist = [{"step": 10, "accuracy": 0.5}, {"step": 20, "accuracy": 0.85}, {"step": 30, "accuracy": 0.9}]
    assert convergence_step(hist) == 30 and convergence_step(hist, 0.9) == 20 and convergence_step([]) is None


def test_bad_input() -> None:
    parent = MLP1D(10, (8,), 3)
    x, y = _data()
    with pytest.raises(ConfigError, match="sparsity must be in \\[0, 1\\)"):
        random_search(parent, x, y, sparsity=1.0)
    with pytest.raises(ConfigError, match="samples must be >= 1"):
        random_search(parent, x, y, sparsity=0.5, samples=0)
    with pytest.raises(ConfigError, match="metric must be"):
        random_search(parent, x, y, sparsity=0.5, metric="grad")
    with pytest.raises(LayerError, match="needs a hidden layer"):
        node_space(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(LayerError, match="fc2 takes 5 inputs"):
        class Broken(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(5, 2)
        node_space(Broken())
    space = node_space(parent)
    with pytest.raises(ConfigError, match="bool tensor of shape \\(8,\\)"):
        apply_node_masks(parent, space, [torch.ones(7, dtype=torch.bool)])
    with pytest.raises(LayerError, match="removes all 1 nodes"):
        sample_node_masks(node_space(MLP1D(3, (1,), 2)), 0.6, torch.Generator())
