"""Paper protocols (issue 32): SET's epsilon, with-replacement sampling and grow_init; bias targets; IMP layer rates."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.core.allocation import ER, ERK, allocation_from_spec, implied_sparsity
from sparseforge.core.patterns import num_pruned
from sparseforge.errors import ConfigError, LayerError
from sparseforge.masking import MASK_SUFFIX, Targets, load_masked_state_dict
from sparseforge.methods import IMP, SET, RigL
from sparseforge.methods.dst import GROW_INITS
from sparseforge.methods.static import StaticSparse
from sparseforge.report import sparsity_report


def _mlp(sizes=(20, 10, 4), bias=True, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _steps(model, opt, n, in_features=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(8, in_features, generator=g)
        y = torch.randint(0, model[-1].out_features, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


# ============================================================================ ER / ERK by epsilon
def test_er_epsilon_by_hand() -> None:
    # density = eps (n_in + n_out) / (n_in n_out): 2 * 30 / 200 = 0.3; 2 * 14 / 40 = 0.7; 2 * 5 / 4 > 1 -> dense
    out = ER(epsilon=2).sparsities([(10, 20), (4, 10), (1, 4)], None)
    assert out == pytest.approx([0.7, 0.3, 0.0])
    # exact counts: 140 of 200 and 12 of 40 pruned, none of 4
    assert implied_sparsity([(10, 20), (4, 10), (1, 4)], out) == pytest.approx((140 + 12) / 244)


def test_erk_epsilon_by_hand() -> None:
    # conv [8, 4, 3, 3]: sum 18 / prod 288 = 1/16; eps 4 -> density 0.25
    assert ERK(epsilon=4).sparsities([(8, 4, 3, 3)], None) == pytest.approx([0.75])
    assert allocation_from_spec({"type": "erk", "epsilon": 4}).epsilon == 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=4),
       st.floats(0.1, 50))
def test_er_epsilon_formula_property(shapes, eps) -> None:
    out = ER(epsilon=eps).sparsities(shapes, None)
    for (o, i), s in zip(shapes, out):
        assert 0.0 <= s < 1.0
        assert 1.0 - s == pytest.approx(min(1.0, eps * (o + i) / (o * i)))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "13", True])
def test_epsilon_bad_values(bad) -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        ER(epsilon=bad)


def test_epsilon_and_sparsity_conflict() -> None:
    with pytest.raises(ConfigError, match="not both"):
        ER(epsilon=2).sparsities([(4, 4)], 0.5)
    with pytest.raises(ConfigError, match="not both"):
        SET(_mlp(), None, sparsity=0.5, epsilon=2, update_interval=1)


def test_epsilon_needs_er_allocation() -> None:
    with pytest.raises(ConfigError, match="allocation 'er' or 'erk'"):
        SET(_mlp(), None, epsilon=2, update_interval=1, allocation="uniform")


def test_er_rejects_biases_on_their_own() -> None:
    with pytest.raises(ConfigError, match="at least 2 dims"):
        ER().sparsities([(4, 4), (4,)], 0.5)


def test_set_by_epsilon_exact_counts() -> None:
    model = _mlp((20, 10, 4))
    method = SET(model, None, epsilon=1, update_interval=5)
    # fc0: 1 * 30 / 200 = 0.15 density -> 170 pruned; fc1: 14 / 40 = 0.35 -> 26 pruned
    assert [int((~l.mask).sum()) for l in method.layers] == [num_pruned(0.85, 200), num_pruned(0.65, 40)] == [170, 26]
    assert method.sparsity == pytest.approx(196 / 240)


# ============================================================================ with-replacement sampling
def test_with_replacement_sampling() -> None:
    model = _mlp((20, 10, 4))
    method = SET(model, None, epsilon=3, update_interval=5, sampling="with_replacement", seed=1)
    # draws: 3 * 30 = 90 of 200 positions; 3 * 14 = 42 of 40 (more draws than positions: still sparse)
    kept = [int(l.mask.sum()) for l in method.layers]
    assert 0 < kept[0] <= 90 and 0 < kept[1] < 40
    assert method.layer_sparsity == pytest.approx([1 - kept[0] / 200, 1 - kept[1] / 40])
    assert method.sparsity == pytest.approx(1 - sum(kept) / 240)
    again = SET(_mlp((20, 10, 4)), None, epsilon=3, update_interval=5, sampling="with_replacement", seed=1)
    assert [int(l.mask.sum()) for l in again.layers] == kept  # seeded


def test_with_replacement_draws_expected_density() -> None:
    # 1000 draws over 1000 positions keep 1 - (1 - 1/1000)^1000 ~ 63.2 % in expectation
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 25))
    method = SET(model, None, sparsity=0.0, allocation="uniform", update_interval=5, sampling="with_replacement")
    kept = int(method.layers[0].mask.sum())
    assert abs(kept / 1000 - (1 - (1 - 1 / 1000) ** 1000)) < 0.05


def test_sampling_bad_value() -> None:
    with pytest.raises(ConfigError, match="sampling"):
        SET(_mlp(), None, sparsity=0.5, update_interval=1, sampling="bernoulli")


# ============================================================================ grow_init
def _grown_after_update(grow_init, **kw):
    model = _mlp((20, 10, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = SET(model, opt, sparsity=0.5, allocation="uniform", update_interval=3, grow_init=grow_init, seed=0, **kw)
    before = [l.mask.clone() for l in method.layers]
    _steps(model, opt, 3)
    grown = [l.mask & ~b for l, b in zip(method.layers, before)]
    return model, opt, method, grown


@pytest.mark.parametrize("grow_init", list(GROW_INITS))
def test_grow_init_values_and_state_reset(grow_init) -> None:
    model, opt, method, grown = _grown_after_update(grow_init)
    assert method.last_update["step"] == 3
    for layer, g in zip(method.layers, grown):
        assert int(g.sum()) > 0
        vals = layer.weight.detach()[g]
        assert torch.all(opt.state[layer.weight]["momentum_buffer"][g] == 0)  # optimizer state reset
        assert torch.equal(layer.weight.detach() != 0, layer.mask) or grow_init == "zeros"
        if grow_init == "zeros":
            assert torch.all(vals == 0)
        else:
            assert torch.all(vals != 0)
        if grow_init == "glorot_uniform":
            out, inp = layer.canonical_shape
            assert vals.abs().max() <= math.sqrt(6 / (inp + out))


def test_grow_init_normal_std() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    method = SET(model, opt, sparsity=0.5, allocation="uniform", update_interval=1, grow_init="normal", grow_std=0.5,
                 drop_fraction=0.5)
    before = method.layers[0].mask.clone()
    _steps_single(model, opt)
    g = method.layers[0].mask & ~before
    assert int(g.sum()) > 1000
    assert float(method.layers[0].weight.detach()[g].std()) == pytest.approx(0.5, rel=0.1)


def _steps_single(model, opt) -> None:
    opt.zero_grad()
    model(torch.randn(4, 100)).sum().backward()
    opt.step()


def test_grow_init_random_uniform_bound() -> None:
    model, _, method, grown = _grown_after_update("random_uniform", grow_divisor=2.0)
    for layer, g in zip(method.layers, grown):
        assert layer.weight.detach()[g].abs().max() <= 0.5 * layer.weight.detach()[layer.mask].abs().max()


@pytest.mark.parametrize("kw,match", [({"grow_init": "ones"}, "grow_init"), ({"grow_std": 0}, "grow_std"),
                                      ({"grow_divisor": -1}, "grow_divisor")])
def test_grow_init_bad(kw, match) -> None:
    with pytest.raises(ConfigError, match=match):
        SET(_mlp(), None, sparsity=0.5, update_interval=1, **kw)


def test_rigl_grow_init_normal() -> None:
    model = _mlp((20, 10, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = RigL(model, opt, sparsity=0.5, allocation="uniform", update_interval=2, total_steps=10,
                  grow_init="normal", seed=0)
    _steps(model, opt, 1)
    assert method.last_update["step"] == 1
    for layer in method.layers:
        assert torch.equal(layer.weight.detach() != 0, layer.mask)


# ============================================================================ bias targets
def test_bias_targets_exact_counts_and_state_dict() -> None:
    model = _mlp((20, 10, 4))
    method = StaticSparse(model, None, sparsity=0.5, allocation="uniform", targets={"params": ["weight", "bias"]})
    assert [l.qualname for l in method.layers] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [int((~l.mask).sum()) for l in method.layers] == [100, 5, 20, 2]
    sd = model.state_dict()
    assert "0.bias" + MASK_SUFFIX in sd and "2.bias" + MASK_SUFFIX in sd
    fresh = _mlp((20, 10, 4), seed=5)
    load_masked_state_dict(fresh, sd)
    assert torch.equal(fresh[0].bias_mask, model[0].bias_mask)


def test_bias_joint_count() -> None:
    # 10x20 weight + 10 bias = 210 entries at 0.5 -> round(105) pruned over both; 4x10 + 4 = 44 -> 22
    model = _mlp((20, 10, 4))
    method = StaticSparse(model, None, sparsity=0.5, allocation="uniform",
                          targets=Targets(params=("weight", "bias"), joint=True))
    pruned = [int((~l.mask).sum()) for l in method.layers]
    assert pruned[0] + pruned[1] == 105 and pruned[2] + pruned[3] == 22


def test_bias_joint_ranks_weights_and_biases_together() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, 5.0], [0.2, 6.0]]))
        model[0].bias.copy_(torch.tensor([7.0, 0.05]))
    method = StaticSparse(model, None, sparsity=0.5, allocation="uniform", score="magnitude",
                          targets=Targets(params=("weight", "bias"), joint=True))
    assert method.layers[0].mask.tolist() == [[False, True], [False, True]]
    assert method.layers[1].mask.tolist() == [True, False]


def test_bias_masks_enforced_through_training() -> None:
    model = _mlp((20, 10, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    method = StaticSparse(model, opt, sparsity=0.6, allocation="uniform", targets={"params": ["weight", "bias"]})
    _steps(model, opt, 5)
    for layer in method.layers:
        assert torch.all(layer.weight.detach()[~layer.mask] == 0)


def test_bias_in_report() -> None:
    model = _mlp((20, 10, 4))
    StaticSparse(model, None, sparsity=0.5, allocation="uniform", targets={"params": ["weight", "bias"]})
    rep = sparsity_report(model, torch.zeros(1, 20))
    rows = {r.name: r for r in rep.layers}
    assert rows["0.bias"].nonzeros == 5 and rows["0.bias"].params == 10 and rows["0.bias"].masked
    assert rep.totals["nonzeros"] == 100 + 5 + 20 + 2
    assert rows["0.bias"].dense_flops is None  # not applicable: FLOPs count the weights' multiply-adds
    assert rep.totals["dense_flops"] == 2 * (200 + 40) and rep.totals["flops_unknown"] == []


def test_bias_target_on_layer_without_bias() -> None:
    with pytest.raises(LayerError, match=r"layer '0' \(Linear\) has no parameter 'bias'"):
        StaticSparse(_mlp(bias=False), None, sparsity=0.5, targets={"params": ["weight", "bias"]})


def test_targets_params_bad_values() -> None:
    with pytest.raises(ConfigError, match="targets.params"):
        Targets(params=())
    with pytest.raises(ConfigError, match="twice"):
        Targets(params=("weight", "weight"))
    with pytest.raises(ConfigError, match="joint"):
        Targets(joint=True)


def test_bias_global_imp_pools_weights_and_biases() -> None:
    model = _mlp((20, 10, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = IMP(model, opt, sparsity=0.2, steps_per_round=2, targets={"params": ["weight", "bias"]})
    _steps(model, opt, 2)
    total = sum(l.mask.numel() for l in method.layers)
    assert sum(int((~l.mask).sum()) for l in method.layers) == num_pruned(0.2, total)


def test_dst_with_bias_targets_keeps_counts() -> None:
    model = _mlp((20, 10, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = SET(model, opt, sparsity=0.5, allocation="uniform", update_interval=2, targets={"params": ["weight", "bias"]})
    counts = [int(l.mask.sum()) for l in method.layers]
    _steps(model, opt, 4)
    assert [int(l.mask.sum()) for l in method.layers] == counts


# ============================================================================ IMP layer rates
def test_imp_layer_rates_half_rate_output() -> None:
    model = _mlp((20, 10, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = IMP(model, opt, sparsity=1 - 0.8 ** 3, fraction=0.2, steps_per_round=1, layer_rates={"2": 0.5})
    _steps(model, opt, 4)  # 3 prunings, then the final round
    hidden, out = method.layers
    assert int((~hidden.mask).sum()) == num_pruned(1 - 0.8 ** 3, 200)
    assert int((~out.mask).sum()) == num_pruned(1 - 0.9 ** 3, 40)
    assert method.layer_level("2", 3) == pytest.approx(1 - 0.9 ** 3)


def test_imp_layer_rates_errors() -> None:
    model = _mlp()
    with pytest.raises(ConfigError, match="not modules"):
        IMP(model, None, sparsity=0.5, steps_per_round=1, layer_rates={"fc9": 0.5})
    assert not [b for b, _ in model.named_buffers()]  # refused before any mask was registered
    with pytest.raises(ConfigError, match="not masked layers"):
        IMP(_mlp(), None, sparsity=0.5, steps_per_round=1, layer_rates={"1": 0.5})  # the ReLU
    with pytest.raises(ConfigError, match="geometric' or 'linear"):
        IMP(_mlp(), None, schedule=[0.2, 0.5], steps_per_round=1, layer_rates={"2": 0.5})
    with pytest.raises(ConfigError, match="below 1"):
        IMP(_mlp(), None, sparsity=0.5, fraction=0.5, steps_per_round=1, layer_rates={"2": 2.0})


# ============================================================================ recipes
def test_recipe_set_by_epsilon_with_bias_targets() -> None:
    from sparseforge.recipes import Recipe

    r = Recipe.from_dict({"name": "set-eps", "model": {"name": "lenet300100"}, "data": {"name": "mnist1d"},
                          "method": {"name": "set", "epsilon": 13, "update_interval": "1ep", "grow_init": "normal",
                                     "sampling": "with_replacement"},
                          "targets": {"params": ["weight", "bias"]}})
    assert r.method["epsilon"] == 13
    with pytest.raises(ConfigError, match="needs 'sparsity'"):
        Recipe.from_dict({"name": "x", "model": {"name": "lenet300100"}, "data": {"name": "mnist1d"},
                          "method": {"name": "set", "update_interval": "1ep"}})


def test_joint_bias_with_epsilon_and_with_replacement() -> None:
    model = _mlp((20, 10, 4))
    method = SET(model, None, epsilon=1, update_interval=5, targets=Targets(params=("weight", "bias"), joint=True))
    # ER densities from the weights' shapes, applied to weight + bias: 0.15 of 210 and 0.35 of 44
    pruned = [int((~l.mask).sum()) for l in method.layers]
    assert pruned[0] + pruned[1] == num_pruned(0.85, 210) and pruned[2] + pruned[3] == num_pruned(0.65, 44)
    assert method.sparsity == pytest.approx(sum(pruned) / 254)
    wr = SET(_mlp((20, 10, 4)), None, epsilon=1, update_interval=5, sampling="with_replacement",
             targets=Targets(params=("weight", "bias"), joint=True))
    kept = [int(l.mask.sum()) for l in wr.layers]
    assert 0 < kept[0] + kept[1] <= round(0.15 * 210) and 0 < kept[2] + kept[3] <= round(0.35 * 44)
    assert wr.sparsity == pytest.approx(1 - sum(kept) / 254)


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(list(GROW_INITS)), st.integers(0, 1000), st.sampled_from(["exact", "with_replacement"]),
       st.floats(0.05, 0.9))
def test_set_invariants_property(grow_init, seed, sampling, zeta) -> None:
    """Per-layer counts are constant across updates, pruned weights stay zero, regrown state starts at zero."""
    model = _mlp((20, 10, 4), seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = SET(model, opt, epsilon=2, update_interval=2, zeta=zeta, grow_init=grow_init, sampling=sampling, seed=seed)
    counts = [int(l.mask.sum()) for l in method.layers]
    _steps(model, opt, 6, seed=seed)
    assert [int(l.mask.sum()) for l in method.layers] == counts
    for layer in method.layers:
        assert torch.all(layer.weight.detach()[~layer.mask] == 0)
        assert torch.all(opt.state[layer.weight]["momentum_buffer"][~layer.mask] == 0)


def test_static_er_by_epsilon_allocation() -> None:
    method = StaticSparse(_mlp((20, 10, 4)), None, allocation={"type": "er", "epsilon": 1})
    assert [int((~l.mask).sum()) for l in method.layers] == [170, 26]
    assert method.sparsity == pytest.approx(196 / 240)
    with pytest.raises(ConfigError, match="sparsity"):
        StaticSparse(_mlp((20, 10, 4)), None, allocation="er")  # neither sparsity nor epsilon


def test_bias_with_nm_pattern_refused() -> None:
    with pytest.raises(LayerError, match=r"0.bias: pattern nm needs a weight with >= 2 dims"):
        StaticSparse(_mlp((16, 8, 4)), None, sparsity="2:4", targets=Targets(params=("weight", "bias"), joint=True))


# ============================================================================ parameter checks without a model
@pytest.mark.parametrize("params,match", [
    ({"sparsity": 0.5, "epsilon": 13}, "not both"),
    ({"epsilon": 0}, "epsilon"),
    ({"epsilon": 13, "allocation": "uniform"}, "allocation 'er' or 'erk'"),
    ({"epsilon": 13, "overrides": {"0": 0.5}}, "overrides"),
    ({"sparsity": 0.5, "grow_init": "ones"}, "grow_init"),
    ({"sparsity": 0.5, "grow_std": float("nan")}, "grow_std"),
    ({"sparsity": 0.5, "grow_divisor": 0}, "grow_divisor"),
    ({"sparsity": 0.5, "sampling": "bernoulli"}, "sampling"),
])
def test_set_validate_params_checks_protocol_parameters(params, match) -> None:
    with pytest.raises(ConfigError, match=match):
        SET.validate_params({"update_interval": 1, **params})


def test_validate_params_accepts_epsilon_without_sparsity() -> None:
    SET.validate_params({"update_interval": 1, "epsilon": 13, "sampling": "with_replacement", "grow_init": "normal"})
    RigL.validate_params({"epsilon": 20, "allocation": "erk", "total_steps": 100})
    IMP.validate_params({"sparsity": 0.9, "steps_per_round": 10, "layer_rates": {"fc3": 0.5}})


def test_epsilon_refuses_overrides_and_nm() -> None:
    with pytest.raises(ConfigError, match="overrides set layers' sparsities"):
        SET(_mlp(), None, epsilon=1, update_interval=1, overrides={"0": 0.5})
    with pytest.raises(ConfigError, match="not both"):
        StaticSparse(_mlp(), None, allocation={"type": "er", "epsilon": 1}, pattern="2:4")


def test_epsilon_sets_target_from_masked_layers() -> None:
    method = StaticSparse(_mlp((20, 10, 4)), None, allocation={"type": "er", "epsilon": 1})
    assert method.target is not None and method.target.sparsity == method.sparsity == pytest.approx(196 / 240)


def test_imp_layer_rates_bad_in_recipe() -> None:
    from sparseforge.recipes import Recipe

    with pytest.raises(ConfigError, match=r"layer_rates\['fc3'\]"):
        Recipe.from_dict({"name": "x", "model": {"name": "lenet300100"}, "data": {"name": "mnist1d"},
                          "method": {"name": "imp", "sparsity": 0.9, "steps_per_round": 10,
                                     "layer_rates": {"fc3": "half"}}})


def test_joint_targets_with_override() -> None:
    model = _mlp((20, 10, 4))
    method = StaticSparse(model, None, sparsity=0.5, allocation="uniform", overrides={"2": 0.25},
                          targets=Targets(params=("weight", "bias"), joint=True))
    # module "2" keeps 44 - round(0.25 * 44) = 33 of its weight + bias together
    assert sum(int(l.mask.sum()) for l in method.layers if l.name == "2") == 33
    assert sum(int(l.mask.sum()) for l in method.layers if l.name == "0") == 210 - 105
