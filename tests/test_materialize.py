"""Materialized layers: every kernel path reproduces the masked dense layer; decisions, fallbacks, bad input."""

from __future__ import annotations

import copy
import io
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.errors import ConfigError, LayerError
from sparseforge.export import load_compressed, save_compressed
from sparseforge.export.materialize import (
    SparseConv2d,
    SparseLinear,
    format_materialize_decisions,
    layer_candidates,
    materialize,
)
from sparseforge.kernels import cpu_sparse
from sparseforge.report import report_for_path, sparsity_report

SPARSE_KERNELS = ["custom", "torch-csr", "torch-bsr"]
BF16_ONE_ROUNDING = 2**-8 + 1e-6  # bf16 unit roundoff, relative to the largest output


@pytest.fixture(scope="session")
def kernel_built():
    """Build the C++ extension once per session; skip only if no compiler exists at all."""
    if cpu_sparse.load_kernel() is None:
        reason = cpu_sparse.kernel_unavailable_reason()
        if shutil.which("c++") is None and shutil.which("g++") is None:
            pytest.skip(f"no C++ compiler: {reason}")
        pytest.fail(f"a compiler exists but the kernel did not build: {reason}")
    return True


def _masked_linear(in_f: int, out_f: int, sparsity: float, *, seed: int = 0, bias: bool = True) -> nn.Linear:
    """A Linear with a ``weight_mask`` at ``sparsity`` (exact count), one empty and one full row when possible."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g))
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=g))
    n = in_f * out_f
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=g)[: round(sparsity * n)]] = False
    keep = keep.view(out_f, in_f)
    if 0 < sparsity < 1 and out_f >= 3:
        keep[1] = False  # an empty row: output = bias only
        keep[2] = True  # a fully dense row
    lin.register_buffer("weight_mask", keep)
    with torch.no_grad():
        lin.weight.mul_(keep)
    return lin


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().float(), ref.detach().float()
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------------------ hand-computed
def test_hand_computed_csr_storage_and_output(kernel_built):
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]]))
        lin.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    sl = SparseLinear.from_dense(lin, kernel="custom")
    assert sl.crow_indices.tolist() == [0, 2, 2, 3]
    assert sl.col_indices.dtype == torch.int16 and sl.col_indices.tolist() == [0, 2, 1]
    assert sl.values.tolist() == [1.0, 2.0, 3.0]
    x = torch.tensor([[1.0, 1.0, 1.0], [2.0, -1.0, 0.5]])
    # row 0: 1*x0 + 2*x2 + 0.5 ; row 1: bias only ; row 2: 3*x1
    expected = torch.tensor([[3.5, -1.0, 3.0], [3.5, -1.0, -3.0]])
    assert torch.equal(sl(x), expected)
    assert torch.equal(sl(x[:1]), expected[:1])  # batch 1 takes the SpMV path
    assert torch.equal(sl.dense_weight(), lin.weight.detach())


def test_uint16_columns_reach_65535(kernel_built):
    """Columns above 32767 must be read as unsigned (int16 storage of uint16 indices)."""
    lin = nn.Linear(40000, 2, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 39999] = 2.0
        lin.weight[1, 32768] = -1.0
    sl = SparseLinear.from_dense(lin, kernel="custom")
    x = torch.arange(40000, dtype=torch.float32).unsqueeze(0).repeat(2, 1)
    assert sl(x).tolist() == [[2 * 39999.0, -32768.0]] * 2
    assert sl(x[:1]).tolist() == [[2 * 39999.0, -32768.0]]


# ------------------------------------------------------------------------------ every path
@pytest.mark.parametrize("kernel", SPARSE_KERNELS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99])
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_forced_linear_matches_masked_dense_fp32(kernel, sparsity, batch, kernel_built):
    lin = _masked_linear(37, 23, sparsity, seed=batch)
    model = nn.Sequential(lin)
    result = materialize(model, kernel=kernel)
    mat, dec = result.model, result.layers
    assert dec[0].status == "materialized" and dec[0].kernel == kernel
    assert isinstance(mat[0], SparseLinear)
    x = torch.randn(batch, 37)
    ref = F.linear(x, lin.weight * lin.weight_mask, lin.bias)
    assert _rel_err(mat(x), ref) <= 1e-5
    # leading dims (tokens of a sequence) are kept
    x3 = torch.randn(2, batch, 37)
    assert mat(x3).shape == (2, batch, 23)
    assert _rel_err(mat(x3), F.linear(x3, lin.weight, lin.bias)) <= 1e-5


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99])
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_custom_bf16_matches_dense_bf16(sparsity, batch, kernel_built):
    lin = _masked_linear(37, 23, sparsity, seed=batch).to(torch.bfloat16)
    result = materialize(nn.Sequential(lin), kernel="custom", dtype=torch.bfloat16)
    mat, dec = result.model, result.layers
    assert dec[0].status == "materialized"
    x = torch.randn(batch, 37).to(torch.bfloat16)
    y = mat(x)
    assert y.dtype == torch.bfloat16
    # the kernel accumulates in fp32 and rounds once: within one bf16 rounding (unit roundoff
    # 2^-8, plus fp32 summation-order noise) of the fp32 product of the same bf16 weights and inputs
    ref32 = F.linear(x.float(), lin.weight.float(), lin.bias.float())
    assert _rel_err(y, ref32) <= BF16_ONE_ROUNDING
    assert _rel_err(y, F.linear(x, lin.weight, lin.bias)) <= 2e-2


def _block_linear(out_f: int, in_f: int, block: tuple[int, int], sparsity: float, seed: int = 0) -> nn.Linear:
    from sparseforge.core.patterns import Block

    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g))
    keep = Block(*block).mask(torch.rand(out_f, in_f, generator=g), sparsity).to(torch.bool)
    lin.register_buffer("weight_mask", keep)
    with torch.no_grad():
        lin.weight.mul_(keep)
    return lin


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("block", [(8, 8), (16, 4), (32, 32)])
def test_forced_custom_bsr_matches_masked_dense(dtype, batch, block, kernel_built):
    lin = _block_linear(64, 96, block, 0.5, seed=batch)
    result = materialize(nn.Sequential(lin), kernel="custom-bsr", dtype=dtype, block_sizes=[block])
    mat, dec = result.model, result.layers
    assert dec[0].status == "materialized" and mat[0].block_size == block
    x = torch.randn(batch, 96)
    if dtype == "fp32":
        assert _rel_err(mat(x), F.linear(x, lin.weight, lin.bias)) <= 1e-5
    else:
        xb = x.bfloat16()
        ref = F.linear(xb.float(), lin.weight.bfloat16().float(), lin.bias.bfloat16().float())
        y = mat(xb)
        assert y.dtype == torch.bfloat16 and _rel_err(y, ref) <= BF16_ONE_ROUNDING
    assert torch.equal(mat[0].dense_weight(), (lin.weight * lin.weight_mask).to(mat[0].dtype))


def test_custom_bsr_needs_block_rows_multiple_of_8(kernel_built):
    dec = materialize(nn.Sequential(_masked_linear(37, 23, 0.5)), kernel="custom-bsr").layers
    assert dec[0].status == "dense" and "multiple of 8" in dec[0].reason
    conv = nn.Conv2d(8, 8, 1)
    dec = materialize(nn.Sequential(conv), kernel="custom-bsr").layers
    assert dec[0].status == "dense" and "Linear layers only" in dec[0].reason


@pytest.mark.parametrize("kernel", ["torch-csr", "torch-bsr"])
def test_torch_kernels_refuse_bf16_with_reason(kernel, kernel_built):
    lin = _masked_linear(32, 32, 0.9).to(torch.bfloat16)
    result = materialize(nn.Sequential(lin), kernel=kernel, dtype="bf16")
    mat, dec = result.model, result.layers
    assert dec[0].status == "dense" and "bfloat16" in dec[0].reason
    assert isinstance(mat[0], nn.Linear)


@pytest.mark.parametrize("kernel", SPARSE_KERNELS)
@pytest.mark.parametrize("batch", [1, 3])
def test_forced_conv_matches_masked_dense(kernel, batch, kernel_built):
    g = torch.Generator().manual_seed(batch)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    keep = torch.rand(conv.weight.shape, generator=g) > 0.7
    conv.register_buffer("weight_mask", keep)
    with torch.no_grad():
        conv.weight.mul_(keep)
    result = materialize(nn.Sequential(conv), kernel=kernel)
    mat, dec = result.model, result.layers
    assert dec[0].status == "materialized" and isinstance(mat[0], SparseConv2d)
    x = torch.randn(batch, 3, 9, 7)
    ref = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    assert mat(x).shape == ref.shape
    assert _rel_err(mat(x), ref) <= 1e-5
    if kernel == "custom":
        mb = materialize(nn.Sequential(conv), kernel=kernel, dtype="bf16").model
        xb = x.bfloat16()
        assert _rel_err(mb(xb), F.conv2d(xb.float(), conv.weight.bfloat16().float(), conv.bias.bfloat16().float(),
                                         stride=2, padding=1)) <= BF16_ONE_ROUNDING


def test_grouped_conv_stays_dense_with_reason(kernel_built):
    conv = nn.Conv2d(4, 4, 3, groups=2)
    with torch.no_grad():
        conv.weight[:, :, 0] = 0
    dec = materialize(nn.Sequential(conv), kernel="custom").layers
    assert dec[0].status == "dense" and "groups=2" in dec[0].reason
    with pytest.raises(LayerError, match="groups=2"):
        materialize(nn.Sequential(conv), kernel="custom", strict=True)


@settings(max_examples=15, deadline=None)
@given(in_f=st.integers(1, 70), out_f=st.integers(1, 40), batch=st.integers(1, 40),
       sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_property_custom_equals_dense(in_f, out_f, batch, sparsity, seed):
    if cpu_sparse.load_kernel() is None:
        pytest.skip(cpu_sparse.kernel_unavailable_reason())
    lin = _masked_linear(in_f, out_f, sparsity, seed=seed)
    sl = SparseLinear.from_dense(lin, kernel="custom")
    x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(seed))
    ref = F.linear(x, lin.weight, lin.bias).detach()
    torch.testing.assert_close(sl(x), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()) + 1e-7)
    assert sl.nnz == int(lin.weight_mask.sum())


def test_custom_kernel_with_two_threads(kernel_built):
    """The OpenMP paths split rows across threads (blocks of 16 rows; here 16 * 3 + 5 rows)."""
    lin = _masked_linear(70, 53, 0.8)
    sl = SparseLinear.from_dense(lin, kernel="custom")
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for batch in (1, 17, 70):
            x = torch.randn(batch, 70)
            assert _rel_err(sl(x), F.linear(x, lin.weight, lin.bias)) <= 1e-5
    finally:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------ decisions
def test_auto_converts_only_when_faster_and_says_why(kernel_built):
    model = nn.Sequential(_masked_linear(64, 48, 0.9), nn.ReLU(), _masked_linear(48, 16, 0.0))
    x = torch.randn(5, 64)
    # an impossible requirement keeps every layer dense, with the measured numbers
    result = materialize(model, min_speedup=1e9, batch_sizes=(1, 4), rounds=2, budget_s=0.02)
    kept, dec = result.model, result.layers
    assert [d.status for d in dec] == ["dense", "dense"]
    assert dec[0].reason.startswith("not faster") and set(dec[0].speedup) == {1, 4}
    assert set(dec[0].times_ms) >= {"dense", "custom", "torch-csr"}
    assert dec[1].reason == "no zeros to exploit (sparsity 0)"
    assert torch.equal(kept(x), model(x))
    # a trivial requirement converts the sparse layer with the kernel of best worst-case speedup
    result = materialize(model, min_speedup=1e-9, batch_sizes=(1, 4), rounds=2, budget_s=0.02)
    mat, dec = result.model, result.layers
    d = dec[0]
    assert d.status == "materialized" and d.kernel in SPARSE_KERNELS
    worst = {k: min(d.times_ms["dense"][b] / d.times_ms[k][b] for b in (1, 4)) for k in d.times_ms if k != "dense"}
    assert worst[d.kernel] == max(worst.values())
    assert d.max_rel_err <= 1e-5
    assert _rel_err(mat(x), model(x)) <= 1e-5
    table = format_materialize_decisions(dec)
    assert "materialized" in table and "1 of 2 layer(s) materialized" in table
    assert dec[0].to_dict()["speedup"].keys() == {"1", "4"}


def test_block_sparse_weight_offers_bsr_unstructured_does_not():
    lin = nn.Linear(64, 64, bias=False)
    blocks = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    keep = blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)
    with torch.no_grad():
        lin.weight.mul_(keep)
    cands, rejected, _ = layer_candidates(lin, torch.float32)
    assert cands["torch-bsr"] == {"block_size": (16, 16)}  # 32x32 blocks would hold zeros
    if cpu_sparse.load_kernel() is not None:
        assert cands["custom-bsr"] == {"block_size": (16, 16)}
    scattered = _masked_linear(64, 64, 0.9)
    cands, rejected, _ = layer_candidates(scattered, torch.float32)
    assert "torch-bsr" not in cands and "not block-sparse" in rejected["torch-bsr"]
    assert "custom-bsr" not in cands


def test_conv_needs_example_input_in_auto_mode(kernel_built):
    conv = nn.Conv2d(2, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight[:, :, 1] = 0
    model = nn.Sequential(conv, nn.Flatten(), _masked_linear(4 * 6 * 6, 3, 0.8))
    dec = materialize(model, batch_sizes=(2,), rounds=1, budget_s=0.01).layers
    assert dec[0].status == "dense" and "example_inputs" in dec[0].reason
    x = torch.randn(1, 2, 6, 6)
    result = materialize(model, batch_sizes=(2,), rounds=1, budget_s=0.01, example_inputs=x, min_speedup=1e-9)
    mat, dec = result.model, result.layers
    assert dec[0].status == "materialized" and dec[0].times_ms["dense"].keys() == {2}
    assert _rel_err(mat(x), model(x)) <= 1e-5


# ------------------------------------------------------------------------------ fallbacks
def test_no_cpp_env_falls_back_with_reason(monkeypatch, kernel_built):
    monkeypatch.setenv("SPARSEFORGE_NO_CPP", "1")
    assert cpu_sparse.load_kernel() is None
    model = nn.Sequential(_masked_linear(32, 32, 0.9))
    dec = materialize(model, kernel="custom").layers
    assert dec[0].status == "dense" and "SPARSEFORGE_NO_CPP=1" in dec[0].reason
    with pytest.raises(LayerError, match="SPARSEFORGE_NO_CPP"):
        materialize(model, kernel="custom", strict=True)
    dec = materialize(model, min_speedup=1e-9, batch_sizes=(2,), rounds=1, budget_s=0.01).layers
    assert dec[0].kernel in ("torch-csr",) and "SPARSEFORGE_NO_CPP" in dec[0].rejected["custom"]


def test_build_failure_falls_back_with_reason(monkeypatch):
    def broken_build():
        raise RuntimeError("'c++' not found on PATH (install a C++ compiler (e.g. apt-get install g++))")

    monkeypatch.setattr(cpu_sparse, "_state", {})
    monkeypatch.setattr(cpu_sparse, "_build", broken_build)
    assert cpu_sparse.load_kernel() is None
    assert "could not be built" in cpu_sparse.kernel_unavailable_reason()
    dec = materialize(nn.Sequential(_masked_linear(16, 16, 0.9)), kernel="custom").layers
    assert dec[0].status == "dense" and "not found on PATH" in dec[0].reason


# ------------------------------------------------------------------------------ artefacts
def test_deepcopy_pickle_save_and_state_dict(tmp_path: Path, kernel_built):
    model = nn.Sequential(_masked_linear(30, 20, 0.8), nn.ReLU(), _masked_linear(20, 10, 0.8))
    mat = materialize(model, kernel="custom").model
    mat[2] = materialize(nn.Sequential(model[2]), kernel="torch-csr").model[0]
    x = torch.randn(4, 30)
    y = mat(x)
    assert torch.equal(copy.deepcopy(mat)(x), y)
    assert torch.equal(pickle.loads(pickle.dumps(mat))(x), y)
    buf = io.BytesIO()
    torch.save(mat.state_dict(), buf)
    other = copy.deepcopy(mat)
    for b in other.buffers():
        b.zero_() if b.is_floating_point() else None
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(other(x), y)


def test_torch_compile_runs(kernel_built):
    model = nn.Sequential(_masked_linear(30, 20, 0.8), nn.ReLU(), _masked_linear(20, 10, 0.8))
    mat = materialize(model, kernel="custom").model
    mat[2] = materialize(nn.Sequential(model[2]), kernel="torch-csr").model[0]
    x = torch.randn(4, 30)
    # aot_eager traces through the custom op's fake implementation (what inductor needs) without
    # spending a minute compiling C++; the torch-csr layer runs eagerly (torch.compiler.disable)
    compiled = torch.compile(mat, backend="aot_eager")
    assert _rel_err(compiled(x), model(x)) <= 1e-5
    blk = nn.Sequential(_block_linear(16, 24, (8, 8), 0.5))
    mb = materialize(blk, kernel="custom-bsr").model
    xb = torch.randn(3, 24)
    assert _rel_err(torch.compile(mb, backend="aot_eager")(xb), blk(xb)) <= 1e-5


def test_report_labels_materialized_layers(kernel_built):
    model = nn.Sequential(_masked_linear(30, 20, 0.75), nn.ReLU(), nn.Linear(20, 10))
    mat = materialize(model, kernel="custom", targets={"include": ["0"]}).model
    rep = sparsity_report(mat, torch.randn(2, 30))
    row = rep.layer("0")
    assert row.storage == "materialized (custom)" and row.nonzeros == int(model[0].weight_mask.sum())
    assert row.dense_flops == 2 * 600 and row.sparse_flops == 2 * row.nonzeros
    assert rep.layer("2").storage == "simulated"
    assert rep.totals["total_params"] == sum(p.numel() for p in model.parameters())
    text = rep.table()
    assert "materialized (custom)" in text and "1 of 2 layer(s) materialized" in text


def test_report_for_path_reads_compressed_checkpoint(tmp_path: Path):
    model = nn.Sequential(_masked_linear(64, 64, 0.9), nn.ReLU(), nn.Linear(64, 4))
    info = save_compressed(model, tmp_path / "m.safetensors")
    rep = report_for_path(tmp_path / "m.safetensors")
    assert rep.mode == "materialized"
    assert rep.layer("0.weight").nonzeros == int(model[0].weight_mask.sum())
    assert rep.totals["file_bytes"] == info.file_bytes and "compressed checkpoint" in rep.table()
    fresh = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    load_compressed(fresh, tmp_path / "m.safetensors", strict=False)
    x = torch.randn(2, 64)
    assert torch.equal(fresh(x), model(x))


# ------------------------------------------------------------------------------ bad input
def test_bad_arguments_raise_clear_errors():
    model = nn.Sequential(_masked_linear(8, 8, 0.5))
    with pytest.raises(ConfigError, match="must be a torch.nn.Module; got dict"):
        materialize({"weight": torch.zeros(2, 2)})
    with pytest.raises(ConfigError, match="dtype must be torch.float32 or torch.bfloat16"):
        materialize(model, dtype=torch.float16)
    with pytest.raises(ConfigError, match="dtype must be one of"):
        materialize(model, dtype="fp64")
    with pytest.raises(ConfigError, match="kernel must be 'auto' or one of"):
        materialize(model, kernel="mkl")
    with pytest.raises(ConfigError, match="batch_sizes entry must be >= 1"):
        materialize(model, batch_sizes=(0,))
    with pytest.raises(ConfigError, match="min_speedup must be (a number )?> 0"):
        materialize(model, min_speedup=-1)
    with pytest.warns(DeprecationWarning, match="layers="), \
            pytest.raises(ConfigError, match=r"layers \['nope'\] are not"):
        materialize(model, layers=["nope"])
    with pytest.raises(ConfigError, match="targets.include entry 'nope' matches no module"):
        materialize(model, targets={"include": ["nope"]})
    with pytest.raises(ConfigError, match="pass targets= only"):
        materialize(model, targets={"include": ["0"]}, layers=["0"])
    with pytest.raises(ConfigError, match="block_sizes entries"):
        materialize(model, block_sizes=[(0, 4)])


def test_bad_layers_raise_or_stay_dense(kernel_built):
    lin = nn.Linear(8, 4)
    lin.register_buffer("weight_mask", torch.ones(4, 9, dtype=torch.bool))
    with pytest.raises(LayerError, match=r"mask shape \(4, 9\) != weight shape \(4, 8\)"):
        materialize(nn.Sequential(lin), kernel="custom")
    double = nn.Sequential(_masked_linear(8, 4, 0.5).double())
    dec = materialize(double, kernel="custom").layers
    assert dec[0].status == "dense" and "torch.float64 not supported" in dec[0].reason
    sl = SparseLinear.from_dense(_masked_linear(8, 4, 0.5), kernel="custom")
    with pytest.raises(LayerError, match=r"expects inputs \[\.\.\., 8\]; got \(2, 7\)"):
        sl(torch.randn(2, 7))
    with pytest.raises(ConfigError, match="kernel must be one of"):
        SparseLinear.from_dense(_masked_linear(8, 4, 0.5), kernel="dense")


def test_bare_layer_and_converted_values(kernel_built):
    lin = _masked_linear(12, 6, 0.5)
    result = materialize(lin, kernel="custom")
    sl, dec = result.model, result.layers
    assert isinstance(sl, SparseLinear) and dec[0].name == ""
    x = torch.randn(2, 12)
    assert _rel_err(sl(x), lin(x)) <= 1e-5
    with pytest.raises(LayerError, match="materialize the dense model again with dtype"):
        copy.deepcopy(sl).double()(x.double())


def test_cli_materialize_rejects_non_checkpoint(tmp_path: Path, capsys):
    from sparseforge.cli import main

    bad = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, bad)
    assert main(["materialize", str(bad)]) == 2
    assert "not a sparseforge training checkpoint" in capsys.readouterr().err


def test_inference_suite_quick(tmp_path: Path, kernel_built):
    """The suite runs end to end on a tiny MLP and writes results with provenance and load average."""
    import json

    from sparseforge.bench import list_suites, run_suite

    assert "inference" in list_suites()
    run_suite("inference", ["--quick", "--no-deepsparse", "--no-cnn", "--patterns", "90%", "--threads", "1",
                            "--out", str(tmp_path)])
    data = json.loads((tmp_path / "inference.json").read_text())
    assert data["provenance"]["command"].startswith("sparseforge bench inference")
    assert len(data["load_average_before"]) == 3
    cell = data["results"][0]["batches"]["1"]
    assert {"torch fp32", "torch bf16", "sparseforge fp32", "sparseforge bf16"} <= set(cell["ms"])
    assert cell["max_rel_err_vs_masked_fp32"]["sparseforge fp32"] <= 1e-5
    assert "| mlp 90% | 1 |" in (tmp_path / "inference.md").read_text()


def test_cli_materialize_end_to_end(tmp_path: Path, capsys, kernel_built):
    """A run folder (2 training steps on MNIST-1D) -> a materialized model folder that reloads without
    pickle or the recipe's classes and reproduces the run's outputs; --out never replaces silently."""
    from sparseforge.cli import main
    from sparseforge.export import load_materialized, read_materialized_description
    from sparseforge.masking import load_masked_state_dict
    from sparseforge.models import build_model
    from sparseforge.recipes import Recipe
    from sparseforge.train import Trainer

    recipe = Recipe.from_dict({"name": "t", "epochs": 1, "seed": 0, "model": {"name": "mlp1d", "hidden": [64, 64]},
                               "data": {"name": "mnist1d", "batch_size": 32},
                               "optimizer": {"name": "sgd", "lr": 0.05}, "lr_schedule": {"name": "constant"},
                               "method": {"name": "static", "sparsity": 0.8}})
    run = tmp_path / "run"
    Trainer(recipe, run, progress=False, max_steps=2).fit()
    out = tmp_path / "fast" / "model"
    assert main(["materialize", str(run), "--kernel", "custom", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "materialized  custom" in printed and "load_materialized" in printed
    assert sorted(p.name for p in out.iterdir()) == ["materialized.json", "model.safetensors"]
    desc = read_materialized_description(out)
    assert desc["base_model"] == {"name": "mlp1d", "kwargs": {"in_features": 40, "num_classes": 10, "hidden": [64, 64]}}
    assert desc["recipe"]["method"] == {"name": "static", "sparsity": 0.8}
    assert desc["layers"]["fc1"]["decision"]["kernel"] == "custom"
    fast = load_materialized(out)  # the architecture comes from the description
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    ref = build_model("mlp1d", None, in_features=40, hidden=[64, 64])
    load_masked_state_dict(ref, ck["model"])
    ref.eval()
    x = torch.randn(5, 40)
    assert any(isinstance(m, SparseLinear) and m.kernel == "custom" for m in fast.modules())
    assert _rel_err(fast(x), ref(x)) <= 1e-5

    # an existing --out (the run's own checkpoint, or the model just written) is refused untouched
    before = (run / "checkpoint.pt").read_bytes()
    for target in (run / "checkpoint.pt", out):
        assert main(["materialize", str(run), "--kernel", "custom", "--out", str(target)]) == 2
        assert "already exists" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before
    # a non-empty folder that holds no materialized model is never replaced, even with --overwrite
    assert main(["materialize", str(run), "--kernel", "torch-csr", "--out", str(run), "--overwrite"]) == 2
    assert "holds no materialized model" in capsys.readouterr().err and (run / "checkpoint.pt").exists()
    # --overwrite replaces the earlier materialized model
    assert main(["materialize", str(run), "--kernel", "torch-csr", "--out", str(out), "--overwrite"]) == 0
    assert {m.kernel for m in load_materialized(out).modules() if isinstance(m, SparseLinear)} == {"torch-csr"}
