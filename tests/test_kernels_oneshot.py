"""2:4 semi-structured kernels (GPU paths skip cleanly without CUDA) and one-shot N:M magnitude pruning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseforge.core.patterns import is_valid_nm
from sparseforge.errors import ConfigError, LayerError
from sparseforge.kernels import accelerate_2to4, format_decisions, semi_structured_support
from sparseforge.oneshot import prune_nm
from sparseforge.report import sparsity_report

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def two_four(layer: nn.Linear) -> nn.Linear:
    prune_nm(nn.Sequential(layer)).masking.finalize()
    return layer


# ----------------------------------------------------------------------------- one-shot N:M
def test_prune_nm_by_hand_and_finalize() -> None:
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -3.0, 2.0, 0.5], [0.1, 0.2, -0.3, 0.4]]))
    masking = prune_nm(nn.Sequential(layer), "2:4").masking
    assert torch.equal(layer.weight_mask, torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool))
    assert torch.equal(layer.weight, torch.tensor([[0.0, -3.0, 2.0, 0.0], [0.0, 0.0, -0.3, 0.4]]))
    masking.finalize()
    assert not hasattr(layer, "weight_mask")


def test_prune_nm_any_model_with_conv_and_policies() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16, 6), nn.Linear(6, 4))
    with pytest.raises(LayerError, match=r"0.weight: input dimension 3"):
        prune_nm(model, "1:4")
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())  # nothing left behind
    masking = prune_nm(model, "1:4", indivisible="skip").masking
    assert [l.qualname for l in masking.layers] == ["1.weight", "3.weight"]
    assert is_valid_nm(masking.layers[0].canonical(masking.layers[0].mask), 1, 4)
    assert int(model[1].weight_mask.sum()) == 16 * 9 * 2  # 8 inputs = 2 groups keep 1 each, per out x kernel pos
    table = sparsity_report(model, skipped=masking.skipped).table()
    assert "skipped 0.weight: input dimension 3 not divisible by M=4" in table and "skipped 4.weight" in table


@pytest.mark.parametrize("pattern, needle", [("4:4", "N < M"), ("unstructured", "N:M pattern"), ("5:4", "must be <= M")])
def test_prune_nm_bad_pattern(pattern, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        prune_nm(nn.Sequential(nn.Linear(8, 8)), pattern)


# ----------------------------------------------------------------------------- 2:4 kernels
def test_support_reasons_in_order() -> None:
    assert "not nn.Linear" in semi_structured_support(nn.Conv2d(64, 64, 1))
    assert "dtype torch.float32" in semi_structured_support(nn.Linear(64, 64))
    assert "not a multiple" in semi_structured_support(nn.Linear(64, 48).half())
    assert "not 2:4" in semi_structured_support(nn.Linear(64, 64).half())
    layer = two_four(nn.Linear(64, 64)).half()
    assert semi_structured_support(layer, check_device=False) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_cpu_is_simulated_and_require_fails_clearly() -> None:
    model = nn.Sequential(two_four(nn.Linear(64, 64)).half(), nn.Linear(64, 64))
    decisions = accelerate_2to4(model)
    assert [(d.name, d.status) for d in decisions] == [("0", "simulated"), ("1", "simulated")]
    assert decisions[0].reason == "CUDA not available" and "dtype" in decisions[1].reason
    assert "CUDA not available" in format_decisions(decisions)
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.layout == torch.strided
    with pytest.raises(ConfigError, match="CUDA is not available"):
        accelerate_2to4(model, require=True)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="min_speedup"):
        accelerate_2to4(nn.Sequential(), min_speedup=0)
    with pytest.raises(ConfigError, match="batch"):
        accelerate_2to4(nn.Sequential(), batch=0)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_conversion_matches_masked_dense(dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096))
    prune_nm(model, "2:4").masking.finalize()
    model = model.to("cuda", dtype)
    x = torch.randn(1024, 4096, device="cuda", dtype=dtype)
    with torch.no_grad():
        ref = model(x)
    decisions = accelerate_2to4(model, batch=1024, min_speedup=0.0)  # convert whatever is supported
    assert [d.status for d in decisions] == ["converted", "converted"], format_decisions(decisions)
    with torch.no_grad():
        out = model(x)
    assert (out - ref).abs().max() <= 2e-2 * ref.abs().max()


@cuda
def test_gpu_keeps_slower_layer_dense_with_reason() -> None:
    model = nn.Sequential(two_four(nn.Linear(128, 128))).to("cuda", torch.float16)
    decisions = accelerate_2to4(model, batch=1, min_speedup=100.0)
    assert decisions[0].status == "dense" and "not faster" in decisions[0].reason
    assert model[0].weight.layout == torch.strided


@cuda
def test_gpu_unsupported_dtype_is_a_named_skip() -> None:
    model = nn.Sequential(two_four(nn.Linear(128, 128))).to("cuda")
    d = accelerate_2to4(model)[0]
    assert d.status == "dense" and "dtype torch.float32" in d.reason
