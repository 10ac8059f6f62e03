"""Sparse Model Soups: exact averaging, masks kept, BN recomputation, greedy selection, bad input, a tiny run."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.data import Dataset
from sparseforge.errors import ConfigError
from sparseforge.masking import Masking, Targets
from sparseforge.models import MLP1D
from sparseforge.soups import (
    average_models, average_state_dicts, greedy_soup, ingredient_configs, phase_sparsity, prune_global_magnitude,
    recalibrate_bn, sparse_model_soups, uniform_soup,
)


def _tiny(w: list[list[float]], b: list[float], mask: list[list[bool]] | None = None) -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(w))
        model[0].bias.copy_(torch.tensor(b))
    masking = Masking(model)
    if mask is not None:
        masking.set_mask(masking.layers[0], torch.tensor(mask))
    return model


MASK = [[True, False], [True, True]]


def test_uniform_average_by_hand() -> None:
    a = _tiny([[1.0, 0.0], [2.0, 4.0]], [1.0, -1.0], MASK)
    b = _tiny([[3.0, 0.0], [-2.0, 1.0]], [0.0, 2.0], MASK)
    c = _tiny([[5.0, 0.0], [3.0, 1.0]], [2.0, 2.0], MASK)
    soup = uniform_soup([a, b, c]).model
    assert torch.equal(soup[0].weight, torch.tensor([[3.0, 0.0], [1.0, 2.0]]))
    assert torch.equal(soup[0].bias, torch.tensor([1.0, 1.0]))
    assert torch.equal(soup[0].weight_mask, torch.tensor(MASK))
    # weighted: 0.25 a + 0.75 b
    sd = average_state_dicts([a.state_dict(), b.state_dict()], [0.25, 0.75])
    assert torch.equal(sd["0.weight"], torch.tensor([[2.5, 0.0], [-1.0, 1.75]]))
    for m in (a, b, c):  # ingredients untouched
        assert m[0].weight_mask.equal(torch.tensor(MASK))


def test_greedy_soup_by_hand() -> None:
    # score = -(distance of w[0,0] to 2.0); own scores: a (w=1) -1, b (w=3) -1, c (w=6) -4
    a = _tiny([[1.0, 0.0], [0.0, 0.0]], [0.0, 0.0], MASK)
    b = _tiny([[3.0, 0.0], [0.0, 0.0]], [0.0, 0.0], MASK)
    c = _tiny([[6.0, 0.0], [0.0, 0.0]], [0.0, 0.0], MASK)
    score = lambda m: -abs(float(m[0].weight.detach()[0, 0]) - 2.0)  # noqa: E731
    # order a, b (tie -> lower index first), c; a+b = 2.0 -> score 0 >= -1: added; a+b+c = 10/3 -> -1.33 < 0: rejected
    result = greedy_soup([a, b, c], score)
    soup, chosen = result.model, result.ingredients
    assert chosen == [0, 1] and float(soup[0].weight.detach()[0, 0]) == 2.0
    result = greedy_soup([c], score)
    soup, chosen = result.model, result.ingredients
    assert chosen == [0] and soup is not c and torch.equal(soup[0].weight, c[0].weight)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(0, 10_000))
def test_soup_never_changes_the_mask(m: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(4, 6, generator=g) > 0.5
    models = []
    for _ in range(m):
        model = nn.Sequential(nn.Linear(6, 4))
        with torch.no_grad():
            model[0].weight.copy_(torch.randn(4, 6, generator=g))
        Masking(model).set_mask(Masking(model).layers[0], mask)
        models.append(model)
    soup = uniform_soup(models).model
    assert torch.equal(soup[0].weight_mask, mask)
    assert int((soup[0].weight != 0).sum()) <= int(mask.sum()) and not soup[0].weight[~mask].any()
    expected = sum(mm[0].weight for mm in models) / m
    assert torch.allclose(soup[0].weight, expected, atol=1e-6)


def test_mismatched_masks_error() -> None:
    a = _tiny([[1.0, 0.0], [2.0, 4.0]], [0.0, 0.0], MASK)
    b = _tiny([[1.0, 2.0], [0.0, 4.0]], [0.0, 0.0], [[True, True], [False, True]])
    with pytest.raises(ConfigError, match="different masks: 0.weight_mask differs at 2 position"):
        uniform_soup([a, b])
    with pytest.raises(ConfigError, match="different masks"):
        greedy_soup([a, b], lambda m: 0.0)
    plain = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="has masks"):
        average_models([a, plain])
    with pytest.raises(ConfigError, match="m >= 1"):
        average_models([])


def test_bn_recalibration_recomputes_stats() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[1].running_mean.fill_(7.0)
        model[1].running_var.fill_(9.0)
    x = torch.randn(8, 3)
    model.eval()
    used = recalibrate_bn(model, x, batch_size=4, fraction=1.0)
    assert used == 2 and not model.training and model[1].momentum == 0.1
    h = model[0](x).detach()
    # cumulative average over the two batches: the mean of the batch means, the mean of the unbiased batch variances
    mean = (h[:4].mean(0) + h[4:].mean(0)) / 2
    var = (h[:4].var(0, unbiased=True) + h[4:].var(0, unbiased=True)) / 2
    assert torch.allclose(model[1].running_mean, mean, atol=1e-6)
    assert torch.allclose(model[1].running_var, var, atol=1e-6)
    # default fraction 0.2 of 2 batches -> 1 batch
    assert recalibrate_bn(model, x, batch_size=4) == 1
    assert torch.allclose(model[1].running_mean, h[:4].mean(0), atol=1e-6)
    assert recalibrate_bn(nn.Sequential(nn.Linear(2, 2)), x[:, :2]) == 0


def test_prune_global_and_phase_schedule() -> None:
    model = _tiny([[1.0, -5.0], [0.5, 3.0]], [0.0, 0.0])
    masking = Masking(model)
    prune_global_magnitude(masking, 0.5)
    assert torch.equal(model[0].weight_mask, torch.tensor([[False, True], [False, True]]))
    assert phase_sparsity(0.875, 1, 3) == pytest.approx(0.5) and phase_sparsity(0.875, 3, 3) == pytest.approx(0.875)


def test_ingredient_configs_and_bad_input() -> None:
    cfg = ingredient_configs(3, vary="weight_decay", values=[0, 1e-4, 5e-4], base_seed=10)
    assert [c["weight_decay"] for c in cfg] == [0, 1e-4, 5e-4] and [c["seed"] for c in cfg] == [10, 11, 12]
    assert [c["epochs"] for c in ingredient_configs(2, vary="length", values=[1, 2])] == [1.0, 2.0]
    with pytest.raises(ConfigError, match="m must be >= 1; got 0"):
        ingredient_configs(0)
    with pytest.raises(ConfigError, match="needs values with one entry per ingredient"):
        ingredient_configs(2, vary="lr", values=[0.1])
    with pytest.raises(ConfigError, match="vary must be one of"):
        ingredient_configs(2, vary="momentum")
    ds = _dataset()
    with pytest.raises(ConfigError, match="m must be >= 1; got 0"):
        sparse_model_soups(MLP1D(8, (8,), 3), ds, sparsity=0.5, m=0, val_size=8)
    for bad in (1.0, -0.2):
        with pytest.raises(ConfigError, match="sparsity must be in \\[0, 1\\)"):
            sparse_model_soups(MLP1D(8, (8,), 3), ds, sparsity=bad, val_size=8)
    with pytest.raises(ConfigError, match="val_size=72 must be below the 72 training samples"):
        sparse_model_soups(MLP1D(8, (8,), 3), ds, sparsity=0.5, val_size=72)
    with pytest.raises(ConfigError, match="val_size"):
        sparse_model_soups(MLP1D(8, (8,), 3), ds, sparsity=0.5, val_size=0)


def _dataset() -> Dataset:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 2
    y = torch.arange(96) % 3
    x = centers[y] + torch.randn(96, 8, generator=g)
    return Dataset("blobs", x[:72], y[:72], x[72:], y[72:], 3, (8,))


def test_tiny_run_keeps_exact_sparsity() -> None:
    # jobs=2: the retrains run in worker processes (the benchmark suite test covers jobs=1)
    jobs = 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    res = sparse_model_soups(model, _dataset(), sparsity=0.75, phases=2, m=3, pretrain_epochs=10, retrain_epochs=1,
                             batch_size=16, val_size=16, lr=0.05, jobs=jobs, targets=Targets(last_layer="dense"))
    assert [p.sparsity for p in res.phases] == pytest.approx([0.5, 0.75])
    mask = model[0].weight_mask
    assert int((~mask).sum()) == 96 and not model[0].weight[~mask].any()  # exactly round(0.75 * 128) zeros
    assert not hasattr(model[3], "weight_mask")
    for p in res.phases:
        assert len(p.ingredients) == 3 and p.greedy["ingredients"] and 0 <= p.uniform["test_accuracy"] <= 1
    assert res.dense["test_accuracy"] > 0.5  # separable blobs


def test_soups_are_deterministic() -> None:
    def run():
        torch.manual_seed(1)
        model = MLP1D(8, (16,), 3)
        res = sparse_model_soups(model, _dataset(), sparsity=0.5, phases=1, m=2, pretrain_epochs=1, retrain_epochs=1,
                                 batch_size=16, val_size=16, seed=4)
        return model, res

    (ma, ra), (mb, rb) = run(), run()
    for (ka, va), (kb, vb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert ra.final.uniform == rb.final.uniform


def test_llr_schedule_by_hand() -> None:
    from sparseforge.soups import _llr

    # 20 steps: 2 warm-up steps on a cosine ramp, then linear decay from 1 to 0 over the other 18
    assert _llr(0, 20) == pytest.approx(0.5) and _llr(1, 20) == pytest.approx(1.0)
    assert _llr(2, 20) == pytest.approx(1.0) and _llr(11, 20) == pytest.approx(0.5) and _llr(20, 20) == 0.0
