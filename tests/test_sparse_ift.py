"""Sparse-IFT: sizes from the official formulas, exact iso-FLOP, shapes, DST targets, bad input."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from sparseforge.errors import ConfigError, LayerError
from sparseforge.masking import Targets, find_masked_layers
from sparseforge.models import MLP1D, SmallCNN
from sparseforge.report import iso_flop_report
from sparseforge.transforms import (
    KINDS, SparseDoped, SparseFactorized, SparseParallel, SparseWide, ift_budgets, ift_layers, ift_method,
    sparse_ift, transform_layer,
)
from sparseforge.transforms.sparse_ift import (
    base_scaling, doped_rank, factorized_rank, parallel_branches, wide_width,
)

SPARSITIES = (0.5, 0.75, 0.9)


def test_official_sizes() -> None:
    # the official ResNet-18 base width 64 becomes 90, 128, 202 (int truncation of 64 * sqrt(round(1/(1-s))))
    assert [wide_width(64, s) for s in SPARSITIES] == [90, 128, 202]
    assert [parallel_branches(s) for s in SPARSITIES] == [2, 4, 10]
    assert base_scaling(0.99) == 100  # round, not int: 1 / 0.01 = 99.99999...
    # factorized 3x3 conv 64 -> 64 at s = 0.5: ceil(9*64*64 / (0.5 * (576 + 64))) = ceil(115.2) = 116
    assert factorized_rank(576, 64, 0.5) == 116
    # doped: floor(0.5 * 9*64*64 / (576 + 64)) = floor(28.8) = 28
    assert doped_rank(576, 64, 0.5) == 28
    # Linear 300 -> 100 at s = 0.9: factorized ceil(30000 / (0.1 * 400)) = 750; doped floor(27000 / 400) = 67
    assert factorized_rank(300, 100, 0.9) == 750 and doped_rank(300, 100, 0.9) == 67


@pytest.mark.parametrize("s", SPARSITIES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_iso_flop_within_one_percent(kind: str, s: float, arch: str) -> None:
    torch.manual_seed(0)
    if arch == "mlp":
        model, x = MLP1D(40, (64, 48, 32), 10), torch.randn(3, 40)
    else:
        model, x = SmallCNN(image_size=12), torch.randn(2, 1, 12, 12)
    ift = sparse_ift(model, kind, s, example_inputs=x).model
    method = ift_method(ift, None, "rigl", total_steps=100)
    report = iso_flop_report(model, ift, x)
    assert report.source == "masks"
    assert abs(report.totals["ratio"] - 1.0) < 0.01
    for row in report.rows:
        assert abs(row.ratio - 1.0) < 0.01, row
    # the FLOP counter reads the masks: dropping one kept weight of a sparse part lowers the IFT FLOPs
    layer = method.layers[0]
    with torch.no_grad():
        m = layer.mask.clone().reshape(-1)
        m[m.nonzero()[0]] = False
        method.masking.set_mask(layer, m.reshape(layer.mask.shape))
    assert iso_flop_report(model, ift, x).totals["ift_flops"] < report.totals["ift_flops"]
    # stem and head stay dense and untouched
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    layers = ift_layers(ift)
    assert names[0] not in layers and names[-1] not in layers and len(layers) == len(names) - 2
    assert ift(x).shape == (x.shape[0], 10)


def test_flop_table_hand_computed() -> None:
    # MLP 4 -> 6 -> 6 -> 2, factorized at s = 0.5 on the middle layer: r = ceil(36 / (0.5 * 12)) = 6,
    # U (6x6) + V (6x6) keep 36 weights in total = the dense 6x6 layer: 72 FLOPs per sample either way
    model = MLP1D(4, (6, 6), 2)
    ift = sparse_ift(model, "factorized", 0.5).model
    layer = ift_layers(ift)["fc2"]
    assert layer.rank == 6 and layer.budgets() == {"U": 18, "V": 18}
    report = iso_flop_report(model, ift, torch.zeros(1, 4))
    assert report.source.startswith("exact budgets")
    row = [r for r in report.rows if r.name == "fc2"][0]
    assert (row.dense_flops, row.ift_flops, row.ift_params, row.ift_nonzeros) == (72, 72, 72, 36)
    assert report.totals["dense_flops"] == 2 * (24 + 36 + 12)
    assert "fc2" in report.table() and "factorized" in report.table()


@pytest.mark.parametrize("kind", KINDS)
def test_layer_shapes_and_forward(kind: str) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(20, 12)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
    t_lin = transform_layer(lin, kind, 0.75)
    t_conv = transform_layer(conv, kind, 0.75)
    if kind == "wide":  # a standalone wide layer widens both sides by sqrt(4) = 2
        assert t_lin(torch.randn(5, 40)).shape == (5, 24)
        assert t_conv(torch.randn(2, 12, 9, 9)).shape == (2, 16, 5, 5)
        assert t_lin.budgets() == {"layer": 240} and t_lin.part_sparsity()["layer"] == pytest.approx(0.75)
    else:
        assert t_lin(torch.randn(5, 20)).shape == (5, 12)
        assert t_conv(torch.randn(2, 6, 9, 9)).shape == (2, 8, 5, 5)
    for t, dense in ((t_lin, 240), (t_conv, 432)):
        assert sum(t.budgets().values()) + sum(getattr(t, n).weight.numel() for n in t.dense_parts) == dense


def test_structure_of_each_kind() -> None:
    conv = nn.Conv2d(4, 8, 3, padding=1)
    p = SparseParallel(conv, 0.9)
    assert p.branches_count == 10 and len(p.sparse_parts) == 10 and p.bias is not None
    f = SparseFactorized(conv, 0.5)
    assert f.U.kernel_size == (3, 3) and f.V.kernel_size == (1, 1) and f.U.out_channels == f.rank == factorized_rank(36, 8, 0.5)
    d = SparseDoped(conv, 0.5)
    assert d.dense_parts == ("U", "V") and d.U.out_channels == doped_rank(36, 8, 0.5)
    assert not hasattr(SparseDoped(conv, 0.0), "U")  # rank 0 at s = 0: just the layer
    w = SparseWide(nn.Linear(10, 10), 0.75, widen_in=False)
    assert (w.layer.in_features, w.layer.out_features) == (10, 20)


def test_wide_rewires_cnn_chain() -> None:
    model = SmallCNN(image_size=12)
    x = torch.randn(2, 1, 12, 12)
    ift = sparse_ift(model, "wide", 0.75, example_inputs=x).model
    # conv2 -> fc1 is the only width between two transformed layers: 64 channels -> 128, fc1 gets 128 * 3 * 3
    assert ift.conv2.layer.in_channels == 32 and ift.conv2.layer.out_channels == 128
    assert ift.bn2.num_features == 128 and ift.fc1.layer.in_features == 128 * 9 and ift.fc1.layer.out_features == 128
    assert ift(x).shape == (2, 10)
    assert model.conv2.out_channels == 64  # the original is not modified


def test_dst_targets_are_the_sparse_parts() -> None:
    torch.manual_seed(0)
    model = MLP1D(8, (16, 16, 16), 3)
    ift = sparse_ift(model, "doped", 0.75).model
    opt = torch.optim.SGD(ift.parameters(), lr=0.1)
    method = ift_method(ift, opt, "rigl", total_steps=4, update_interval=1)
    assert [l.name for l in method.layers] == ["fc2.sparse", "fc3.sparse"]
    assert {l.name for l in find_masked_layers(ift)} == {"fc2.sparse", "fc3.sparse"}  # U and V stay dense
    budgets = ift_budgets(ift)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(ift(x), y).backward()
        opt.step()
    assert method.last_update  # RigL updated the masks ...
    for l in method.layers:  # ... and every part still keeps exactly its budget
        assert int(l.mask.sum()) == budgets[l.name] and int((l.weight != 0).sum()) <= budgets[l.name]
    assert ift.fc2.U.weight.ne(0).all()


def test_include_exclude_and_first_last() -> None:
    model = MLP1D(8, (16, 16, 16), 3)
    assert set(ift_layers(sparse_ift(model, "parallel", 0.5, targets={"exclude": ["fc3"]}).model)) == {"fc2"}
    assert set(ift_layers(sparse_ift(model, "parallel", 0.5, targets={"first_layer": "sparse"}).model)) == {
        "fc1", "fc2", "fc3"}
    assert set(ift_layers(sparse_ift(model, "parallel", 0.5, targets={"include": ["fc[23]"]}).model)) == {"fc2", "fc3"}
    result = sparse_ift(model, "parallel", 0.5, targets=Targets(include=["fc[23]"], types=None))
    assert [layer.name for layer in result.layers] == ["fc2", "fc3"] and result.kind == "parallel"
    # the old keywords still work for one release, with a warning naming targets=
    with pytest.warns(DeprecationWarning, match="targets="):
        old = sparse_ift(model, "parallel", 0.5, include=["fc[23]"])
    assert set(ift_layers(old.model)) == {"fc2", "fc3"}
    with pytest.raises(ConfigError, match="pass targets= only"):
        sparse_ift(model, "parallel", 0.5, targets={"exclude": ["fc3"]}, exclude=["fc3"])


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, "0.5", True])
def test_bad_sparsity(s) -> None:
    with pytest.raises(ConfigError, match="sparsity must"):
        sparse_ift(MLP1D(8, (16, 16), 3), "wide", s)
    with pytest.raises(ConfigError, match="sparsity must"):
        transform_layer(nn.Linear(4, 4), "doped", s)


def test_bad_layer_and_kind() -> None:
    with pytest.raises(LayerError, match="nn.Linear and nn.Conv2d only; got Conv1d"):
        transform_layer(nn.Conv1d(4, 4, 3), "parallel", 0.5)
    with pytest.raises(LayerError, match="nn.Linear and nn.Conv2d only; got Embedding"):
        SparseWide(nn.Embedding(10, 4), 0.5)
    with pytest.raises(LayerError, match="groups=1"):
        transform_layer(nn.Conv2d(4, 4, 3, groups=2), "factorized", 0.5)

    class WithEmbedding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.fc1, self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    with pytest.raises(LayerError, match="'emb' matches emb \\(Embedding\\)"):
        sparse_ift(WithEmbedding(), "doped", 0.5, targets={"include": ["emb"]})
    with pytest.raises(ConfigError, match="kind must be one of"):
        sparse_ift(MLP1D(8, (16, 16), 3), "tall", 0.5)
    with pytest.raises(ConfigError, match="uv_layer must be one of"):
        transform_layer(nn.Linear(4, 4), "factorized", 0.5, uv_layer="gelu")
    with pytest.raises(ConfigError, match="sets 'sparsity' itself"):
        ift_method(sparse_ift(MLP1D(8, (16, 16), 3), "doped", 0.5).model, None, "rigl", sparsity=0.5, total_steps=10)


def test_wide_rejects_non_chain() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(5, 6), nn.Linear(6, 2)

    with pytest.raises(LayerError, match="fc3 takes 5 inputs but fc2 gives 6 outputs"):
        sparse_ift(Branchy(), "wide", 0.5)


def test_determinism_and_bn_modes_restored() -> None:
    def build():
        torch.manual_seed(3)
        return sparse_ift(SmallCNN(image_size=8), "factorized", 0.75).model

    a, b = build(), build()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    a.train()
    iso_flop_report(SmallCNN(image_size=8), a, torch.randn(2, 1, 8, 8))
    assert a.training and all(m.training for m in a.modules())


@pytest.mark.parametrize("method, params", [("static", {}), ("set", {"update_interval": 2})])
def test_other_methods_keep_the_budgets(method: str, params: dict) -> None:
    torch.manual_seed(0)
    ift = sparse_ift(MLP1D(8, (16, 16, 16), 3), "parallel", 0.75).model
    m = ift_method(ift, None, method, **params)
    budgets = ift_budgets(ift)
    assert [l.name for l in m.layers] == list(budgets)
    assert all(int(l.mask.sum()) == budgets[l.name] for l in m.layers)
