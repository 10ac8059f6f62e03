"""sparseforge.report: counts from masks, FLOPs per sample, totals, serialization, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sparseforge.errors import CheckpointError, ConfigError, LayerError
from sparseforge.report import LayerReport, Report, report_for_path, report_from_state_dict, sparsity_report


def _mask_linear(lin: nn.Linear, kept_flat: list[int]) -> torch.Tensor:
    mask = torch.zeros(lin.weight.numel(), dtype=torch.bool)
    mask[kept_flat] = True
    mask = mask.view_as(lin.weight)
    with torch.no_grad():
        lin.weight.mul_(mask)
    lin.register_buffer("weight_mask", mask)
    return mask


def _linear_5_of_12() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    _mask_linear(model[0], [0, 2, 5, 7, 11])
    return model


# ----------------------------------------------------------------------------- per layer
def test_linear_counts_and_flops_by_hand() -> None:
    model = _linear_5_of_12()
    rep = sparsity_report(model, torch.randn(2, 4))
    (row,) = rep.layers
    assert row.name == "0.weight"
    assert row.module_type == "Linear"
    assert row.shape == (3, 4)
    assert row.sparsity == 7 / 12
    assert row.nonzeros == 5
    assert row.params == 12
    assert row.dense_flops == 24  # 2 * 4 * 3 per sample, batch of 2 divided out
    assert row.sparse_flops == 10  # 2 * 5
    assert row.mask_violations == 0
    assert row.masked


def test_linear_without_example_input_counts_one_position() -> None:
    rep = sparsity_report(_linear_5_of_12())
    assert (rep.layers[0].dense_flops, rep.layers[0].sparse_flops) == (24, 10)
    assert rep.totals["dense_flops"] == 24 and rep.totals["sparse_flops"] == 10


def test_counts_come_from_masks_not_values() -> None:
    model = _linear_5_of_12()
    with torch.no_grad():
        model[0].weight[model[0].weight_mask] = 0.0  # kept but zero-valued weights are still "kept"
    row = sparsity_report(model).layers[0]
    assert row.nonzeros == 5 and row.mask_violations == 0


def test_linear_on_sequence_counts_every_token() -> None:
    model = _linear_5_of_12()
    rep = sparsity_report(model, torch.randn(3, 7, 4))  # [B, T, F]
    assert rep.layers[0].dense_flops == 24 * 7
    assert rep.layers[0].sparse_flops == 10 * 7


def test_conv2d_flops_by_hand() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, padding=1)  # weight 4 x 2 x 3 x 3 = 72
    mask = torch.rand(conv.weight.shape) < 0.5
    kept = int(mask.sum())
    with torch.no_grad():
        conv.weight.mul_(mask)
    conv.register_buffer("weight_mask", mask)
    model = nn.Sequential(conv)
    rep = sparsity_report(model, torch.randn(5, 2, 8, 8))
    row = rep.layers[0]
    assert row.shape == (4, 2, 3, 3)
    assert row.dense_flops == 2 * 72 * 64
    assert row.sparse_flops == 2 * kept * 64
    assert row.sparsity == (72 - kept) / 72


def test_grouped_strided_conv_flops() -> None:
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=False)  # weight 8 x 2 x 3 x 3
    conv.register_buffer("weight_mask", torch.ones_like(conv.weight, dtype=torch.bool))
    rep = sparsity_report(nn.Sequential(conv), torch.randn(1, 4, 8, 8))
    assert rep.layers[0].dense_flops == 2 * 144 * 16  # 4 x 4 output positions


def test_conv_without_example_input_is_unknown() -> None:
    conv = nn.Conv2d(2, 4, 3)
    conv.register_buffer("weight_mask", torch.ones_like(conv.weight, dtype=torch.bool))
    rep = sparsity_report(nn.Sequential(conv, nn.Flatten(), nn.Linear(4 * 6 * 6, 2)))
    assert rep.layers[0].dense_flops is None and rep.layers[0].sparse_flops is None
    assert rep.totals["dense_flops"] is None and rep.totals["sparse_flops"] is None
    assert rep.totals["flops_unknown"] == ["0.weight"]
    assert "FLOPs unknown for 0.weight" in rep.table()


def test_hf_conv1d_transposed_weight() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(6, 4)  # nf=6 outputs, nx=4 inputs; weight stored [4, 6]
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :2] = True  # 8 of 24 kept
    with torch.no_grad():
        layer.weight.mul_(mask)
    layer.register_buffer("weight_mask", mask)
    rep = sparsity_report(nn.Sequential(layer), torch.randn(2, 5, 4))
    row = rep.layers[0]
    assert row.module_type == "Conv1D"
    assert row.shape == (4, 6)
    assert row.nonzeros == 8 and row.sparsity == 16 / 24
    assert row.dense_flops == 2 * 24 * 5
    assert row.sparse_flops == 2 * 8 * 5
    # without an input an HF Conv1D behaves like a Linear: one position
    assert sparsity_report(nn.Sequential(layer)).layers[0].dense_flops == 48


def test_mask_violations_detected() -> None:
    model = _linear_5_of_12()
    with torch.no_grad():
        model[0].weight.view(-1)[1] = 3.0  # position 1 is pruned
        model[0].weight.view(-1)[3] = float("nan")  # position 3 is pruned
    rep = sparsity_report(model)
    assert rep.layers[0].mask_violations == 2
    assert rep.totals["mask_violations"] == 2
    assert rep.layers[0].nonzeros == 5  # still from the mask
    assert "WARNING: 0.weight has 2 pruned position(s)" in rep.table()


def test_mask_shape_mismatch_is_an_error() -> None:
    lin = nn.Linear(4, 3)
    lin.register_buffer("weight_mask", torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(LayerError, match="weight"):
        sparsity_report(nn.Sequential(lin))


# ----------------------------------------------------------------------------- totals
def _mixed_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.BatchNorm1d(2))
    _mask_linear(model[0], [0, 2, 5, 7, 11])
    return model


def test_unmasked_layers_are_dense_rows_and_totals() -> None:
    model = _mixed_model()
    rep = sparsity_report(model, torch.randn(4, 4))
    assert [r.name for r in rep.layers] == ["0.weight", "2.weight"]
    dense_row = rep.layers[1]
    assert not dense_row.masked and dense_row.sparsity == 0 and dense_row.nonzeros == 6
    assert dense_row.dense_flops == dense_row.sparse_flops == 12
    t = rep.totals
    total = 12 + 3 + 6 + 2 + 2 + 2  # two Linear weights + biases, BatchNorm weight + bias
    assert t["total_params"] == total
    assert t["prunable_params"] == 12
    assert t["nonzeros"] == 5 + (total - 12)
    assert t["global_sparsity"] == 7 / 12
    assert t["overall_sparsity"] == 7 / total
    assert t["dense_flops"] == 24 + 12 and t["sparse_flops"] == 10 + 12
    assert t["masked_layers"] == 1 and t["mask_violations"] == 0 and t["flops_unknown"] == []


def test_model_without_masks_is_all_dense() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    rep = sparsity_report(model)
    assert [r.masked for r in rep.layers] == [False, False]
    assert rep.totals["prunable_params"] == 0
    assert rep.totals["global_sparsity"] == 0.0 and rep.totals["overall_sparsity"] == 0.0
    assert rep.totals["nonzeros"] == rep.totals["total_params"] == 15 + 8
    assert rep.totals["dense_flops"] == rep.totals["sparse_flops"] == 2 * (12 + 6)
    assert "sparsity: simulated" in rep.table()


def test_masked_bias_has_no_flops_and_counts_as_prunable() -> None:
    lin = nn.Linear(4, 3)
    lin.register_buffer("bias_mask", torch.tensor([True, False, True]))
    with torch.no_grad():
        lin.bias[1] = 0
    rep = sparsity_report(nn.Sequential(lin))
    assert [r.name for r in rep.layers] == ["0.bias", "0.weight"]
    assert rep.layer("0.bias").nonzeros == 2 and rep.layer("0.bias").dense_flops is None
    assert rep.layer("0.weight").masked is False
    # the bias has no FLOPs of its own (None: not applicable), which leaves the total known
    assert rep.totals["prunable_params"] == 3 and rep.totals["dense_flops"] == 2 * 12
    assert rep.totals["flops_unknown"] == []


def test_layer_never_called_has_unknown_flops() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    rep = sparsity_report(Net(), torch.randn(1, 4))
    assert rep.layer("used").dense_flops == 16
    assert rep.layer("unused").dense_flops is None
    assert rep.totals["dense_flops"] is None and rep.totals["flops_unknown"] == ["unused.weight"]


def test_shared_module_counts_every_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(self.lin(x))

    rep = sparsity_report(Twice(), torch.randn(3, 4))
    assert rep.layers[0].dense_flops == 2 * 2 * 16


def test_dict_and_tuple_inputs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 2)
            self.b = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    m = Two()
    r1 = sparsity_report(m, (torch.randn(2, 4), torch.randn(2, 3)))
    r2 = sparsity_report(m, {"x": torch.randn(2, 4), "y": torch.randn(2, 3)})
    assert r1.totals["dense_flops"] == r2.totals["dense_flops"] == 2 * (8 + 6)


# ----------------------------------------------------------------------------- modes
def test_training_mode_restored_and_batchnorm_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    model.train()
    model[3].eval()  # mixed modes must come back exactly
    before = model[1].running_mean.clone()
    sparsity_report(model, torch.randn(2, 1, 8, 8))
    assert [m.training for m in model.modules()] == [True, True, True, True, False]
    assert torch.equal(model[1].running_mean, before)
    assert model[1].num_batches_tracked.item() == 0


def test_hooks_removed_and_mode_restored_on_error() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2))  # shapes do not chain
    model.train()
    with pytest.raises(ConfigError, match="example_inputs does not run the model"):
        sparsity_report(model, torch.randn(2, 4))
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


def test_no_grad_during_forward() -> None:
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.is_grad_enabled())
            return x

    sparsity_report(nn.Sequential(Probe(), nn.Linear(4, 2)), torch.randn(1, 4))
    assert seen == [False]


@pytest.mark.parametrize("bad", ["real", "Simulated", None, 1])
def test_bad_mode_raises(bad: object) -> None:
    with pytest.raises(ValueError, match="mode"):
        sparsity_report(_linear_5_of_12(), mode=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mode"):
        Report(layers=[], totals={}, mode=bad)  # type: ignore[arg-type]


def test_materialized_label() -> None:
    rep = sparsity_report(_linear_5_of_12(), mode="materialized")
    assert rep.mode == "materialized"
    assert rep.table().splitlines()[-1].startswith("sparsity: materialized")


# ----------------------------------------------------------------------------- output
def test_table_layout() -> None:
    model = nn.Sequential(nn.Linear(1000, 1200), nn.Linear(1200, 10))
    mask = torch.zeros(1200, 1000, dtype=torch.bool)
    mask[:, :100] = True
    with torch.no_grad():
        model[0].weight.mul_(mask)
    model[0].register_buffer("weight_mask", mask)
    text = sparsity_report(model, torch.randn(1, 1000)).table()
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "shape", "sparsity", "%", "nonzeros", "params", "dense", "FLOPs", "sparse", "FLOPs"]
    assert "1200x1000" in text and "90.00" in text and "1.2M" in text and "120.0K" in text and "2.4M" in text
    assert "dense" in lines[3]  # the unmasked row
    # numeric columns are right-aligned: every row ends at the same column
    assert len({len(l) for l in lines[:4]}) == 1
    assert any(l.startswith("total:") for l in lines)
    assert lines[-1] == "sparsity: simulated (zeros stored in dense tensors)"


def test_json_round_trip(tmp_path: Path) -> None:
    rep = sparsity_report(_mixed_model(), torch.randn(2, 4))
    d = rep.to_dict()
    text = json.dumps(d)  # JSON-serializable as is
    assert Report.from_dict(json.loads(text)) == rep
    path = tmp_path / "report.json"
    out = rep.to_json(path)
    assert json.loads(path.read_text()) == json.loads(out)
    assert Report.from_json(path) == rep
    assert Report.from_json(out) == rep
    assert isinstance(Report.from_dict(d).layers[0], LayerReport)
    assert Report.from_dict(d).layers[0].shape == (3, 4)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_from_dict_rejects_garbage() -> None:
    with pytest.raises(ConfigError):
        Report.from_dict({"layers": []})
    d = sparsity_report(_linear_5_of_12()).to_dict()
    d["layers"][0]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        Report.from_dict(d)


# ----------------------------------------------------------------------------- checkpoints
def test_report_from_state_dict() -> None:
    model = _mixed_model()
    rep = report_from_state_dict(model.state_dict())
    (row,) = rep.layers
    assert row.name == "0.weight" and row.module_type is None and row.shape == (3, 4)
    assert row.nonzeros == 5 and row.sparsity == 7 / 12
    assert row.dense_flops is None and rep.totals["dense_flops"] is None
    assert "FLOPs unknown: read from a checkpoint" in rep.table()
    from_model = sparsity_report(model).totals
    # BatchNorm running statistics are buffers, not parameters
    assert rep.totals["total_params"] == from_model["total_params"]
    assert rep.totals["nonzeros"] == from_model["nonzeros"]
    assert rep.totals["global_sparsity"] == 7 / 12


def test_report_from_state_dict_violations_and_skips() -> None:
    sd = _mixed_model().state_dict()
    sd["0.weight"].view(-1)[1] = 1.0
    sd["attn.causal_mask"] = torch.ones(2, 2, dtype=torch.bool)
    rep = report_from_state_dict(sd)
    assert rep.layers[0].mask_violations == 1
    assert rep.totals["skipped"] == ["attn.causal_mask: no tensor 'attn.causal' to go with it"]
    assert "skipped attn.causal_mask" in rep.table()


def test_report_from_torch_prune_state_dict() -> None:
    import torch.nn.utils.prune as prune

    lin = nn.Linear(4, 3)
    prune.l1_unstructured(lin, "weight", amount=5)
    rep = report_from_state_dict(nn.Sequential(lin).state_dict())
    assert rep.layers[0].name == "0.weight" and rep.layers[0].nonzeros == 7
    assert rep.layers[0].mask_violations == 0
    assert rep.totals["total_params"] == 15


def test_report_for_path(tmp_path: Path) -> None:
    model = _mixed_model()
    sd_path = tmp_path / "model.pt"
    torch.save(model.state_dict(), sd_path)
    assert report_for_path(sd_path).layers[0].nonzeros == 5

    # a run folder: checkpoint.pt (training-checkpoint format) + report.json with the same masks
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "sparseforge-checkpoint-v1", "model": model.state_dict(), "step": 3}, run / "checkpoint.pt")
    assert report_for_path(run).totals["dense_flops"] is None  # only the checkpoint
    full = sparsity_report(model, torch.randn(1, 4))
    full.to_json(run / "report.json")
    rep = report_for_path(run)
    assert rep == full  # the saved report has FLOPs and dense rows
    assert report_for_path(run / "report.json") == full

    # masks changed after the report was written: the checkpoint wins
    sd = model.state_dict()
    sd["0.weight_mask"] = torch.ones(3, 4, dtype=torch.bool)
    torch.save({"format": "sparseforge-checkpoint-v1", "model": sd}, run / "checkpoint.pt")
    assert report_for_path(run).layers[0].nonzeros == 12

    with pytest.raises(CheckpointError):
        report_for_path(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        report_for_path(tmp_path / "junk.pt")
