"""Sparsity survives LoRA fine-tuning, merging and int8/int4 quantization (USER-PAIN-POINTS 16)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge import StaticSparse, finalize
from sparseforge.errors import ConfigError, LayerError
from sparseforge.export import quantize_tensor, quantize_weights
from sparseforge.lora import add_lora, lora_layers, lora_parameters, merge_lora


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _pruned_24(seed: int = 0) -> nn.Module:
    model = _mlp(seed)
    StaticSparse(model, sparsity="2:4", score="magnitude")
    return finalize(model)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _is_exact_24(w: torch.Tensor) -> bool:
    return bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all())


# ------------------------------------------------------------------------------- quantization


def test_quantize_hand_computed_int8_per_channel():
    w = torch.tensor([[0.0, 0.25, -1.0, 0.001], [0.25, 0.0, 0.0, -0.0625]])
    q = quantize_tensor(w, bits=8)
    # row 0: scale 1/127 -> 0.25*127 = 31.75 -> 32; 0.001*127 = 0.127 rounds to 0 but is kept -> 1
    # row 1: scale 0.25/127 -> 127; -0.0625/scale = -31.75 -> -32
    assert q.codes.tolist() == [[0, 32, -127, 1], [127, 0, 0, -32]]
    assert torch.allclose(q.scales.squeeze(1), torch.tensor([1 / 127, 0.25 / 127]))
    assert q.bumped == 1 and q.group_size == 4
    assert torch.equal(q.dequantize() != 0, w != 0)
    plain = quantize_tensor(w, bits=8, keep_nonzeros=False)
    assert plain.codes[0, 3] == 0 and plain.bumped == 0  # what plain rounding does to a small kept weight


def test_quantize_hand_computed_int4_groups():
    w = torch.tensor([[0.0, 0.25, -1.0, 0.001], [0.25, 0.0, 0.0, -0.0625]])
    q = quantize_tensor(w, bits=4, group_size=2)
    # groups [0, .25] [-1, .001] | [.25, 0] [0, -.0625]; q_max 7, each group's absmax -> 7
    assert q.codes.tolist() == [[0, 7, -7, 1], [7, 0, 0, -7]]
    assert torch.allclose(q.scales, torch.tensor([[0.25 / 7, 1 / 7], [0.25 / 7, 0.0625 / 7]]))
    assert q.packed_bytes == (8 * 4 + 7) // 8 + 4 * 4


@settings(max_examples=60, deadline=None)
@given(out=st.integers(1, 6), groups=st.integers(1, 4), g=st.sampled_from([1, 2, 4, 8]), bits=st.sampled_from([2, 4, 8]),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_quantize_keeps_the_nonzero_pattern_and_bounds_the_error(out, groups, g, bits, density, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, groups * g, generator=gen) * torch.rand(out, 1, generator=gen).mul(10).exp()
    w = w * (torch.rand(w.shape, generator=gen) < density)
    q = quantize_tensor(w, bits=bits, group_size=g)
    w_hat = q.dequantize()
    assert torch.equal(w_hat != 0, w != 0)
    assert int(q.codes.abs().max()) <= 2 ** (bits - 1) - 1
    scale = q.scales.repeat_interleave(g, dim=1)
    err = (w_hat - w).abs()
    lost = (torch.round(w / scale) == 0) & (w != 0)
    assert int(lost.sum()) == q.bumped
    assert bool((err[~lost] <= scale[~lost] / 2 * (1 + 1e-5)).all())
    assert bool((err[lost] < scale[lost]).all())


def test_quantize_weights_writes_the_dequantized_values_per_output_channel_of_hf_conv1d():
    transformers = pytest.importorskip("transformers")
    conv = transformers.pytorch_utils.Conv1D(6, 8)  # weight [in=8, out=6]
    model = nn.Sequential(conv)
    with torch.no_grad():
        conv.weight[::2] = 0
    before = conv.weight.detach().clone()
    q = quantize_weights(model, bits=8).weights["0"]
    assert q.codes.shape == (6, 8) and q.scales.shape == (6, 1)  # canonical [out, in]: one scale per output
    assert torch.equal(conv.weight.detach(), q.dequantize().t())
    assert torch.equal(conv.weight != 0, before != 0)


def test_quantize_bad_input():
    w = torch.randn(4, 8)
    for bits in (1, 9, True, 8.0):
        with pytest.raises(ConfigError, match="bits must be one of"):
            quantize_tensor(w, bits=bits)
    for gs in (0, -2, 2.5, True):
        with pytest.raises(ConfigError, match="group_size must be a positive integer"):
            quantize_tensor(w, group_size=gs)
    with pytest.raises(LayerError, match=r"0.weight: group_size 3 does not divide its input size 16"):
        quantize_weights(_mlp(), bits=4, group_size=3)
    bad = w.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(LayerError, match="fc: weight has NaN"):
        quantize_tensor(bad, name="fc")


# ------------------------------------------------------------------------------------- LoRA


def test_lora_starts_as_the_base_model_and_trains_only_the_adapters():
    model = _pruned_24()
    x = torch.randn(32, 16)
    ref = model(x).detach()
    base = _weights(model)
    adapters = add_lora(model, rank=4, alpha=8).adapters
    assert sorted(adapters) == ["0", "2", "4"] and lora_layers(model).keys() == adapters.keys()
    assert torch.equal(model(x), ref)  # B starts at zero
    assert {id(p) for p in lora_parameters(model)} == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(a.scale == 2.0 for a in adapters.values())
    originals = {n: m.parametrizations.weight.original for n, m in model.named_modules() if n in adapters}
    assert all(torch.equal(originals[n], base[n]) and not originals[n].requires_grad for n in adapters)


def test_prune_lora_merge_quantize_keeps_the_24_pattern_exactly():
    """The pain point's test: prune 2:4, fine-tune with LoRA, merge, quantize int8 and int4."""
    model = _pruned_24()
    pattern = {n: w != 0 for n, w in _weights(model).items()}
    assert all(_is_exact_24(w) for w in _weights(model).values())
    torch.manual_seed(1)
    x, target = torch.randn(256, 16), torch.randn(256, 4)
    add_lora(model, rank=4, alpha=8)
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2, weight_decay=0.01)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    # the adapter's own product is dense: an unmasked merge would fill the pruned positions
    for a in lora_layers(model).values():
        assert bool(((a.B @ a.A).reshape(a.mask.shape)[~a.mask] != 0).any())
    adapted = model(x).detach()
    merge_lora(model)
    assert not lora_layers(model)
    assert all(isinstance(m.weight, nn.Parameter) for m in model if isinstance(m, nn.Linear))
    assert torch.allclose(model(x), adapted, atol=1e-6)
    merged = _weights(model)
    assert all(torch.equal(merged[n] != 0, pattern[n]) for n in pattern)
    for bits, group in ((8, None), (4, 8)):
        q_model = copy.deepcopy(model)
        quantize_weights(q_model, bits=bits, group_size=group)
        for n, w in _weights(q_model).items():
            assert torch.equal(w != 0, pattern[n]), (bits, n)
            assert _is_exact_24(w)
        assert F.mse_loss(q_model(x), target) < losses[0]


def test_lora_on_a_masked_model_uses_the_mask_buffer():
    model = _mlp()
    StaticSparse(model, sparsity=0.75, seed=0)  # masks stay as buffers (not finalized)
    first = model[0]
    kept = first.weight_mask.nonzero()[0]
    with torch.no_grad():
        first.weight[tuple(kept)] = 0.0  # a kept weight that happens to be zero
    add_lora(model, rank=2)
    a = lora_layers(model)["0"]
    assert torch.equal(a.mask, first.weight_mask)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_()
    merge_lora(model)
    assert first.weight[tuple(kept)] != 0  # adapted: it is inside the mask
    assert torch.equal(first.weight != 0, first.weight_mask)


def test_lora_on_hf_conv1d_and_conv2d():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = nn.ModuleDict({"c": transformers.pytorch_utils.Conv1D(6, 8), "k": nn.Conv2d(3, 4, 3)})
    with torch.no_grad():
        model["c"].weight[:, ::2] = 0  # HF layout [in, out]: zero half of the output columns
        model["k"].weight[:, 0] = 0
    zeros = {k: model[k].weight.detach() == 0 for k in model}
    adapters = add_lora(model, rank=2).adapters
    assert adapters["c"].A.shape == (2, 8) and adapters["c"].B.shape == (6, 2)
    assert adapters["k"].A.shape == (2, 27) and adapters["k"].B.shape == (4, 2)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_()
    x = torch.randn(5, 8)
    img = torch.randn(2, 3, 6, 6)
    out_c, out_k = model["c"](x).detach(), model["k"](img).detach()
    merge_lora(model)
    assert torch.allclose(model["c"](x), out_c, atol=1e-5) and torch.allclose(model["k"](img), out_k, atol=1e-5)
    for k in model:
        assert torch.equal(model[k].weight == 0, zeros[k])


def test_lora_state_dict_round_trip():
    model = _pruned_24()
    add_lora(model, rank=4)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_()
    sd = copy.deepcopy(model.state_dict())
    fresh = _pruned_24(seed=5)
    add_lora(fresh, rank=4)
    fresh.load_state_dict(sd)
    x = torch.randn(8, 16)
    assert torch.equal(fresh(x), model(x))
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(lora_layers(fresh).values(), lora_layers(model).values()))


def test_lora_bad_input():
    for rank in (0, -1, 2.0, True):
        with pytest.raises(ConfigError, match="rank must be (an integer )?>= 1"):
            add_lora(_mlp(), rank=rank)
    for alpha in (0, -1.0, "8"):
        with pytest.raises(ConfigError, match="alpha must be (a number )?> 0"):
            add_lora(_mlp(), alpha=alpha)
    with pytest.raises(LayerError, match=r"4.weight: rank 5 exceeds min\(fan_out=4, fan_in=32\)"):
        add_lora(_mlp(), rank=5)
    model = _mlp()
    add_lora(model, rank=2)
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        add_lora(model, rank=2)
    with pytest.raises(ConfigError, match="has no LoRA adapters to merge"):
        merge_lora(_mlp())
    with pytest.raises(ConfigError, match="matches no module"):
        add_lora(_mlp(), targets={"include": ["nope"]})
    masked = _mlp()
    StaticSparse(masked, sparsity=0.5)
    with torch.no_grad():
        masked[2].weight.add_(1.0)  # revive pruned weights behind the masking's back
    with pytest.raises(LayerError, match="2.weight: weights outside its mask are not zero"):
        add_lora(masked)
    assert not lora_layers(masked)  # nothing half-added
