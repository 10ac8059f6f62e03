"""Sparse initialisation (Evci et al. 2022): core factors by hand, the methods' init_scale, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.core.init import INIT_SCALES, init_scale_factors
from sparseforge.errors import ConfigError
from sparseforge.methods import build_method

T, F_ = True, False


def test_unit_and_layer_factors_by_hand() -> None:
    # 3 units of a Linear(4 -> 3): kept inputs 1, 4, 0 (an emptied unit counts as one input)
    m = torch.tensor([[T, F_, F_, F_], [T, T, T, T], [F_, F_, F_, F_]])
    assert init_scale_factors(m, "unit").flatten().tolist() == [2.0, 1.0, 2.0]
    assert init_scale_factors(m, "unit").shape == (3, 1)
    assert math.isclose(float(init_scale_factors(m, "layer")), math.sqrt(12 / 5), rel_tol=1e-6)
    assert float(init_scale_factors(m, "dense")) == 1.0


def test_conv_unit_counts_every_kept_input_of_an_output_channel() -> None:
    # Conv2d(2 -> 2, 2x2): fan_in 8; channel 0 keeps 2 (one per input channel), channel 1 keeps 8
    m = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    m[0, 0, 0, 0] = m[0, 1, 1, 1] = True
    m[1] = True
    f = init_scale_factors(m, "unit")
    assert f.shape == (2, 1, 1, 1)
    assert f.flatten().tolist() == [2.0, 1.0]
    assert math.isclose(float(init_scale_factors(m, "layer")), math.sqrt(16 / 10), rel_tol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.floats(0.0, 0.95), st.integers(0, 2**16))
def test_unit_scaling_restores_the_dense_variance_per_unit(out: int, fan_in: int, s: float, seed: int) -> None:
    # after scaling, sum over a unit's kept inputs of w^2 * (fan_in / k) has the dense expectation:
    # equivalently factor^2 * k == fan_in for every unit that keeps anything
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(out, fan_in, generator=g) >= s
    f = init_scale_factors(m, "unit").flatten()
    k = m.sum(1)
    for j in range(out):
        expect = fan_in / max(1, int(k[j]))
        assert math.isclose(float(f[j]) ** 2, expect, rel_tol=1e-5)


def test_bad_mode_and_mask_are_named() -> None:
    with pytest.raises(ConfigError, match=r"mode must be one of \['dense', 'unit', 'layer'\]; got 'fan'"):
        init_scale_factors(torch.ones(2, 2, dtype=torch.bool), "fan")
    with pytest.raises(ConfigError, match=r"mask must be at least 2-D .* got shape \(4,\)"):
        init_scale_factors(torch.ones(4, dtype=torch.bool), "unit")


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Conv1d(10, 6, 3), nn.Flatten(), nn.Linear(6 * 3, 4))


METHOD_ARGS = {
    "static": {"sparsity": 0.8},
    "snip": {"sparsity": 0.8, "data": (torch.randn(4, 12, 5), torch.randint(0, 4, (4,)))},
    "set": {"sparsity": 0.8, "update_interval": 5},
    "rigl": {"sparsity": 0.8, "total_steps": 50},
}


class _Flat(nn.Module):
    # Linear(12 -> 10) over 5 positions, then Conv1d over them: SNIP needs a model that runs
    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        self.seq = seq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.seq[1](self.seq[0](x.transpose(1, 2))).transpose(1, 2)
        return self.seq[4](self.seq[3](self.seq[2](h)))


@pytest.mark.parametrize("method", sorted(METHOD_ARGS))
@pytest.mark.parametrize("mode", INIT_SCALES)
def test_methods_scale_the_kept_initial_weights(method: str, mode: str) -> None:
    ref = build_method(method, _Flat(_model()), None, **METHOD_ARGS[method])  # default: "dense"
    scaled = build_method(method, _Flat(_model()), None, init_scale=mode, **METHOD_ARGS[method])
    for a, b in zip(ref.layers, scaled.layers):
        assert torch.equal(a.mask, b.mask)  # the masks are chosen before the scaling
        k = b.mask.reshape(b.mask.shape[0], -1).sum(1).float()
        fan_in = b.mask[0].numel()
        if mode == "unit":
            factor = (fan_in / k.clamp(min=1)).sqrt().reshape(-1, *[1] * (b.mask.dim() - 1))
        elif mode == "layer":
            factor = math.sqrt(b.mask.numel() / int(b.mask.sum()))
        else:
            factor = 1.0
        torch.testing.assert_close(b.weight.detach(), a.weight.detach() * factor, rtol=1e-6, atol=0)
        assert not b.weight[~b.mask].any()
    if mode == "dense":
        for a, b in zip(ref.layers, scaled.layers):
            assert torch.equal(a.weight, b.weight)


def test_hf_conv1d_is_scaled_per_output_unit() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = nn.Sequential(transformers.pytorch_utils.Conv1D(6, 10))  # stored [in=10, out=6]
    before = model[0].weight.detach().clone()
    method = build_method("static", model, None, sparsity=0.7, allocation="uniform", init_scale="unit")
    mask = method.layers[0].mask  # stored layout [10, 6]: a unit is a column
    factor = (10 / mask.sum(0).float()).sqrt()
    torch.testing.assert_close(model[0].weight.detach(), before * mask * factor, rtol=1e-6, atol=0)


def test_unit_init_restores_the_dense_forward_scale() -> None:
    # the paper's point: with the dense init a 95 %-sparse layer's outputs shrink by about
    # sqrt(density); the sparse init brings them back to the dense layer's scale
    torch.manual_seed(0)
    x = torch.randn(4096, 400)
    dense = nn.Linear(400, 200, bias=False)
    std_dense = float((x @ dense.weight.detach().t()).std())
    stds = {}
    for mode in ("dense", "unit"):
        torch.manual_seed(0)
        layer = nn.Sequential(nn.Linear(400, 200, bias=False))
        build_method("static", layer, None, sparsity=0.95, allocation="uniform", init_scale=mode)
        stds[mode] = float((x @ layer[0].weight.detach().t()).std())
    assert math.isclose(stds["dense"] / std_dense, math.sqrt(0.05), rel_tol=0.1)
    assert math.isclose(stds["unit"] / std_dense, 1.0, rel_tol=0.1)


@pytest.mark.parametrize("method", ["static", "set", "rigl"])
def test_bad_init_scale_is_named(method: str) -> None:
    args = {k: v for k, v in METHOD_ARGS[method].items()}
    with pytest.raises(ConfigError, match=r"init_scale must be one of \['dense', 'unit', 'layer'\]; got 'he'"):
        build_method(method, _model(), None, init_scale="he", **args)


def test_layers_without_a_fan_in_init_are_refused_before_any_weight_changes() -> None:
    from sparseforge.errors import LayerError
    from sparseforge.masking import Targets

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Embedding(20, 8))  # Embedding: N(0, 1), no fan-in
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(LayerError, match=r"1.weight: init_scale='unit' rescales a fan-in .* this layer is a Embedding"):
        build_method("static", model, None, sparsity=0.5, allocation="uniform", init_scale="unit",
                     targets=Targets(types=(nn.Linear, nn.Embedding)))
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())  # no mask left behind
    for p, b in zip(model.parameters(), before):  # refused before any mask or scaling touched a weight
        assert torch.equal(p, b)


def test_methods_without_an_initial_sparse_mask_refuse_init_scale() -> None:
    # GMP and IMP start dense: a sparse-fan-in rescaling has nothing to act on
    with pytest.raises(ConfigError, match="init_scale"):
        build_method("gmp", _model(), None, sparsity=0.5, begin=0, end=10, init_scale="unit")
