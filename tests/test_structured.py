"""Structured pruning: coupled groups, importance, selection, shrinking, save/load (issue 4)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.errors import CheckpointError, ConfigError, LayerError
from sparseforge.structured import (
    StructuredPruner,
    group_importance,
    kept_indices,
    load_structured,
    prune_structured,
    register_rule,
    save_structured,
    select_groups,
    shrink,
    trace_groups,
    unregister_rule,
    zero_groups,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ------------------------------------------------------------------------------ helpers
def _randomize_norms(model: nn.Module) -> None:
    """Non-trivial norm statistics/affine so that a wrong slice shows up in the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias"):
                t = getattr(m, name, None)
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
                                  nn.InstanceNorm2d)) and t is not None:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name == "weight" else torch.randn(t.shape, generator=g))
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _call(model: nn.Module, x):
    out = model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, tuple) else model(x)
    if isinstance(out, tuple):
        out = out[0]
    if hasattr(out, "logits"):
        out = out.logits
    elif hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    return out


def _every_other(graph) -> list[int]:
    """Remove every second group of every cluster (at least one group stays)."""
    return sorted(gi for c in graph.clusters for gi in c.groups[1::2])


def assert_shrink_equals_zeroed(model: nn.Module, x, removed=None, *, ignore=(), atol=1e-5):
    """Trace, remove groups, and check the shrunk model against the group-zeroed one."""
    model.eval()
    graph = trace_groups(model, x, ignore=ignore)
    removed = _every_other(graph) if removed is None else removed
    kept = kept_indices(graph, removed)
    small, zeroed = shrink(model, kept), zero_groups(model, kept)
    with torch.no_grad():
        a, b, ref = _call(small, x), _call(zeroed, x), _call(model, x)
    assert a.shape == ref.shape
    torch.testing.assert_close(a, b, atol=atol, rtol=0)
    n_small = sum(p.numel() for p in small.parameters())
    n_big = sum(p.numel() for p in model.parameters())
    if removed:
        assert n_small < n_big
    return graph, small


def _sizes(graph) -> dict[str, int]:
    return {c.name: len(c.groups) for c in graph.clusters}


# --------------------------------------------------------------------- edge-case blocks
class ResidualCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(3, 4, 1)
        self.c4 = nn.Conv2d(12, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.b2(self.c2(y)) + y)  # residual add couples c1 and c2
        z = torch.cat([y, self.c3(x)], dim=1)  # concat: c4's inputs 0..7 <- y, 8..11 <- c3
        return self.fc(self.c4(z).mean((2, 3)))


def test_residual_add_and_concat():
    torch.manual_seed(0)
    m = ResidualCat()
    _randomize_norms(m)
    x = torch.randn(2, 3, 6, 6)
    graph, small = assert_shrink_equals_zeroed(m, x)
    sizes = _sizes(graph)
    assert sizes == {"c1.weight[dim 0]": 8, "c3.weight[dim 0]": 4, "c4.weight[dim 0]": 5}
    # residual: c1 and c2 outputs are one cluster, so they shrink alike
    assert small.c1.out_channels == small.c2.out_channels == small.b1.num_features == 4
    assert small.c4.in_channels == 4 + 2 and small.c4.weight.shape[1] == 6
    # the group of c1's channel 0 holds c4's input channel 0; c3's channel 0 holds c4's input 8
    g0 = graph.groups[graph.clusters[0].groups[0]]
    assert {(sp.key, sp.dim, ix) for sp, ix in g0.slots if sp.key == "c4.weight"} == {("c4.weight", 1, (0,))}
    g3 = graph.groups[graph.clusters[1].groups[0]]
    assert {(sp.key, ix) for sp, ix in g3.slots if sp.key == "c4.weight"} == {("c4.weight", (8,))}


class ChunkSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 12), nn.Linear(6, 3)
        self.c = nn.Linear(4, 8)

    def forward(self, x):
        u, v = self.a(x).chunk(2, dim=-1)  # GLU: feature j of u goes with feature j of v
        p, q = torch.split(self.c(x), 4, dim=-1)  # literal size: pinned
        return self.b(u * torch.sigmoid(v)) + (p * q)[..., :3]


def test_chunk_couples_pieces_and_literal_split_is_pinned():
    torch.manual_seed(0)
    m = ChunkSplit()
    x = torch.randn(3, 4)
    graph, small = assert_shrink_equals_zeroed(m, x)
    assert _sizes(graph) == {"a.weight[dim 0]": 6}
    g = graph.groups[0]
    rows = dict((sp.key, ix) for sp, ix in g.slots if sp.dim == 0)
    assert rows["a.weight"] == (0, 6)  # u_0 and v_0 leave together
    assert small.a.out_features == 6 and small.b.in_features == 3
    assert any(name.startswith("c.weight") and "split" in why for name, why in graph.skipped)


def test_chunk_pieces_used_apart_still_shrink_alike():
    class ChunkApart(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.l1, self.l2 = nn.Linear(4, 8), nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            u, v = self.a(x).chunk(2, dim=-1)  # nothing element-wise joins u and v
            return self.l1(u) + self.l2(v)

    torch.manual_seed(0)
    m = ChunkApart()
    graph = trace_groups(m, torch.randn(2, 4))
    first = graph.clusters[0].groups[0]
    assert dict((sp.key, ix) for sp, ix in graph.groups[first].slots if sp.dim == 0)["a.weight"] == (0, 4)
    assert_shrink_equals_zeroed(m, torch.randn(3, 4), [first])


class GroupedConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # 4 in / 4 out per group
        self.c2 = nn.Conv2d(8, 4, 1)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)  # depthwise, multiplier 2
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.dw(self.c2(F.relu(self.grouped(self.c1(x))))))))


def test_grouped_and_depthwise_conv():
    torch.manual_seed(0)
    m = GroupedConvs()
    _randomize_norms(m)
    x = torch.randn(2, 3, 5, 5)
    graph, small = assert_shrink_equals_zeroed(m, x)
    sizes = _sizes(graph)
    # grouped conv: a whole convolution group (4 inputs from c1 + its 4 outputs) is one unit
    assert sizes["c1.weight[dim 0]"] == 2
    # depthwise x2: input channel k of dw and its outputs 2k, 2k+1 are one unit
    assert sizes["c2.weight[dim 0]"] == 4
    assert small.grouped.groups == 1 and small.grouped.in_channels == 4 and small.grouped.out_channels == 4
    assert small.dw.groups == 2 and small.dw.in_channels == 2 and small.dw.out_channels == 4
    assert small.bn.num_features == 4


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3)
        self.fc1, self.fc2 = nn.Linear(6 * 3 * 3, 7), nn.Linear(7, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(F.relu(self.conv(x)), 1))))


def test_flatten_into_linear():
    torch.manual_seed(0)
    m = FlattenLinear()
    x = torch.randn(2, 2, 5, 5)
    graph, small = assert_shrink_equals_zeroed(m, x)
    c = next(c for c in graph.clusters if c.name == "conv.weight[dim 0]")
    g = graph.groups[c.groups[2]]
    cols = dict((sp.key, ix) for sp, ix in g.slots if sp.key == "fc1.weight")
    assert cols["fc1.weight"] == tuple(range(2 * 9, 3 * 9))  # channel 2 -> its 9 flattened features
    assert small.fc1.in_features == 3 * 9


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.up, self.down = nn.Linear(8, 12), nn.Linear(12, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.down(F.gelu(self.up(h)))
        return self.head(self.norm(h))


def test_tied_embeddings_stay_tied():
    torch.manual_seed(0)
    m = Tied()
    _randomize_norms(m)
    ids = torch.randint(0, 11, (2, 5))
    graph, small = assert_shrink_equals_zeroed(m, ids)
    assert small.head.weight is small.emb.weight
    assert small.emb.embedding_dim == small.head.in_features == small.norm.normalized_shape[0] == 4
    assert small.emb.num_embeddings == 11  # vocabulary reaches the output: kept


class MHABlock(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.inp = nn.Linear(5, 16)
        self.att = nn.MultiheadAttention(16, 4, batch_first=True, **kw)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.att(h, h, h)
        return self.fc((h + a).mean(1))


@pytest.mark.parametrize("kw", [{}, {"add_bias_kv": True}])
def test_multihead_attention_heads(kw):
    torch.manual_seed(0)
    m = MHABlock(**kw)
    x = torch.randn(2, 7, 5)
    graph, small = assert_shrink_equals_zeroed(m, x)
    (c,) = graph.clusters
    assert c.heads and len(c.groups) == 4
    assert small.att.num_heads == 2 and small.att.embed_dim == 8 and small.att.head_dim == 4
    assert small.att.in_proj_weight.shape == (24, 8) and small.att.out_proj.in_features == 8


def test_multihead_attention_cross_kdim():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.kv = nn.Linear(5, 8), nn.Linear(5, 6)
            self.att = nn.MultiheadAttention(8, 2, kdim=6, vdim=6)
            self.fc = nn.Linear(8, 2)

        def forward(self, x, mem):
            k = self.kv(mem)
            a, _ = self.att(self.q(x), k, k)
            return self.fc(a + self.q(x))

    torch.manual_seed(0)
    x = (torch.randn(4, 2, 5), torch.randn(3, 2, 5))
    graph, small = assert_shrink_equals_zeroed(Cross(), x)
    sizes = _sizes(graph)
    assert sizes["kv.weight[dim 0]"] == 6  # key/value input features are independent channels
    assert small.att.kdim == small.att.vdim == 3 and small.att.num_heads == 1


class ConvT(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.t = nn.ConvTranspose2d(8, 6, 3, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.tg = nn.ConvTranspose2d(6, 6, 3, groups=3)
        self.o = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.o(F.relu(self.tg(F.relu(self.bn(self.t(self.c(x)))))))


def test_conv_transpose():
    torch.manual_seed(0)
    m = ConvT()
    _randomize_norms(m)
    graph, small = assert_shrink_equals_zeroed(m, torch.randn(2, 3, 6, 6))
    # tg's convolution groups (2 in + 2 out channels) tie t's outputs in pairs to tg's outputs
    assert _sizes(graph) == {"c.weight[dim 0]": 8, "t.weight[dim 1]": 3}
    assert [str(s) for s in graph.clusters[1].sources] == ["t.weight[dim 1]", "tg.bias[dim 0]"]
    assert small.t.in_channels == 4 and small.t.out_channels == 4 and small.tg.groups == 2


@pytest.mark.parametrize("norm", ["batch1d", "layer", "layer_noaffine", "group", "rms", "rms_noaffine", "instance", "llama_rms"])
def test_norm_layers(norm):
    torch.manual_seed(0)
    if norm == "llama_rms":
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
        layer = LlamaRMSNorm(8)
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5)
    else:
        layer = {
            "batch1d": lambda: nn.BatchNorm1d(8), "layer": lambda: nn.LayerNorm(8),
            "layer_noaffine": lambda: nn.LayerNorm(8, elementwise_affine=False),
            "group": lambda: nn.GroupNorm(4, 8), "rms": lambda: nn.RMSNorm(8),
            "rms_noaffine": lambda: nn.RMSNorm(8, elementwise_affine=False),
            "instance": lambda: nn.InstanceNorm2d(8, affine=True),
        }[norm]()
    conv = norm in ("group", "instance")
    m = nn.Sequential(nn.Conv2d(3, 8, 1) if conv else nn.Linear(3, 8), layer, nn.ReLU(),
                      nn.Conv2d(8, 2, 1) if conv else nn.Linear(8, 2))
    _randomize_norms(m)
    x = torch.randn(4, 3, 3, 3) if conv else torch.randn(4, 3)
    graph, small = assert_shrink_equals_zeroed(m, x)
    n_groups = len(graph.groups)
    assert n_groups == (4 if norm == "group" else 8)  # GroupNorm: a normalisation group is the unit
    kept = 8 - 4 if norm != "group" else 8 - 2 * 2
    t = small[1]
    size = getattr(t, "num_features", None) or getattr(t, "num_channels", None) or (
        t.normalized_shape[0] if hasattr(t, "normalized_shape") else t.weight.shape[0])
    assert size == kept
    if norm == "group":
        assert small[1].num_groups == 2


def test_layernorm_reference_uses_kept_statistics():
    """Hand-computed: the shrunk LayerNorm equals layer_norm over the kept features only."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.Linear(6, 2)).eval()
    _randomize_norms(m)
    graph = trace_groups(m, torch.randn(1, 3))
    kept = kept_indices(graph, [1, 4])
    small = shrink(m, kept)
    x = torch.randn(5, 3)
    keep = torch.tensor([0, 2, 3, 5])
    h = F.linear(x, m[0].weight[keep], m[0].bias[keep])
    h = F.layer_norm(h, (4,), m[1].weight[keep], m[1].bias[keep])
    expected = F.linear(h, m[2].weight[:, keep], m[2].bias)
    torch.testing.assert_close(small(x), expected, atol=1e-6, rtol=0)


def test_hf_conv1d_transposed_weight():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    m = nn.Sequential(Conv1D(10, 4), nn.GELU(), Conv1D(3, 10))  # Conv1D(nf, nx): weight [nx, nf]
    graph, small = assert_shrink_equals_zeroed(m, torch.randn(2, 5, 4))
    assert small[0].weight.shape == (4, 5) and small[0].nf == 5 and small[2].weight.shape == (5, 3)


# ------------------------------------------------------------------- unknown and custom
class Scale(nn.Module):
    """A custom layer with a parameter and no built-in rule."""

    def __init__(self, n):
        super().__init__()
        self.s = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x):
        return x * self.s


def test_unknown_layer_is_conservative_and_listed_then_a_rule_makes_it_prunable():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 6), Scale(6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(2, 3)
    graph = trace_groups(m, x)
    assert graph.groups == [] and "1" in graph.unknown
    assert any(name == "0.weight[dim 0]" and "Scale" in why for name, why in graph.skipped)

    def trace(ctx, mod, name, args, kwargs, out):
        ids = ctx.slots(mod.s, 0)
        ctx.couple(args[0], -1, ids, f"{name} scale")
        ctx.channel_output(out, -1, ids)

    register_rule(Scale, trace, lambda mod, sizes: None)
    try:
        graph, small = assert_shrink_equals_zeroed(m, x)
        assert len(graph.groups) == 6 and small[1].s.shape == (3,)
    finally:
        unregister_rule(Scale)


def test_unknown_operation_is_listed_and_pins_its_inputs():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.fft.fft(self.a(x)).real)

    graph = trace_groups(M(), torch.randn(2, 3))
    assert graph.groups == []
    assert any("fft" in k for k in graph.unknown)


class TokenModel(nn.Module):
    """ViT-like: a class token and a position embedding used directly in the forward."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.mlp = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 6), nn.GELU(), nn.Linear(6, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        t = t + self.gamma * self.mlp(t)
        return self.head(t[:, 0])


def test_parameters_used_directly_shrink_by_whole_slices():
    torch.manual_seed(0)
    m = TokenModel()
    _randomize_norms(m)
    graph, small = assert_shrink_equals_zeroed(m, torch.randn(2, 3, 4, 4))
    assert _sizes(graph) == {"patch.weight[dim 0]": 8, "mlp.1.weight[dim 0]": 6}
    assert small.cls.shape == (1, 1, 4) and small.pos.shape == (1, 5, 4) and small.gamma.shape == (4,)


def test_slab_dims_by_hand():
    from sparseforge.structured.graph import slab_dims

    # shape (2, 3): flat 1 and 4 are column 1; flat 3, 4, 5 are row 1
    assert slab_dims((2, 3), [1, 4]) == {1: [1]}
    assert slab_dims((1, 2, 3), [1, 4]) == {2: [1]}
    assert slab_dims((2, 3), [1, 3, 4, 5]) == {0: [1], 1: [1]}
    assert slab_dims((2, 3), [1]) is None  # a single element of a 2-D parameter is not a slice


def test_sizes_read_from_shapes_are_not_literals():
    class SE(nn.Module):
        def __init__(self, literal):
            super().__init__()
            self.literal = literal
            self.c, self.f1, self.f2, self.o = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4), nn.Linear(4, 8), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.c(x)
            b, c = y.shape[:2]
            w = torch.sigmoid(self.f2(F.relu(self.f1(y.mean((2, 3))))))
            return self.o(y * w.view(b, 8 if self.literal else c, 1, 1))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    graph, small = assert_shrink_equals_zeroed(SE(False), x)
    assert _sizes(graph) == {"c.weight[dim 0]": 8, "f1.weight[dim 0]": 4} and small.f2.out_features == 4
    graph = trace_groups(SE(True), x)  # view(b, 8, 1, 1): after shrinking 8 would be wrong
    assert _sizes(graph) == {"f1.weight[dim 0]": 4}
    skipped = dict(graph.skipped)
    assert "literally" in skipped["f2.weight[dim 0]"] and "untracked" in skipped["c.weight[dim 0]"]


def test_padding_keeps_channel_labels():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ZeroPad2d((1, 1, 1, 1)), nn.ReLU(), nn.Conv2d(6, 2, 3))
    graph, small = assert_shrink_equals_zeroed(m, torch.randn(2, 3, 6, 6))
    assert _sizes(graph) == {"0.weight[dim 0]": 6} and small[3].in_channels == 3


# ----------------------------------------------------------------- invariants (hypothesis)
@settings(max_examples=15, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=1, max_size=3), seed=st.integers(0, 10_000),
       frac=st.floats(0, 1))
def test_random_removals_shrink_equals_zeroed(widths, seed, frac):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    prev = 3
    for w in widths:
        layers += [nn.Linear(prev, w), nn.Tanh()]
        prev = w
    m = nn.Sequential(*layers, nn.Linear(prev, 2))
    x = torch.randn(3, 3)
    graph = trace_groups(m, x)
    g = torch.Generator().manual_seed(seed)
    removed = []
    for c in graph.clusters:
        perm = torch.randperm(len(c.groups), generator=g).tolist()
        k = min(int(frac * len(c.groups)), len(c.groups) - 1)
        removed += [c.groups[i] for i in perm[:k]]
    assert_shrink_equals_zeroed(m, x, removed)


def test_all_ones_selection_changes_nothing():
    torch.manual_seed(0)
    m = ResidualCat()
    _randomize_norms(m)
    x = torch.randn(2, 3, 6, 6)
    result = prune_structured(m, x, 0.0)
    small, report = result.model, result.report
    assert [p.shape for p in small.parameters()] == [p.shape for p in m.parameters()]
    torch.testing.assert_close(small.eval()(x), m.eval()(x), atol=0, rtol=0)
    assert report.params_after == report.params_before and all(r.achieved == 0 for r in report.rows)


# -------------------------------------------------------------- importance and selection
def test_importance_by_hand():
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]]))
        m[0].bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        m[2].weight.copy_(torch.tensor([[2.0, -1.0, 0.5]]))
    graph = trace_groups(m, torch.randn(1, 2))
    assert len(graph.groups) == 3
    # group j = row j of layer 0, bias j, column j of layer 2
    l1 = group_importance(graph, "l1")
    torch.testing.assert_close(l1, torch.tensor([1 + 2 + 0 + 2, 0.5 + 0 + 1 + 1, 3 + 1 + 1 + 0.5], dtype=torch.float64))
    l2 = group_importance(graph, "l2")
    torch.testing.assert_close(l2, torch.tensor([math.sqrt(1 + 4 + 4), math.sqrt(0.25 + 1 + 1), math.sqrt(9 + 1 + 1 + 0.25)],
                                                dtype=torch.float64))
    # Taylor: (sum w * g)^2 with g = 1 everywhere
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    taylor = group_importance(graph, "taylor")
    torch.testing.assert_close(taylor, torch.tensor([(1 - 2 + 0 + 2) ** 2, (0.5 + 1 - 1) ** 2, (3 + 1 - 1 + 0.5) ** 2],
                                                    dtype=torch.float64))
    # selection: sparsity 1/3 on 3 groups removes the least important one (group 1 under l2)
    removed, rows, _ = select_groups(graph, l2, 1 / 3)
    assert removed == [1] and rows[0].channels_after == 2
    r1 = group_importance(graph, "random", seed=3)
    assert torch.equal(r1, group_importance(graph, "random", seed=3))


def test_taylor_needs_gradients():
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    with pytest.raises(ConfigError, match="backward"):
        StructuredPruner(m, torch.randn(1, 2), sparsity=0.5, importance="taylor").select()


def test_round_to_min_channels_and_global_scope():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 2))
    x = torch.randn(2, 4)
    p = StructuredPruner(m, x, sparsity=0.3, round_to=4)
    p.select()
    after = {r.layer: r.channels_after for r in p.rows}
    assert after == {"0.weight[dim 0]": 12, "2.weight[dim 0]": 8}  # 11.2 -> 12 (11 kept -> 12), 7 -> 8
    p = StructuredPruner(m, x, sparsity=0.5, min_channels=9)
    p.select()
    assert {r.layer: r.channels_after for r in p.rows} == {"0.weight[dim 0]": 9, "2.weight[dim 0]": 9}
    assert any("clamped" in n for n in p.notes)
    # global: the least important 13 of the 26 groups go, whichever layer they are in
    with torch.no_grad():
        m[2].weight.mul_(100)  # layer 2's raw scores are large; normalised per cluster they still compete
    p = StructuredPruner(m, x, sparsity=0.5, scope="global")
    removed = p.select()
    assert len(removed) == 13
    # exactly the 13 lowest importances after dividing by each cluster's mean
    norm = p.scores.clone()
    for c in p.graph.clusters:
        norm[c.groups] = norm[c.groups] / norm[c.groups].mean()
    assert removed == sorted(norm.argsort()[:13].tolist())


def test_ignored_layer_keeps_both_dimensions():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    small = prune_structured(m, torch.randn(2, 4), 0.5, ignore=["4"]).model
    assert small[4].in_features == 5 and small[4].out_features == 2
    assert small[0].out_features == 3
    with pytest.raises(ConfigError, match="no module named"):
        trace_groups(m, torch.randn(2, 4), ignore=["classifier"])


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("s", [1.0, -0.1, 1.5, "0.5"])
def test_bad_sparsity(s):
    with pytest.raises(ConfigError, match="sparsity"):
        StructuredPruner(nn.Linear(2, 2), torch.randn(1, 2), sparsity=s)


def test_ratio_that_would_empty_a_layer_is_clamped_or_strict_error():
    m = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    x = torch.randn(1, 3)
    result = prune_structured(m, x, 0.9)  # round(1.8) = 2 of 2 channels
    small, report = result.model, result.report
    assert small[0].out_features == 1
    assert "clamped" in report.rows[0].note and any("clamped" in n for n in report.notes)
    with pytest.raises(LayerError, match="strict"):
        prune_structured(m, x, 0.9, strict=True)


def test_example_inputs_that_do_not_run_the_model():
    with pytest.raises(ConfigError, match="example_inputs do not run the model"):
        trace_groups(nn.Linear(3, 2), torch.randn(2, 5))


def test_head_counts_that_cannot_be_split():
    with pytest.raises(ConfigError, match=r"nearest valid sparsities are 0\.25 \(1 heads\) and 0\.5 \(2 heads\)"):
        StructuredPruner(MHABlock(), torch.randn(2, 3, 5), sparsity=0.3).select()


def test_bad_options():
    m, x = nn.Linear(2, 2), torch.randn(1, 2)
    with pytest.raises(ConfigError, match="importance"):
        StructuredPruner(m, x, sparsity=0.5, importance="l3")
    with pytest.raises(ConfigError, match="scope"):
        StructuredPruner(m, x, sparsity=0.5, scope="model")
    with pytest.raises(ConfigError, match="round_to"):
        StructuredPruner(m, x, sparsity=0.5, round_to=0)


# ------------------------------------------------------------------------ save and load
def test_reload_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    m = ResidualCat()
    _randomize_norms(m)
    x = torch.randn(2, 3, 6, 6)
    pruner = StructuredPruner(m, x, sparsity=0.5)
    small = pruner.prune().model
    save_structured(small, pruner.kept, tmp_path / "out")
    # one thread on both sides: with several, a convolution may split its reduction differently
    # in another process (last-bit differences), which says nothing about the saved weights
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        y = small.eval()(x).detach()
    finally:
        torch.set_num_threads(threads)
    torch.save({"x": x, "y": y}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {SRC!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_structured import ResidualCat
        from sparseforge.structured import load_structured
        m = load_structured({str(tmp_path / 'out')!r}, ResidualCat).eval()
        io = torch.load({str(tmp_path / 'io.pt')!r})
        assert torch.equal(m(io["x"]), io["y"]), (m(io["x"]) - io["y"]).abs().max()
        print("ok", m.c1.out_channels)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ok", "4"]


def test_reload_tied_and_errors(tmp_path):
    torch.manual_seed(0)
    m = Tied()
    ids = torch.randint(0, 11, (2, 5))
    pruner = StructuredPruner(m, ids, sparsity=0.5)
    small = pruner.prune().model
    save_structured(small, pruner.kept, tmp_path)
    back = load_structured(tmp_path, Tied).eval()
    assert back.head.weight is back.emb.weight
    torch.testing.assert_close(back(ids), small.eval()(ids), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="does not have"):
        load_structured(tmp_path, lambda: nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="structure.json"):
        load_structured(tmp_path / "nothing", Tied)


def test_report_counts_params_and_macs():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    report = prune_structured(m, torch.randn(2, 2, 4, 4), 0.5).report
    # conv: 4 out x (2*3*3) weights x 2*2 positions; linear: 16 x 3
    assert report.macs_before == 4 * 18 * 4 + 16 * 3
    assert report.macs_after == 2 * 18 * 4 + 8 * 3
    assert report.params_before == 4 * 18 + 4 + 16 * 3 + 3 and report.params_after == 2 * 18 + 2 + 8 * 3 + 3
    assert "materialized" in report.table() and report.to_dict()["rows"][0]["achieved"] == 0.5


@pytest.mark.parametrize("model_cls, shape", [(ResidualCat, (2, 3, 6, 6)), (MHABlock, (2, 7, 5)), (GroupedConvs, (2, 3, 5, 5))])
def test_onnx_export_matches_onnxruntime(tmp_path, model_cls, shape):
    pytest.importorskip("onnxruntime")
    from sparseforge.structured.onnx import export_onnx

    torch.manual_seed(0)
    m = model_cls()
    _randomize_norms(m)
    x = torch.randn(*shape)
    small = prune_structured(m, x, 0.5).model
    diff = export_onnx(small, x, tmp_path / "m.onnx")
    assert diff <= 1e-4 and (tmp_path / "m.onnx").stat().st_size > 0


class _KeywordModel(nn.Module):
    """Like HF causal LMs: an optional parameter sits between the inputs the caller passes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x=None, logits_to_keep=0, scale=None, flip=False):
        y = self.lin(x) * scale
        return -y if flip else y


def test_onnx_export_keyword_inputs_become_exactly_the_graph_inputs(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from sparseforge.structured.onnx import export_onnx

    torch.manual_seed(0)
    x = {"x": torch.randn(2, 4), "scale": torch.randn(2, 3), "flip": True}
    assert export_onnx(_KeywordModel(), x, tmp_path / "m.onnx") <= 1e-4
    assert [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.input] == ["x", "scale"]


# --------------------------------------------------------------------------------- HESSO
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_hesso_reaches_exactly_the_target_and_shrinks_identically(opt):
    from sparseforge.structured import HESSO

    m = _mlp()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    inner = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) if opt == "sgd" else torch.optim.Adam(m.parameters(), lr=1e-2)
    h = HESSO(m, x[:2], inner, target_group_sparsity=0.5, start_pruning_step=3, pruning_steps=10, pruning_periods=2)
    assert h.target_num == 14 and h.per_period == [7, 7]  # int(28 * 0.5) groups over 2 periods
    zeros = []
    for _ in range(20):
        h.zero_grad()
        F.cross_entropy(m(x), y).backward()
        h.step()
        zeros.append(h.zero_groups_count())
    # warm-up 3 steps, period 1 = steps 4..8 (7 groups reach zero at step 8), period 2 = steps 9..13
    assert zeros[:7] == [0] * 7 and zeros[7] == 7 and zeros[11] == 7 and zeros[12:] == [14] * 8
    assert h.finished and len(h.pruned) == 14
    small = h.shrink()
    with torch.no_grad():
        torch.testing.assert_close(small(x), m(x), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())


def test_hesso_decays_linearly_within_a_period():
    from sparseforge.structured import HESSO

    m = _mlp()
    inner = torch.optim.SGD(m.parameters(), lr=0.0)  # no learning: only the projection moves weights
    h = HESSO(m, torch.randn(2, 4), inner, target_group_sparsity=0.25, pruning_steps=4)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    n0 = h._group_stats()["ww"].sqrt()
    norms = []
    for _ in range(4):
        h.step()
        g = (h.active or h.pruned)[0]
        norms.append(float(h._group_stats()["ww"].sqrt()[g] / n0[g]))
    assert norms == pytest.approx([0.75, 0.5, 0.25, 0.0])


def test_hesso_bad_input():
    from sparseforge.structured import HESSO

    m = _mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="target_group_sparsity"):
        HESSO(m, torch.randn(2, 4), opt, target_group_sparsity=1.0, pruning_steps=4)
    with pytest.raises(ConfigError, match="at most 26"):
        HESSO(m, torch.randn(2, 4), opt, target_group_sparsity=0.99, pruning_steps=4)
    with pytest.raises(ConfigError, match="pruning_steps"):
        HESSO(m, torch.randn(2, 4), opt, target_group_sparsity=0.5, pruning_steps=1, pruning_periods=2)
    with pytest.raises(ConfigError, match="criteria"):
        HESSO(m, torch.randn(2, 4), opt, target_group_sparsity=0.5, pruning_steps=4, criteria={"hessian": 1.0})


# ------------------------------------------------------------- proximal group sparsity
@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 7), weighted=st.booleans(), data=st.data())
def test_sef_prox_matches_a_generic_convex_solver(n, weighted, data):
    scipy_opt = pytest.importorskip("scipy.optimize")
    from sparseforge.structured import sef, sef_prox

    k = data.draw(st.integers(1, n))
    t = data.draw(st.floats(0.01, 2.0))
    # zero or a norm of a sensible size (a subnormal group norm underflows to an exact zero)
    u = torch.tensor(data.draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 3.0)), min_size=n, max_size=n)),
                     dtype=torch.float64)
    d = torch.tensor(data.draw(st.lists(st.floats(0.2, 5.0), min_size=n, max_size=n)), dtype=torch.float64) if weighted else None
    v = sef_prox(u, k, t, d)

    def objective(x):
        x = torch.as_tensor(x, dtype=torch.float64)
        return t * sef(x, k, d) + 0.5 * float((x - u).pow(2).sum())

    start = u / (1 + t * (1 if d is None else d))
    best = min((scipy_opt.minimize(objective, x0, method="Powell", options=dict(xtol=1e-12, ftol=1e-15, maxiter=100_000))
                for x0 in (start.numpy(), u.numpy())), key=lambda r: r.fun)
    ours = objective(v.numpy())
    assert ours <= best.fun + 1e-9  # our prox is at least as good as the solver's point
    # the objective is 1-strongly convex (a convex envelope plus 1/2 ||x - u||^2), so a point whose
    # objective exceeds the minimum by g lies within sqrt(2 g) of the minimizer: where Powell stops
    # early (9e-4 away, found by hypothesis), the distance must still fit its objective gap
    gap = max(best.fun - ours, 0.0)
    assert float((torch.as_tensor(best.x) - v).norm()) <= math.sqrt(2 * gap) + 1e-6
    assert int((v > 0).sum()) >= min(k, int((u > 0).sum()))  # at least k groups stay free


def test_sef_by_hand():
    from sparseforge.structured import sef, sef_prox

    # k >= n: plain 1/2 ||u||^2; k = 1: 1/2 ||u||_1^2 (the 1-support norm is the l1 norm)
    u = torch.tensor([3.0, 1.0, 2.0])
    assert sef(u, 3) == pytest.approx(0.5 * 14)
    assert sef(u, 1) == pytest.approx(0.5 * 36)
    # k = 2 on (3, 2, 1): r = 0 needs 3 > 2 + 1 (false); r = 1: inf > 3 >= 3 -> 1/4 (3+2+1)^2
    assert sef(u, 2) == pytest.approx(9.0)
    torch.testing.assert_close(sef_prox(u, 3, 1.0), u.double() / 2)
    v = sef_prox(torch.tensor([5.0, 0.1, 0.05]), 1, 1.0)
    assert v[0] > 0 and v[1] == 0 and v[2] == 0  # small groups go to exactly zero


def test_weighted_sef_by_hand():
    from sparseforge.structured import sef, sef_prox

    # weights d scale the group norms by sqrt(d): (3, 1, 2) with d = (1, 9, 4) is (3, 3, 4) unweighted
    u, d = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 9.0, 4.0])
    assert sef(u, 3, d) == pytest.approx(0.5 * (9 + 9 + 16))
    assert sef(u, 1, d) == pytest.approx(0.5 * 10 ** 2)
    # k >= number of groups: every theta is 1 and v = u / (1 + t d)
    torch.testing.assert_close(sef_prox(u, 3, 0.5, d), u.double() / (1 + 0.5 * d.double()))
    # k = 1, t = 1: with equal norms the lighter group is the one that stays
    v = sef_prox(torch.tensor([1.0, 1.0]), 1, 1.0, torch.tensor([1.0, 4.0]))
    assert v[0] > 0 and v[1] == 0
    with pytest.raises(ConfigError, match="weights"):
        sef(u, 1, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ConfigError, match="one entry per group"):
        sef_prox(u, 1, 1.0, torch.tensor([1.0, 1.0]))


def test_group_lasso_prox_by_hand():
    from sparseforge.structured import group_lasso_prox

    out = group_lasso_prox(torch.tensor([3.0, 0.5, 2.0]), 1.0, torch.tensor([1.0, 1.0, 4.0]))
    torch.testing.assert_close(out, torch.tensor([2.0, 0.0, 0.0]))


@pytest.mark.parametrize("penalty, lam, weights", [("sef", 0.5, None), ("sef", 0.5, "size"), ("group_lasso", 0.07, None)])
def test_group_prox_training_reaches_exact_target_and_shrinks(penalty, lam, weights):
    from sparseforge.structured import GroupProx

    m = _mlp()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    gp = GroupProx(m, x[:2], torch.optim.SGD(m.parameters(), lr=0.1), lam=lam, target_group_sparsity=0.5, penalty=penalty,
                   weights=weights)
    for _ in range(15):
        gp.zero_grad()
        F.cross_entropy(m(x), y).backward()
        gp.step()
    assert 0 < gp.zero_groups_count() <= 14  # the prox itself produces exact zeros
    zeroed = gp.finalize()
    assert len(zeroed) == 14 and gp.zero_groups_count() == 14
    small = gp.shrink()
    with torch.no_grad():
        torch.testing.assert_close(small(x), m(x), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="lam"):
        GroupProx(m, x[:2], torch.optim.SGD(m.parameters(), lr=0.1), lam=0, target_group_sparsity=0.5)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="penalty='sef' only"):
        GroupProx(m, x[:2], opt, lam=0.1, target_group_sparsity=0.5, penalty="group_lasso", weights="size")
    with pytest.raises(ConfigError, match="'size'"):
        GroupProx(m, x[:2], opt, lam=0.1, target_group_sparsity=0.5, weights="elements")
    with pytest.raises(ConfigError, match="one entry per group"):
        GroupProx(m, x[:2], opt, lam=0.1, target_group_sparsity=0.5, weights=[1.0, 2.0])


# ------------------------------------------------------------------ Hugging Face models
transformers = pytest.importorskip("transformers")


def _hf_cases():
    T = transformers
    ids = {"input_ids": torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))}
    img = {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))}
    small = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4)
    return {
        "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16)), ids),
        "llama-gqa": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**small, num_key_value_heads=2, vocab_size=50,
                                                                 max_position_embeddings=16)), ids),
        "bert": (lambda: T.BertForSequenceClassification(T.BertConfig(**small, vocab_size=50, max_position_embeddings=16)), ids),
        "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(**small, image_size=16, patch_size=4, num_labels=3)), img),
        "resnet": (lambda: T.ResNetForImageClassification(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                                          num_labels=3, layer_type="bottleneck")), img),
        "convnext": (lambda: T.ConvNextForImageClassification(T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1],
                                                                               num_stages=2, num_labels=3)), img),
    }


@pytest.mark.parametrize("name", list(_hf_cases()))
def test_hf_from_config_smoke(name, tmp_path):
    factory, x = _hf_cases()[name]
    torch.manual_seed(0)
    m = factory().eval()
    pruner = StructuredPruner(m, x, sparsity=0.5)
    result = pruner.prune()
    small, report = result.model, result.report
    a, b, ref = _call(small.eval(), x), _call(pruner.zeroed(), x), _call(m, x)
    assert a.shape == ref.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    assert not report.unknown  # every layer of these models has a rule
    if name in ("bert", "vit", "gpt2", "llama-gqa"):
        pytest.importorskip("onnxruntime")
        from sparseforge.structured.onnx import export_onnx

        if "input_ids" in x and name != "bert":
            # without a mask a decoder scans position ids with torch.diff, which ONNX lacks: a clear hint
            with pytest.raises(ConfigError, match="attention_mask"):
                export_onnx(small, dict(x, use_cache=False), tmp_path / "bad.onnx")
            x = dict(x, attention_mask=torch.ones_like(x["input_ids"]), use_cache=False)
        assert export_onnx(small, x, tmp_path / "m.onnx") <= 1e-4
    if name not in ("resnet", "convnext"):  # attention heads are found in every transformer (GPT-2's fused c_attn too)
        assert sum(c.heads for c in pruner.graph.clusters) == 2


def test_hf_gqa_heads_kept_whole():
    factory, x = _hf_cases()["llama-gqa"]
    torch.manual_seed(0)
    m = factory().eval()
    graph = trace_groups(m, x)
    heads = [c for c in graph.clusters if c.heads]
    assert len(heads) == 2 and all(len(c.groups) == 2 for c in heads)  # 2 key/value groups per layer
    g = graph.groups[heads[0].groups[1]]
    rows = {sp.key.rsplit(".", 2)[-2]: ix for sp, ix in g.slots if sp.dim == 0}
    assert rows["q_proj"] == tuple(range(16, 32)) and rows["k_proj"] == tuple(range(8, 16))  # 2 q heads + 1 kv head
    small = StructuredPruner(m, x, sparsity=0.5).prune().model
    attn = small.model.layers[0].self_attn
    assert attn.q_proj.out_features == 16 and attn.k_proj.out_features == 8 and attn.num_key_value_groups == 2
    with pytest.raises(ConfigError, match="nearest valid sparsities are 0 .*0.5"):
        StructuredPruner(m, x, sparsity=0.3).select()


def test_hf_attention_rule_skips_modules_with_their_own_tensors():
    from sparseforge.structured import is_hf_attention

    class Attn(nn.Module):
        def __init__(self, extra):
            super().__init__()
            self.head_dim = 4
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(8, 8) for _ in range(4))
            if extra:  # like Swin's relative position bias table, one column per head
                self.bias_table = nn.Parameter(torch.zeros(9, 2))

    Attn.__module__ = "transformers.models.fake.modeling_fake"
    assert is_hf_attention(Attn(False)) and not is_hf_attention(Attn(True))


def test_hf_save_pretrained_reload_in_a_fresh_process(tmp_path):
    from sparseforge.structured import update_hf_config

    factory, x = _hf_cases()["llama-gqa"]
    torch.manual_seed(0)
    m = factory().eval()
    small = StructuredPruner(m, x, sparsity=0.5).prune().model
    written = update_hf_config(small)
    assert written["num_attention_heads"] == 2 and written["num_key_value_heads"] == 1 and written["hidden_size"] == 16
    small.save_pretrained(tmp_path / "hf")
    torch.save({"x": x["input_ids"], "y": small.eval()(**x).logits}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch, transformers
        m = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'hf')!r}).eval()
        io = torch.load({str(tmp_path / 'io.pt')!r})
        assert torch.allclose(m(input_ids=io["x"]).logits, io["y"], atol=1e-6, rtol=0)
        print("ok", m.config.hidden_size)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["ok", "16"]
